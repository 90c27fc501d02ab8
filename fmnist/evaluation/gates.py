"""The regression gate: which metrics got worse by more than their tolerance in params.yaml (`report.gates`), in the
direction `report.directions` declares for each (never guessed from a name). Read by the PR report and by the
champion alias alike."""
from __future__ import annotations

from fmnist.params import Gate


def worsening(gate: Gate, diff: float) -> float:
    """How much worse a change of `diff` is for the gate's metric (negative: better)."""
    if gate.better is None:
        raise ValueError(f"gate on {gate.metric} has no direction: build gates through params' report section")
    return diff if gate.better == "lower" else -diff


def regressions(rows: list[dict], gates: list[Gate]) -> list[str]:
    """Each gated metric that got worse by more than its tolerance, as a sentence; `rows` hold path, metric,
    old, new and diff, as `dvc metrics diff` gives them."""
    found = []
    for gate in gates:
        for row in rows:
            if row["metric"] != gate.metric or not isinstance(row["diff"], (int, float)):
                continue
            worse_by = worsening(gate, row["diff"])
            if worse_by > gate.max_worsening:
                found.append(f"{row['path']}: {gate.metric} got worse by {worse_by:.6g} "
                             f"({row['old']} -> {row['new']}), more than the allowed {gate.max_worsening:g}")
    return found
