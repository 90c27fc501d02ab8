"""The regression gate: which metrics got worse by more than their tolerance in params.yaml (`report.gates`).
Read by the PR report and by the champion alias alike."""
from __future__ import annotations

from fmnist.params import Gate

# Metrics where smaller is better; every other metric is taken as larger-is-better.
LOWER_IS_BETTER = ("loss", "ece", "seconds", "imbalance")


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def regressions(rows: list[dict], gates: list[Gate]) -> list[str]:
    """Each gated metric that got worse by more than its tolerance, as a sentence; `rows` hold path, metric,
    old, new and diff, as `dvc metrics diff` gives them."""
    found = []
    for gate in gates:
        for row in rows:
            if row["metric"] != gate.metric or not isinstance(row["diff"], (int, float)):
                continue
            worse_by = row["diff"] if lower_is_better(gate.metric) else -row["diff"]
            if worse_by > gate.max_worsening:
                found.append(f"{row['path']}: {gate.metric} got worse by {worse_by:.6g} "
                             f"({row['old']} -> {row['new']}), more than the allowed {gate.max_worsening:g}")
    return found
