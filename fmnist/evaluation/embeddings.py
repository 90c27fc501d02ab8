"""Points in 2-D: PCA, t-SNE, and UMAP when umap-learn is installed, as pictures; of raw pixels (visualize_data)
or of the ensemble's penultimate features (visualize, fmnist.evaluation.features)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from fmnist.evaluation import figures
from fmnist.params import Visualize


def embed(points: np.ndarray, cfg: Visualize) -> dict[str, np.ndarray]:
    """2-D embeddings by method; t-SNE and UMAP start from the 50 leading principal components, the usual
    denoising step that also makes them several times faster."""
    points = (points - points.mean(0)) / (points.std(0) + 1e-6)
    reduced = PCA(n_components=min(50, *points.shape), random_state=cfg.seed).fit_transform(points)
    embeddings = {"pca": reduced[:, :2],
                  "tsne": TSNE(perplexity=min(cfg.perplexity, (len(points) - 1) / 3), init="pca",
                               max_iter=cfg.tsne_iterations, random_state=cfg.seed).fit_transform(reduced)}
    if importlib.util.find_spec("umap") is not None:
        import umap

        embeddings["umap"] = umap.UMAP(random_state=cfg.seed).fit_transform(reduced)
    return embeddings


def title(method: str, source: str, samples: int, dims: int) -> str:
    """'t-SNE of raw pixels (5,000 test images, 784 dims)'."""
    name = "t-SNE" if method == "tsne" else method.upper()
    what = "raw pixels" if source == "pixels" else "ensemble penultimate features"
    return f"{name} of {what} ({samples:,} test images, {dims} dims)"


def draw_embeddings(points: np.ndarray, labels: np.ndarray, classes: list[str], source: str, out: Path,
                    cfg: Visualize) -> list[str]:
    """Every embedding of `points` (one row per image of `labels`) as <out>/<source>_<method>.png; their titles."""
    captions = []
    for method, xy in embed(points, cfg).items():
        captions.append(title(method, source, len(points), points.shape[1]))
        figures.embedding(xy, labels, classes, out / f"{source}_{method}.png", captions[-1])
    return captions
