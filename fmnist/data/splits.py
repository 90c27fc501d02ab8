"""The training-side arrays: a stratified subset, normalization statistics from training images only, and one
seeded, stratified train/validation split per ensemble member."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit, train_test_split

from fmnist.params import Preprocess

# Per-pixel std is 0 where every training image has the same value (MNIST's borders); dividing by it would
# turn those pixels into inf/NaN, so std is floored at one grey level.
MIN_STD = 1 / 255


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset of `size` items (all items when size is 0 or too big)."""
    if size == 0 or size >= len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def normalization_stats(images: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std on the [0, 1] pixel scale: scalars for none/global, one per pixel for per_pixel."""
    if mode == "none":
        return np.float32(0.0), np.float32(1.0)
    axis = None if mode == "global" else 0
    mean = images.mean(axis=axis, dtype=np.float64) / 255
    std = images.std(axis=axis, dtype=np.float64) / 255
    return mean.astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32)


def make_splits(labels: np.ndarray, n_splits: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean (n_splits, N) matrix: True where an image is in split k's validation set. Each split is
    stratified, so every class keeps its share in train and validation."""
    splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=val_fraction, random_state=seed)
    is_val = np.zeros((n_splits, len(labels)), dtype=bool)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        is_val[k, val] = True
    return is_val


def preprocess(train_images: np.ndarray, train_labels: np.ndarray, cfg: Preprocess) -> dict[str, np.ndarray]:
    """The training-side arrays: (subset) images and labels, normalization stats, validation masks."""
    keep = stratified_subset(train_labels, cfg.train_subset, cfg.seed)
    images, labels = train_images[keep], train_labels[keep]
    mean, std = normalization_stats(images, cfg.normalization)
    is_val = make_splits(labels, cfg.n_splits, cfg.val_fraction, cfg.seed)
    return {"images": images, "labels": labels, "mean": mean, "std": std, "is_val": is_val}


def summarize(train: dict[str, np.ndarray], n_test: int, cfg: Preprocess) -> dict:
    """Small, flat numbers for metrics/preprocess.json."""
    val_counts = train["is_val"].sum(axis=1)
    pixels = train["images"]
    return {
        "train_count": len(train["labels"]),
        "test_count": int(n_test),
        "n_splits": int(cfg.n_splits),
        "val_count": int(val_counts.min()),
        "fit_count": int(len(train["labels"]) - val_counts.max()),
        "pixel_mean": round(float(pixels.mean(dtype=np.float64) / 255), 6),
        "pixel_std": round(float(pixels.std(dtype=np.float64) / 255), 6),
    }
