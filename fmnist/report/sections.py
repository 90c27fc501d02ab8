"""What the report says, in the order a reviewer reads it: the gate's verdict in one line, the headline metrics,
the changed params, then everything else collapsed (members, per-class scores, baselines, other metrics, timings,
pictures). Which way is better comes from params' report.directions, never from a metric's name."""
from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from fmnist.params import Gate, Report
from fmnist.report.document import Bullets, Details, Document, Figure, Picture, Table, Text

# Shown as percentages, their changes in points: fractions of one by construction.
PERCENT = ("*accuracy*", "*ece*", "*f1*", "*gain*")
SPREAD = "members_accuracy_std"  # shown beside the members' mean, not as a row of its own


def is_percent(metric: str) -> bool:
    return any(fnmatchcase(metric, pattern) for pattern in PERCENT) and not metric.endswith("_std")


def value(metric: str, number) -> str:
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return "—" if number is None else str(number)
    if is_percent(metric):
        return f"{100 * number:.2f}%"
    return f"{number:,}" if isinstance(number, int) else f"{number:.4g}"


def change(metric: str, row: dict) -> str:
    diff = row.get("diff")
    if not isinstance(diff, (int, float)) or diff == 0:
        return "" if row.get("old") == row.get("new") else "changed"
    if is_percent(metric):
        return f"{100 * diff:+.2f} pts"
    return f"{diff:+,}" if isinstance(diff, int) else f"{diff:+.4g}"


def verdict(better: str | None, row: dict) -> str:
    """▲/▼ and better/worse where a direction is declared; nothing where none is (a temperature, a count)."""
    diff = row.get("diff")
    if better is None or not isinstance(diff, (int, float)) or diff == 0:
        return ""
    good = (diff > 0) == (better == "higher")
    return f"{'▲' if diff > 0 else '▼'} {'better' if good else 'worse'}"


def timing_verdict(better: str | None, row: dict, tolerance: float) -> str:
    old, new = row.get("old"), row.get("new")
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or old == 0:
        return ""
    relative = (new - old) / abs(old)
    if abs(relative) <= tolerance:
        return f"within ±{tolerance:.0%}"
    good = better is not None and (relative > 0) == (better == "higher")
    return f"⚠️ {relative:+.0%}, {'better' if good else 'worse'}" if better else f"⚠️ {relative:+.0%}"


def by_metric(rows: list[dict]) -> dict[str, dict]:
    """The first row of each metric name (metrics/evaluate.json's come first where a name repeats)."""
    found: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["path"] != "metrics/evaluate.json", r["path"])):
        found.setdefault(row["metric"], row)
    return found


def headline(rows: list[dict], report: Report, gates: list[Gate], labels: tuple[str, str]) -> Table:
    named = by_metric(rows)
    tolerance = {gate.metric: gate.max_worsening for gate in gates}
    table = []
    for metric in report.headline:
        row = named.get(metric)
        if row is None:
            continue
        old, new = value(metric, row["old"]), value(metric, row["new"])
        label = f"`{metric}`"
        if metric == "members_accuracy_mean" and SPREAD in named:  # mean +/- std, as published results read
            spread = named[SPREAD]
            old += f" ± {value(metric, spread['old'])[:-1]}" if spread["old"] is not None else ""
            new += f" ± {value(metric, spread['new'])[:-1]}" if spread["new"] is not None else ""
            label += " ± std"
        allowed = tolerance.get(metric)
        gate = "" if allowed is None else (f"{100 * allowed:.2f} pts" if is_percent(metric) else f"{allowed:g}")
        table.append([label, old, new, change(metric, row), gate, verdict(report.direction(metric), row)])
    return Table(["metric", labels[0], labels[1], "change", "gate tolerance", ""], table, right={1, 2, 3, 4})


def gate_line(rows: list[dict], gates: list[Gate], failed: list[str], gates_from: str) -> str:
    if failed:
        return f"**❌ Gate failed** (tolerances from {gates_from}): " + "; ".join(failed)
    named = by_metric(rows)
    moved = [f"`{g.metric}` {change(g.metric, named[g.metric])}" for g in gates
             if g.metric in named and change(g.metric, named[g.metric])]
    return (f"**✅ Gate passed** (tolerances from {gates_from}): "
            + (", ".join(moved) if moved else "no gated metric changed"))


