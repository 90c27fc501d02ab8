"""verify stage: checksums, IDX structure, counts, label range and class balance of the raw files."""
from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.data.checks import headline, verify_dataset
from fmnist.files import write_json
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    with stage_run("verify") as run:
        report = verify_dataset(args.raw, params.dataset, params.verify)
        summary = headline(report)
        write_json(args.metrics, summary)
        run.log_metrics(summary)
        run.log_dict(report, "verify_report.json")


if __name__ == "__main__":
    run_main(main)
