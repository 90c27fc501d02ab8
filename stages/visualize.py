"""visualize stage: what the trained ensemble makes of the test set. 2-D embeddings (PCA, t-SNE, and UMAP when
umap-learn is installed) of the ensemble's penultimate features (the members' features side by side) for a
stratified test sample, the one visualize_data embeds as raw pixels, coloured by class; PNGs as DVC plots and in
MLflow."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fmnist.data.arrays import load_images
from fmnist.data.splits import stratified_subset
from fmnist.device import set_threads
from fmnist.evaluation.embeddings import draw_embeddings
from fmnist.evaluation.features import penultimate_features
from fmnist.files import atomic_dir
from fmnist.model.ensemble import Ensemble
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.visualize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="preprocessed test set")
    parser.add_argument("--plots", type=Path, required=True, help="output directory of PNGs")
    args = parser.parse_args()
    params = load_params()
    cfg = params.visualize
    set_threads(params.train.threads)
    images, labels = load_images(args.data)
    ensemble = Ensemble.load(args.model)
    with stage_run("visualize") as run, atomic_dir(args.plots) as out:
        sample = stratified_subset(labels, cfg.samples, cfg.seed)
        features = penultimate_features(ensemble, images[sample])
        for caption in draw_embeddings(features, labels[sample], list(params.dataset.classes), "features", out, cfg):
            log.info("%s", caption)
        run.log_metrics({"samples": len(sample), "feature_dims": features.shape[1]})
        for path in sorted(out.glob("*.png")):
            run.log_artifact(path, folder="visualize")


if __name__ == "__main__":
    run_main(main)
