"""The pull-request report: what a change did to the metrics and params, with the regression gate.

Markdown from DVC's own `dvc metrics diff --json` and `dvc params diff --json`; with --fail-on-regression, a gate
that exits 1 when a metric got worse by more than its tolerance in params.yaml (`report.gates`) as the base
revision has it: a change cannot loosen its own gate.

    fmnist report                          # merge base with main vs the workspace
    fmnist report --base HEAD~1 --out report.md --fail-on-regression
    fmnist report --base main --head my-branch   # two revisions, workspace untouched
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from fmnist.errors import StageError
from fmnist.evaluation.gates import lower_is_better, regressions
from fmnist.params import Gate, ParamsError, Report, load_params


def dvc_json(*args: str) -> dict:
    """Run a `dvc ... --json` command and decode its output; a failure names the command."""
    done = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise StageError(f"`dvc {' '.join(args)} --json` failed: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout or "{}")


def describe(revision: str) -> str:
    """`main` (1a2b3c4d5e6f): the name as given and the commit it was, so a report stays meaningful later."""
    done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{revision}^{{commit}}"], capture_output=True,
                          text=True)
    sha = done.stdout.strip()[:12]
    if not sha:
        return f"`{revision}`"
    return f"`{sha}`" if revision.startswith(sha) else f"`{revision}` ({sha})"


def merge_base(branch: str = "main") -> str:
    done = subprocess.run(["git", "merge-base", "HEAD", branch], capture_output=True, text=True)
    if done.returncode:
        raise StageError(f"no merge base of HEAD and {branch!r}: {done.stderr.strip()}; pass --base REV")
    return done.stdout.strip()


def metric_rows(metrics_diff: dict) -> list[dict]:
    """Flatten `dvc metrics diff --json` into rows; numbers only, as DVC compares them."""
    rows = []
    for path, metrics in sorted(metrics_diff.items()):
        for name, values in sorted(metrics.items()):
            old, new = values.get("old"), values.get("new")
            if isinstance(old, (int, float)) or isinstance(new, (int, float)):
                rows.append({"path": path, "metric": name, "old": old, "new": new, "diff": values.get("diff")})
    return rows


def arrow(row: dict) -> str:
    """Direction and verdict of a change: up/down, and whether that is better or worse for this metric."""
    diff = row["diff"]
    if not isinstance(diff, (int, float)) or diff == 0:
        return ""
    better = (diff < 0) == lower_is_better(row["metric"])
    return f"{'▲' if diff > 0 else '▼'} {'better' if better else 'worse'}"


def fmt(value) -> str:
    return "—" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def markdown(base: str, rows: list[dict], params_diff: dict, plots: list[str], failed: list[str],
             head: str | None = None, gates_from: str = "the workspace") -> str:
    """The report: metrics table, params diff, changed plots, gate verdict."""
    lines = [f"## Pipeline report: {describe(base)} → {describe(head) if head else 'workspace'}", ""]
    if rows:
        lines += ["| file | metric | old | new | change | |", "| --- | --- | ---: | ---: | ---: | --- |"]
        lines += [f"| {r['path']} | {r['metric']} | {fmt(r['old'])} | {fmt(r['new'])} | {fmt(r['diff'])} | {arrow(r)} |"
                  for r in rows]
    elif params_diff:
        lines.append("⚠️ No metric changed although params did: rerun the pipeline and commit `dvc.lock` and "
                     "`metrics/` so the numbers show what the change does.")
    else:
        lines.append("No metric changed.")
    lines += ["", "### Params", ""]
    changed = [(path, name, v.get("old"), v.get("new")) for path, params in sorted(params_diff.items())
               for name, v in sorted(params.items())]
    if changed:
        lines += ["| file | param | old | new |", "| --- | --- | --- | --- |"]
        lines += [f"| {path} | {name} | {fmt(old)} | {fmt(new)} |" for path, name, old, new in changed]
    else:
        lines.append("No param changed.")
    if plots:
        lines += ["", "### Changed plots", "", *[f"- `{path}`" for path in plots]]
    lines += ["", "### Regression gate", "", f"Tolerances of `report.gates` from {gates_from}.", ""]
    lines += [f"- ❌ {line}" for line in failed] if failed else ["✅ no gated metric regressed beyond its tolerance"]
    return "\n".join(lines) + "\n"


def changed_plots(base: str, head: str | None = None) -> list[str]:
    """Plot files (images and plot data) that differ between `base` and `head` (default: the workspace)."""
    done = subprocess.run(["git", "diff", "--name-only", base, *([head] if head else []), "--", "plots",
                           "metrics/evaluate", "metrics/history", "metrics/baselines.csv"],
                          capture_output=True, text=True)
    return done.stdout.split()


def gates_at(revision: str) -> tuple[list[Gate], str]:
    """report.gates of params.yaml as `revision` has it, and where they came from; the workspace's only where that
    revision has none (a project adopting the gate)."""
    done = subprocess.run(["git", "show", f"{revision}:params.yaml"], capture_output=True, text=True, check=False)
    section = (yaml.safe_load(done.stdout) or {}).get("report") if done.returncode == 0 else None
    if section is None:
        return load_params().report.gates, f"the workspace ({revision} has no report.gates)"
    try:
        return Report.model_validate(section).gates, describe(revision)
    except ValueError as exc:
        raise ParamsError(f"params.yaml at {revision}: report.gates: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="git revision to compare with (default: merge base with main)")
    parser.add_argument("--head", help="git revision to compare (default: the workspace)")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--fail-on-regression", action="store_true", help="exit 1 if a gated metric regressed")


def run(args: argparse.Namespace) -> None:
    base = args.base or merge_base()
    gates, gates_from = gates_at(base)
    revisions = [base, *([args.head] if args.head else [])]
    rows = metric_rows(dvc_json("metrics", "diff", *revisions))
    failed = regressions(rows, gates)
    text = markdown(base, rows, dvc_json("params", "diff", *revisions), changed_plots(base, args.head), failed,
                    args.head, gates_from)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if failed and args.fail_on_regression:
        raise StageError("regression gate failed:\n  " + "\n  ".join(failed))
