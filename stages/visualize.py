"""visualize: what the data and the trained ensemble look like. A class sprite, and 2-D embeddings (PCA, t-SNE,
and UMAP when umap-learn is installed) of a stratified test sample, from the raw pixels and from the ensemble's
penultimate features (the members' features side by side), coloured by class; PNGs as DVC plots and in MLflow.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split
from torch import nn

from stages import figures, tracking
from stages.common import atomic_dir, run_main
from stages.config import Visualize, load_params
from stages.device import set_threads
from stages.ensemble import INFERENCE_BATCH, Ensemble, input_batches

log = logging.getLogger("stages.visualize")


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of `size` items with the class shares of `labels` (all of them when size >= len(labels))."""
    if size >= len(labels):
        return np.arange(len(labels))
    picked, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(picked)


def _classifier_head(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return linears[-1]


@torch.no_grad()
def penultimate_features(ensemble: Ensemble, images: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """(N, sum of members' feature sizes): each member's input to its last linear layer, concatenated, because
    the members' feature spaces are unrelated and averaging them would mix unrelated axes."""
    per_member = []
    for model, state in zip(ensemble.members, ensemble.states):
        captured: list[torch.Tensor] = []
        hook = _classifier_head(model).register_forward_pre_hook(
            lambda _, inputs, into=captured: into.append(inputs[0].flatten(1).float()))
        try:
            for x in input_batches(images, state["mean"], state["std"], torch.device("cpu"), batch_size):
                model(x)
        finally:
            hook.remove()
        per_member.append(torch.cat(captured).numpy())
    return np.concatenate(per_member, axis=1)


def embed(points: np.ndarray, cfg: Visualize) -> dict[str, np.ndarray]:
    """2-D embeddings by method; t-SNE and UMAP start from the 50 leading principal components, the usual
    denoising step that also makes them several times faster."""
    points = (points - points.mean(0)) / (points.std(0) + 1e-6)
    reduced = PCA(n_components=min(50, *points.shape), random_state=cfg.seed).fit_transform(points)
    embeddings = {"pca": reduced[:, :2],
                  "tsne": TSNE(perplexity=min(cfg.perplexity, (len(points) - 1) / 3), init="pca",
                               random_state=cfg.seed).fit_transform(reduced)}
    if importlib.util.find_spec("umap") is not None:
        import umap

        embeddings["umap"] = umap.UMAP(random_state=cfg.seed).fit_transform(reduced)
    return embeddings


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
    images, labels = np.load(args.data / "images.npy"), np.load(args.data / "labels.npy").astype(np.int64)
    ensemble = Ensemble.load(args.model)
    section = {"visualize": cfg.model_dump(), "dataset": {"classes": classes}}
    with tracking.stage_run("visualize", section, experiment=params.dataset.name) as run, \
            atomic_dir(args.plots) as out:
        figures.sprite(images, labels, classes, cfg.sprite_per_class, out / "sprite.png")
        sample = stratified_sample(labels, cfg.samples, cfg.seed)
        sources = {"pixels": images[sample].reshape(len(sample), -1).astype(np.float32),
                   "features": penultimate_features(ensemble, images[sample])}
        for source, points in sources.items():
            for method, xy in embed(points, cfg).items():
                title = (f"{method.upper() if method != 'tsne' else 't-SNE'} of "
                         f"{'raw pixels' if source == 'pixels' else 'ensemble penultimate features'} "
                         f"({len(sample):,} test images, {points.shape[1]} dims)")
                figures.embedding(xy, labels[sample], classes, out / f"{source}_{method}.png", title)
                log.info("%s", title)
        run.log_metrics({"samples": len(sample), "feature_dims": sources["features"].shape[1]})
        pictures = sorted(out.glob("*.png"))
        for path in pictures:
            run.log_artifact(path, folder="visualize")


if __name__ == "__main__":
    run_main(main)