def param_lines(params_diff: dict) -> list[str]:
    return [f"`{name}`: {_param(v.get('old'))} → {_param(v.get('new'))}"
            for _, params in sorted(params_diff.items()) for name, v in sorted(params.items())]


def _param(value) -> str:
    text = "(none)" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."  # a whole list or section: its change is in the diff


# The collapsed sections, in order: (summary, which rows); a row goes to the first section that takes it.
SECTIONS: list[tuple[str, Callable[[dict], bool]]] = [
    ("Members", lambda r: r["path"].startswith(("metrics/train/", "metrics/ensemble.json"))
     or r["metric"].startswith(("member_", "members_", "best_member"))),
    ("Per-class scores", lambda r: r["metric"].startswith("per_class")),
    ("Baselines (scikit-learn, the official benchmark's configurations)", lambda r: r["path"].startswith(
        "metrics/baselines")),
    ("Other metrics", lambda r: True),
]


def metric_table(rows: list[dict], report: Report) -> Table:
    return Table(["metric", "file", "base", "head", "change", ""],
                 [[f"`{r['metric']}`", r["path"], value(r["metric"], r["old"]), value(r["metric"], r["new"]),
                   change(r["metric"], r), verdict(report.direction(r["metric"]), r)] for r in rows],
                 right={2, 3, 4})


def collapsed(rows: list[dict], report: Report) -> list[Details]:
    changed = [r for r in rows if r["old"] != r["new"] and r["metric"] not in report.headline
               and r["metric"] != SPREAD]
    timings = [r for r in changed if report.timing(r["metric"]) is not False]
    rest = [r for r in changed if report.timing(r["metric"]) is False]
    blocks = []
    for summary, takes in SECTIONS:
        mine = [r for r in rest if takes(r)]
        rest = [r for r in rest if not takes(r)]
        if mine:
            blocks.append(Details(f"{summary}: {len(mine)} changed", [metric_table(mine, report)]))
    if timings:
        tolerance = report.timings.tolerance
        flagged = sum(timing_verdict(report.timing(r["metric"]), r, tolerance).startswith("⚠️") for r in timings)
        table = Table(["timing", "file", "base", "head", "change", ""],
                      [[f"`{r['metric']}`", r["path"], value(r["metric"], r["old"]), value(r["metric"], r["new"]),
                        change(r["metric"], r), timing_verdict(report.timing(r["metric"]), r, tolerance)]
                       for r in timings], right={2, 3, 4})
        blocks.append(Details(f"Timings and throughput (host-dependent): {flagged} of {len(timings)} changed by more "
                              f"than ±{tolerance:.0%}", [table]))
    return blocks


def document(title: str, labels: tuple[str, str], rows: list[dict], params_diff: dict, report: Report,
             gates: list[Gate], failed: list[str], gates_from: str, pictures: list[Picture | Figure],
             links: list[str], pictures_elsewhere: str | None = None, pictures_open: bool = False) -> Document:
    """The whole report; with `pictures_elsewhere`, its pictures section says where they are instead of showing
    them (a comment where no URL can serve them); `pictures_open` unfolds them (the HTML page, which has room)."""
    changed = [r for r in rows if r["old"] != r["new"]]
    blocks: list = []
    if changed:
        blocks.append(Text(gate_line(rows, gates, failed, gates_from)))
    elif params_diff:
        blocks.append(Text("⚠️ **No metric changed although params did**: rerun the pipeline and commit `dvc.lock` "
                           "and `metrics/` so the numbers show what the change does."))
    else:
        blocks.append(Text("No metric changed."))
    table = headline(rows, report, gates, labels)
    if table.rows:
        blocks.append(table)
    params = param_lines(params_diff)
    blocks.append(Text(f"**Params**: {len(params)} changed" if params else "**Params**: none changed"))
    if params:
        blocks.append(Bullets(params))
    blocks += [Text(link) for link in links]
    blocks += collapsed(rows, report)
    if pictures:
        shown = [Text(pictures_elsewhere)] if pictures_elsewhere else pictures
        blocks.append(Details(f"Pictures: {len(pictures)} changed", shown, open=pictures_open))
    return Document(title, blocks, labels)
