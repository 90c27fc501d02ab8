"""preprocess stage: decode to arrays, normalization statistics from training data only, and one seeded,
stratified train/validation split per ensemble member. Test images are decoded but never looked at here."""
from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.data import idx
from fmnist.data.arrays import save_arrays
from fmnist.data.splits import preprocess, summarize
from fmnist.files import write_json
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.space import require_space
from fmnist.tracking.run import stage_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    files = params.dataset.files
    with stage_run("preprocess") as run:
        train = preprocess(idx.read(args.raw / files.train_images.name),
                           idx.read(args.raw / files.train_labels.name), params.preprocess)
        test = {"images": idx.read(args.raw / files.test_images.name),
                "labels": idx.read(args.raw / files.test_labels.name)}
        require_space(args.out, sum(a.nbytes for split in (train, test) for a in split.values()),
                      "the preprocessed arrays")
        save_arrays(args.out / "train", train)
        save_arrays(args.out / "test", test)
        summary = summarize(train, len(test["labels"]), params.preprocess)
        write_json(args.metrics, summary)
        run.log_metrics(summary)
        run.log_artifact(args.metrics)


if __name__ == "__main__":
    run_main(main)
