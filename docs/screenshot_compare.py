"""Screenshot MLflow's compare page for the latest run of each ensemble member, for the README.

    python docs/screenshot_compare.py [--out docs/mlflow-compare.png]

Starts `mlflow server` on 127.0.0.1 against this project's store and drives headless Chromium (Debian packages
`chromium`, `chromium-driver`); nothing is left running afterwards.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script run from the checkout, like bench/bench.py
from stages import mlflow_server


def latest_member_runs(client: mlflow.MlflowClient, experiment_id: str) -> list[str]:
    latest: dict[str, str] = {}
    for run in client.search_runs([experiment_id], "tags.stage LIKE 'train@%' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=500):
        latest.setdefault(run.data.tags["stage"], run.info.run_id)
    return [latest[stage] for stage in sorted(latest)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--experiment", default="fashion-mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-compare.png")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium chromium-driver")
    client = mlflow.MlflowClient(args.store)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.store}: run `dvc repro` first")
    runs = latest_member_runs(client, experiment.experiment_id)
    if len(runs) < 2:
        sys.exit(f"need at least two finished train@<member> runs in {args.store}, found {len(runs)}")
    with mlflow_server.local_server(args.store) as base:
        query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment.experiment_id])})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,1100", "--virtual-time-budget=30000",
                        f"--screenshot={args.out}", f"{base}/#/compare-runs?{query}"],
                       check=True, capture_output=True, timeout=180)
    print(f"{args.out} ({args.out.stat().st_size:,} bytes): compare page of {len(runs)} member runs")


if __name__ == "__main__":
    main()
