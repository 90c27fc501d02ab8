"""download stage: fetch each IDX file from the first mirror (directory or HTTP URL) that serves it intact."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fmnist.data.checks import MANIFEST, decoded_bounds
from fmnist.data.download import download
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.download")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partial", type=Path, required=True, help="resumable partial downloads")
    args = parser.parse_args()
    params = load_params()
    with stage_run("download") as run:
        bounds = decoded_bounds(params.dataset.train_count, params.dataset.test_count, params.dataset.image_shape)
        manifest, failures = download(params.dataset.files, params.dataset.mirrors, bounds, params.download, args.out,
                                      args.partial)
        for failure in failures:
            log.warning("mirror skipped: %s", failure)
        sizes = [(args.out / entry["file"]).stat().st_size for entry in manifest.values()]
        run.log_metrics({"bytes": sum(sizes), "mirror_failures": len(failures)})
        run.log_artifact(args.out / MANIFEST)


if __name__ == "__main__":
    run_main(main)
