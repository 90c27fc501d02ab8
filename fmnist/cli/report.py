"""The pull-request report: what a change did to the metrics, params and pictures, headline first.

One verdict line (the regression gate), the headline metrics, the changed params, then everything else collapsed:
members, per-class scores, baselines, other metrics, timings (flagged only beyond a tolerance), and the changed
pictures side by side with both revisions' training curves on one chart. From DVC's own `dvc metrics diff` and
`dvc params diff`; which way is better, the headline and the gate's tolerances are params' `report` section as the
base revision has it, so a change can neither loosen its own gate nor turn a direction around.

    fmnist report                          # merge base with main vs the workspace
    fmnist report --base HEAD~1 --out report.md --html report.html --fail-on-regression
    fmnist report --base main --head my-branch   # two revisions, workspace untouched
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from fmnist.errors import StageError
from fmnist.evaluation.gates import regressions
from fmnist.params import ParamsError, Report, load_params
from fmnist.redaction import redact
from fmnist.report import pictures, sections
from fmnist.report.document import to_html, to_markdown
from fmnist.tracking.lineage import lock_text_outputs, outputs_digest


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


def short(revision: str) -> str:
    """The revision as a reader names it: the name given, or a commit's first 12 hex digits."""
    done = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{revision}^{{commit}}"], capture_output=True,
                          text=True)
    sha = done.stdout.strip()
    return sha[:12] if sha and sha.startswith(revision) else revision


def merge_base(branch: str = "main") -> str:
    done = subprocess.run(["git", "merge-base", "HEAD", branch], capture_output=True, text=True)
    if done.returncode:
        raise StageError(f"no merge base of HEAD and {branch!r}: {done.stderr.strip()}; pass --base REV")
    return done.stdout.strip()


def metric_rows(metrics_diff: dict) -> list[dict]:
    """Flatten `dvc metrics diff --all --json` into rows (every metric, changed or not); numbers only, as DVC
    compares them."""
    rows = []
    for path, metrics in sorted(metrics_diff.items()):
        for name, values in sorted(metrics.items()):
            old, new = values.get("old"), values.get("new")
            if isinstance(old, (int, float)) or isinstance(new, (int, float)):
                rows.append({"path": path, "metric": name, "old": old, "new": new, "diff": values.get("diff")})
    return rows


def report_at(revision: str) -> tuple[Report, str]:
    """params' report section as `revision` has it (its gates and their directions: a change can neither loosen
    its own gate nor turn a metric's direction around), and where it came from. Where the revision predates a part
    of it, that part comes from the workspace (a project adopting the gate, or declared directions)."""
    done = subprocess.run(["git", "show", f"{revision}:params.yaml"], capture_output=True, text=True, check=False)
    section = (yaml.safe_load(done.stdout) or {}).get("report") if done.returncode == 0 else None
    workspace = load_params().report
    if section is None:
        return workspace, f"the workspace ({revision} has no report.gates)"
    adopted = [key for key in ("headline", "directions", "timings") if key not in section]
    here = workspace.model_dump(exclude={"gates"})
    merged = {**{key: here[key] for key in adopted}, **section}
    merged["gates"] = [{k: v for k, v in gate.items() if k != "better"} for gate in merged.get("gates") or []]
    try:
        report = Report.model_validate(merged, strict=False)
    except ValueError as exc:
        raise ParamsError(f"params.yaml at {revision}: report: {exc}") from None
    source = describe(revision)
    return report, source + (f"; its {', '.join(adopted)} from the workspace" if adopted else "")


def compare_link(base: str, head: str | None) -> list[str]:
    """A link to MLflow's compare page of the two revisions' pipeline runs, where MLFLOW_TRACKING_URI is a server
    that has both (found by the digest of their dvc.lock outputs, the runs' `dvc_outs_digest` tag)."""
    import urllib.parse

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return []
    digests = []
    for revision in (base, head):
        lock = subprocess.run(["git", "show", f"{revision}:dvc.lock"], capture_output=True, text=True).stdout \
            if revision else Path("dvc.lock").read_text()
        digests.append(outputs_digest(lock_text_outputs(lock)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = []
        for value in digests:
            runs = client.search_runs(experiments, f"tags.dvc_outs_digest = '{value}' and tags.stage = 'pipeline'",
                                      max_results=1, order_by=["attributes.start_time DESC"])
            found.append(runs[0] if runs else None)
    except Exception as exc:  # a report without a link beats no report
        return [f"MLflow at {redact(uri)} could not be searched for the two pipeline runs ({type(exc).__name__})."]
    if None in found:
        missing = " and ".join(name for name, run in zip(("base", "head"), found, strict=True) if run is None)
        return [f"MLflow at {redact(uri)} has no pipeline run with the {missing} revision's outputs: no compare link."]
    runs = json.dumps([run.info.run_id for run in found])
    ids = json.dumps(sorted({run.info.experiment_id for run in found}))
    url = f"{redact(uri).rstrip('/')}/#/compare-runs?runs={urllib.parse.quote(runs)}&experiments=" \
          f"{urllib.parse.quote(ids)}"
    return [f"[Compare the two pipeline runs in MLflow]({url})"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="git revision to compare with (default: merge base with main)")
    parser.add_argument("--head", help="git revision to compare (default: the workspace)")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--html", type=Path, help="also write a standalone HTML page, pictures embedded")
    parser.add_argument("--assets", type=Path, help="folder for the pictures the Markdown shows (default: "
                        "report-assets/ beside --out, else in the current directory)")
    parser.add_argument("--assets-url", help="URL the Markdown uses for that folder, where it is published "
                        "(default: its path relative to --out)")
    parser.add_argument("--pictures-elsewhere", metavar="TEXT", help="the Markdown says TEXT where the pictures "
                        "would be (a comment where nothing serves them; --html still shows them)")
    parser.add_argument("--fail-on-regression", action="store_true", help="exit 1 if a gated metric regressed")


def run(args: argparse.Namespace) -> None:
    base = args.base or merge_base()
    report, gates_from = report_at(base)
    revisions = [base, *([args.head] if args.head else [])]
    rows = metric_rows(dvc_json("metrics", "diff", "--all", *revisions))
    failed = regressions(rows, report.gates)  # an unchanged metric (diff 0) is never worse
    assets = args.assets or ((args.out.parent if args.out else Path(".")) / "report-assets")
    labels = (short(base), short(args.head) if args.head else "workspace")
    shown = pictures.changed(base, args.head, assets, labels)
    title = f"Pipeline report: {describe(base)} → {describe(args.head) if args.head else 'workspace'}"
    content = (title, labels, rows, dvc_json("params", "diff", *revisions), report, report.gates, failed,
               gates_from, shown, compare_link(base, args.head))
    doc = sections.document(*content, pictures_elsewhere=args.pictures_elsewhere)
    anchor = (args.out.parent if args.out else Path(".")).resolve()

    def image_url(path: Path) -> str:
        relative = os.path.relpath(path.resolve(), assets.resolve() if args.assets_url else anchor)
        return f"{args.assets_url.rstrip('/')}/{relative}" if args.assets_url else relative

    text = to_markdown(doc, image_url)
    if args.out:
        write_text(args.out, text)
    else:
        sys.stdout.write(text)
    if args.html:
        write_text(args.html, to_html(sections.document(*content, pictures_open=True)))
    if failed and args.fail_on_regression:
        raise StageError("regression gate failed:\n  " + "\n  ".join(failed))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
