"""visualize stage: what the data and the trained ensemble look like. A class sprite, and 2-D embeddings (PCA,
t-SNE, and UMAP when umap-learn is installed) of a stratified test sample, from the raw pixels and from the
ensemble's penultimate features (the members' features side by side), coloured by class; PNGs as DVC plots and
in MLflow."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from fmnist.data.arrays import load_images
from fmnist.data.splits import stratified_subset
from fmnist.device import set_threads
from fmnist.evaluation import figures
from fmnist.evaluation.embeddings import embed, penultimate_features, title
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
    classes = list(params.dataset.classes)
    images, labels = load_images(args.data)
    ensemble = Ensemble.load(args.model)
    with stage_run("visualize") as run, atomic_dir(args.plots) as out:
        figures.sprite(images, labels, classes, cfg.sprite_per_class, out / "sprite.png")
        sample = stratified_subset(labels, cfg.samples, cfg.seed)
        sources = {"pixels": images[sample].reshape(len(sample), -1).astype(np.float32),
                   "features": penultimate_features(ensemble, images[sample])}
        for source, points in sources.items():
            for method, xy in embed(points, cfg).items():
                caption = title(method, source, len(sample), points.shape[1])
                figures.embedding(xy, labels[sample], classes, out / f"{source}_{method}.png", caption)
                log.info("%s", caption)
        run.log_metrics({"samples": len(sample), "feature_dims": sources["features"].shape[1]})
        for path in sorted(out.glob("*.png")):
            run.log_artifact(path, folder="visualize")


if __name__ == "__main__":
    run_main(main)
