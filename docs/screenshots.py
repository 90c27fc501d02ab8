"""Screenshot the MLflow UI for the README: the experiment page (pipeline rows, accuracy columns) and the chart
view comparing two pipeline rows, with ensemble and member accuracy as the charted metrics.

    python -m docs.screenshots                                   # starts `mlflow server` on ./mlflow.db
    python -m docs.screenshots --server http://127.0.0.1:5000    # a running (team) server
    python -m docs.screenshots --store postgresql://...          # starts one on another store

Run from the checkout's root: a server it starts comes from the tests' helper (tests/mlflow_server.py).
Drives headless Chromium (Debian package `chromium`); a server it starts listens on 127.0.0.1 and is stopped
afterwards. The view (filter, columns, charts) is an MLflow "shared view": an experiment tag that the UI reads from
the page's `viewStateShareKey`, the same thing the UI's Share button writes.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow

from fmnist.tracking.store import EXPERIMENT_TAGS
from tests import mlflow_server

ROOT = Path(__file__).resolve().parents[1]

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # the prefix MLflow's UI reads shared views from
# What people compare: the ensemble against its members, and the calibration that temperature scaling buys.
CHARTED = ("evaluate/ensemble_accuracy", "evaluate/members_accuracy_mean", "evaluate/members_accuracy_std",
           "evaluate/ensemble_ece", "evaluate/ensemble_log_loss")
COLUMNS = ("tags.`dvc_exp_name`", "params.`train.net`", "params.`train.epochs`",
           *(f"metrics.`{key}`" for key in CHARTED[:3]))


def shared_view(client: mlflow.MlflowClient, experiment_id: str, state: dict) -> str:
    """Store a UI view state on the experiment and return its share key."""
    value = json.dumps(state, sort_keys=True)
    key = hashlib.sha256(value.encode()).hexdigest()[:16]
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, value)
    return key


def bar_charts(metrics: tuple[str, ...]) -> dict:
    section = "accuracy"
    charts = [{"uuid": f"chart-{i}", "type": "BAR", "runsCountToCompare": 10, "metricSectionId": section,
               "deleted": False, "isGenerated": False, "metricKey": key, "displayName": key}
              for i, key in enumerate(metrics)]
    return {"compareRunCharts": charts, "isAccordionReordered": True,
            "compareRunSections": [{"uuid": section, "name": "Ensemble vs members", "display": True,
                                    "isReordered": True, "deleted": False, "isGenerated": False}]}


def pipeline_rows(client: mlflow.MlflowClient, experiment_id: str) -> list[mlflow.entities.Run]:
    return client.search_runs([experiment_id], "tags.stage = 'pipeline' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[str]:
    if args.server:
        yield args.server.rstrip("/")
    else:
        with mlflow_server.local_server(args.store) as base:
            yield base


WINDOW = (2000, 1000)
ASSISTANT_PANEL = 0.258  # of the width: the UI's assistant side panel, open from a first visit on; cropped away


def screenshot(browser: str, profile: Path, url: str, out: Path) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    "--virtual-time-budget=30000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    with Image.open(out) as image:
        cropped = image.crop((0, 0, round(image.width * (1 - ASSISTANT_PANEL)), image.height))
    cropped.save(out, optimize=True)
    print(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({out.stat().st_size:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", help="a running MLflow server's URL")
    where.add_argument("--store", default=f"sqlite:///{ROOT / 'mlflow.db'}", help="a store to serve")
    parser.add_argument("--experiment", default="fashion-mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    with server_for(args) as base:
        client = mlflow.MlflowClient(base)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            sys.exit(f"no experiment {args.experiment!r} at {base}: run `dvc repro` against it first")
        rows = pipeline_rows(client, experiment.experiment_id)
        if len(rows) < 2:
            sys.exit(f"need two finished pipeline rows in {args.experiment!r} at {base}, found {len(rows)}")
        for key, value in EXPERIMENT_TAGS.items():  # a store made before the stages set it
            client.set_experiment_tag(experiment.experiment_id, key, value)
        page = f"{base}/#/experiments/{experiment.experiment_id}/runs"
        profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        # The UI opens its assistant panel on a browser's first visit only: make that visit the throwaway one.
        screenshot(browser, profile, page, profile / "first-visit.png")
        table = shared_view(client, experiment.experiment_id, {
            "searchFilter": "tags.stage = 'pipeline'", "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": list(COLUMNS), "columnOrder": list(COLUMNS),
            "columnWidths": {column: 110 if column.startswith("params.") else 215 for column in COLUMNS}})
        screenshot(browser, profile, f"{page}?{urllib.parse.urlencode({'viewStateShareKey': table})}",
                   args.out / "mlflow-team-experiment.png")
        two = [run.info.run_id for run in rows[:2]]
        charts = shared_view(client, experiment.experiment_id, {
            "searchFilter": "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in two) + ")",
            "orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": list(COLUMNS),
            **bar_charts(CHARTED)})
        query = urllib.parse.urlencode({"viewStateShareKey": charts, "compareRunsMode": "CHART"})
        screenshot(browser, profile, f"{page}?{query}", args.out / "mlflow-team-compare.png")
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
