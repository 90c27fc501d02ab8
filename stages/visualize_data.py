"""visualize_data stage: what the test set looks like before any model sees it. A class sprite, and 2-D
embeddings (PCA, t-SNE, and UMAP when umap-learn is installed) of a stratified sample's raw pixels, coloured by
class; PNGs as DVC plots and in MLflow. Apart from `visualize` because no model goes into them: retraining leaves
them cached."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from fmnist.data.arrays import load_images
from fmnist.data.splits import stratified_subset
from fmnist.evaluation import figures
from fmnist.evaluation.embeddings import draw_embeddings
from fmnist.files import atomic_dir
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.visualize_data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="preprocessed test set")
    parser.add_argument("--plots", type=Path, required=True, help="output directory of PNGs")
    args = parser.parse_args()
    params = load_params()
    cfg = params.visualize
    classes = list(params.dataset.classes)
    images, labels = load_images(args.data)
    with stage_run("visualize_data") as run, atomic_dir(args.plots) as out:
        figures.sprite(images, labels, classes, cfg.sprite_per_class, out / "sprite.png")
        sample = stratified_subset(labels, cfg.samples, cfg.seed)
        pixels = images[sample].reshape(len(sample), -1).astype(np.float32)
        for caption in draw_embeddings(pixels, labels[sample], classes, "pixels", out, cfg):
            log.info("%s", caption)
        run.log_metrics({"samples": len(sample)})
        for path in sorted(out.glob("*.png")):
            run.log_artifact(path, folder="visualize_data")


if __name__ == "__main__":
    run_main(main)
