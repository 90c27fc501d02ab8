"""How preprocess stores a split and how the later stages read it: one .npy per array in a directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.files import atomic_dir


def save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """One .npy per array, the directory replaced atomically."""
    with atomic_dir(directory) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)


def load_images(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 images (N, H, W) and its labels as int64."""
    return np.load(directory / "images.npy"), np.load(directory / "labels.npy").astype(np.int64)
