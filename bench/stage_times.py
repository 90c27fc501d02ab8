"""Where a pipeline's time went, from its MLflow runs: each stage run's wall time, the training inside the
train@<member> runs (the sum of their epochs' seconds), and what is left outside training. Reads the newest
pipeline execution of the experiment unless --pipeline names a parent run.

    python bench/stage_times.py                     # the newest pipeline in MLFLOW_TRACKING_URI or mlflow.db
    python bench/stage_times.py --pipeline <run id>

The gaps between one stage's run and the next (DVC hashing and caching, interpreter start-up, torchrun's
rendezvous) belong to no run; they are shown as one line, from the first run's start to the last run's end.
"""
from __future__ import annotations

import argparse

import mlflow

from fmnist.tracking.run import experiment_name
from fmnist.tracking.store import tracking_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="the pipeline's parent run id (default: the newest)")
    args = parser.parse_args()
    client = mlflow.MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name())
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {experiment_name()!r} in {tracking_uri()}: run the pipeline first")
    ids = [experiment.experiment_id]
    parent = args.pipeline or client.search_runs(ids, "tags.stage = 'pipeline'", order_by=["start_time DESC"],
                                                 max_results=1)[0].info.run_id
    runs = [r for r in client.search_runs(ids, f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
            if r.info.end_time and r.data.tags.get("stage") != "pipeline"]
    runs.sort(key=lambda r: r.info.start_time)
    if not runs:
        raise SystemExit(f"pipeline {parent} has no finished stage runs")
    print(f"pipeline {parent}: {len(runs)} stage runs")
    print(f"{'stage':24} {'wall s':>8} {'training s':>11} {'outside training s':>19}")
    total_training = 0.0
    for run in runs:
        wall = (run.info.end_time - run.info.start_time) / 1000
        training = 0.0
        if run.data.tags.get("stage", "").startswith("train@"):
            history = client.get_metric_history(run.info.run_id, "seconds")
            training = sum(m.value for m in {m.step: m for m in history}.values())  # one value per epoch
        total_training += training
        print(f"{run.info.run_name:24} {wall:>8.1f} {training:>11.1f} {wall - training:>19.1f}")
    span = (max(r.info.end_time for r in runs) - runs[0].info.start_time) / 1000
    in_runs = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    print(f"{'between runs':24} {span - in_runs:>8.1f} {'':>11} {span - in_runs:>19.1f}")
    print(f"{'total':24} {span:>8.1f} {total_training:>11.1f} {span - total_training:>19.1f} "
          f"({(span - total_training) / 60:.1f} minutes outside training)")


if __name__ == "__main__":
    main()
