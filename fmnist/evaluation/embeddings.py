"""What the data and the trained ensemble look like in 2-D: PCA, t-SNE, and UMAP when umap-learn is installed, of
raw pixels and of the ensemble's penultimate features."""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import nn

from fmnist.model.ensemble import INFERENCE_BATCH, Ensemble, input_batches
from fmnist.params import Visualize


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


def title(method: str, source: str, samples: int, dims: int) -> str:
    """'t-SNE of raw pixels (5,000 test images, 784 dims)'."""
    name = "t-SNE" if method == "tsne" else method.upper()
    what = "raw pixels" if source == "pixels" else "ensemble penultimate features"
    return f"{name} of {what} ({samples:,} test images, {dims} dims)"
