"""baselines stage: scikit-learn classifiers on the flattened pixels scaled to [0, 1], configured as the official
Fashion-MNIST benchmark does (classifier + parameter grid), trained on the whole training set and scored on the
test set; each configuration is one MLflow run, compared with the benchmark's published accuracy."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fmnist.data.arrays import load_images
from fmnist.evaluation.baselines import (build, expand, features, label, load_reference, markdown, run_all,
                                         summarize)
from fmnist.files import atomic_path, write_json
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.baselines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True, help="CSV: one row per configuration")
    args = parser.parse_args()
    params = load_params()
    cfg = params.baselines
    (x_train, y_train), (x_test, y_test) = ((features(x), y) for x, y in (load_images(args.train),
                                                                          load_images(args.test)))
    reference, source = load_reference(args.reference, params.dataset.name)
    configurations = expand(cfg.profiles[cfg.profile])
    for classifier, grid in configurations:  # every bad name or parameter before hours of fitting
        build(classifier, grid, cfg.seed)
    with stage_run("baselines") as run:
        log.info("%d configurations (%s profile) x %d repeat(s), %d train / %d test images", len(configurations),
                 cfg.profile, cfg.repeats, len(y_train), len(y_test))
        def finished(i: int, result: dict) -> None:
            log.info("[%d/%d] %s: %.2f%% (published %s), fit %.1f s", len(done) + 1, len(configurations),
                     result["configuration"], 100 * result["accuracy"],
                     "—" if result["published"] is None else f"{100 * result['published']:.1f}%",
                     result["fit_seconds"])
            done.append(i)

        done: list[int] = []
        results = run_all(configurations, cfg.repeats, cfg.seed, reference, x_train, y_train, x_test, y_test,
                          on_result=finished)
        for (classifier, grid), result in zip(configurations, results, strict=True):
            with run.child(label(classifier, grid), {"classifier": classifier, **grid}) as child:
                child.log_metrics({k: v for k, v in result.items() if isinstance(v, float)})
        metrics, table = summarize(results)
        write_json(args.metrics, metrics)
        with atomic_path(args.table) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        text = markdown(table, source)
        log.info("ours vs published:\n%s", text)
        run.log_metrics({"best_accuracy": metrics["best_accuracy"], "configurations": len(results)})
        run.log_text(text, "baselines.md")
        run.log_artifact(args.table)


if __name__ == "__main__":
    run_main(main)
