"""The visualize stages' parts: penultimate features, embeddings, pictures."""
import numpy as np
import torch

from fmnist.evaluation.embeddings import draw_embeddings, embed
from fmnist.evaluation.features import penultimate_features
from fmnist.params import Visualize
from tests.conftest import tiny_ensemble

RNG = np.random.default_rng(0)


def test_penultimate_features_are_the_last_linear_layer_inputs_of_every_member():
    ensemble = tiny_ensemble()
    ensemble.members.append(ensemble.members[0])
    ensemble.states.append(ensemble.states[0])
    images = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    features = penultimate_features(ensemble, images, batch_size=2)
    head = [m for m in ensemble.members[0].modules() if isinstance(m, torch.nn.Linear)][-1]
    assert features.shape == (5, 2 * head.in_features)
    np.testing.assert_allclose(features[:, :head.in_features], features[:, head.in_features:])
    # the captured features really are what the head turns into the logits (FastVGG scales them by 1/8)
    with torch.no_grad():
        logits = head(torch.from_numpy(features[:, :head.in_features])) * ensemble.members[0].scale
    np.testing.assert_allclose(logits.numpy(), ensemble.member_logits(images)[0], atol=1e-4)


def test_penultimate_features_are_computed_in_the_ensembles_precision():
    ensemble = tiny_ensemble()
    images = RNG.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    fp32 = penultimate_features(ensemble, images)
    ensemble.precision = "bf16"
    bf16 = penultimate_features(ensemble, images)
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - fp32).max() < 0.05 * fp32.std()


def test_embeddings_are_2d_per_method_and_pictures_are_written(tmp_path):
    labels = np.arange(90) % 3
    points = RNG.normal(size=(90, 20)) + labels[:, None] * 5
    cfg = Visualize(samples=90, sprite_per_class=2, perplexity=30, tsne_iterations=250, seed=0)
    embeddings = embed(points, cfg)
    assert {"pca", "tsne"} <= set(embeddings)
    for method, xy in embeddings.items():
        assert xy.shape == (90, 2) and np.isfinite(xy).all(), method
    captions = draw_embeddings(points, labels, ["a", "b", "c"], "pixels", tmp_path, cfg)
    assert captions[:2] == ["PCA of raw pixels (90 test images, 20 dims)", "t-SNE of raw pixels (90 test images, 20 dims)"]
    for method in embeddings:
        assert (tmp_path / f"pixels_{method}.png").read_bytes()[:4] == b"\x89PNG", method
    # well-separated classes stay separated in the PCA view
    centres = np.array([embeddings["pca"][labels == k].mean(0) for k in range(3)])
    assert np.linalg.norm(centres[0] - centres[2]) > 3 * embeddings["pca"][labels == 0].std()
