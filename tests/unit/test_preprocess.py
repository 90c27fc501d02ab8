import numpy as np
import pytest

from fmnist.data.splits import (
    MIN_STD,
    make_splits,
    normalization_stats,
    preprocess,
    stratified_subset,
)
from fmnist.params import Preprocess

LABELS = np.repeat(np.arange(10), 100).astype(np.uint8)


def cfg(**overrides) -> Preprocess:
    values = {"normalization": "global", "n_splits": 5, "val_fraction": 0.2, "train_subset": 0, "seed": 1}
    return Preprocess(**{**values, **overrides})


def test_splits_are_stratified_sized_and_distinct():
    is_val = make_splits(LABELS, n_splits=5, val_fraction=0.2, seed=0)
    assert is_val.shape == (5, 1000) and (is_val.sum(axis=1) == 200).all()
    for mask in is_val:
        assert (np.bincount(LABELS[mask], minlength=10) == 20).all()
    assert len({mask.tobytes() for mask in is_val}) == 5


def test_splits_depend_on_the_seed_only():
    np.testing.assert_array_equal(make_splits(LABELS, 3, 0.2, seed=7), make_splits(LABELS, 3, 0.2, seed=7))
    assert not np.array_equal(make_splits(LABELS, 3, 0.2, seed=7), make_splits(LABELS, 3, 0.2, seed=8))


def test_subset_is_stratified_and_sorted():
    keep = stratified_subset(LABELS, 300, seed=0)
    assert len(keep) == 300 and (np.diff(keep) > 0).all()
    assert (np.bincount(LABELS[keep]) == 30).all()
    assert len(stratified_subset(LABELS, 0, seed=0)) == 1000


@pytest.mark.parametrize("mode, shape", [("none", ()), ("global", ()), ("per_pixel", (2, 2))])
def test_normalization_shapes(mode, shape):
    images = np.array([[[0, 255], [10, 10]], [[255, 255], [30, 10]]], dtype=np.uint8)
    mean, std = normalization_stats(images, mode)
    assert np.shape(mean) == shape and np.shape(std) == shape
    if mode == "per_pixel":
        np.testing.assert_allclose(mean, [[0.5, 1.0], [20 / 255, 10 / 255]], rtol=1e-6)
        assert std[0, 1] == pytest.approx(MIN_STD)  # constant pixel: floored, not zero
    if mode == "global":
        assert mean == pytest.approx(images.mean() / 255)


def test_normalized_training_pixels_have_zero_mean_unit_std():
    images = np.random.default_rng(0).integers(0, 256, (100, 4, 4), dtype=np.uint8)
    mean, std = normalization_stats(images, "global")
    normalized = (images / 255 - mean) / std
    assert abs(normalized.mean()) < 1e-5 and normalized.std() == pytest.approx(1, abs=1e-5)


def test_preprocess_returns_training_arrays_only():
    images = np.zeros((1000, 2, 2), np.uint8)
    out = preprocess(images, LABELS, cfg(train_subset=500))
    assert set(out) == {"images", "labels", "mean", "std", "is_val"}
    assert out["images"].shape == (500, 2, 2) and out["is_val"].shape == (5, 500)


def test_a_subset_of_unequal_classes_keeps_their_shares():
    labels = np.repeat(np.arange(4), [100, 100, 200, 400])
    picked = stratified_subset(labels, 80, seed=0)
    assert len(picked) == 80 and len(set(picked)) == 80
    assert np.bincount(labels[picked]).tolist() == [10, 10, 20, 40]
    assert len(stratified_subset(labels, 10_000, seed=0)) == len(labels)
