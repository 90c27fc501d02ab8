"""Refusals before any scoring: members that disagree on what they classify, or a model for other classes or
image sizes than the dataset's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.errors import StageError
from fmnist.model.ensemble import Ensemble


def check_members_agree(paths: list[Path], states: list[dict]) -> None:
    """Every member was trained for the first one's classes and image size."""
    first = states[0]
    for path, state in zip(paths, states):
        if state["classes"] != first["classes"] or state["image_shape"] != first["image_shape"]:
            raise StageError(f"{path}: classes/image size {state['classes']} {state['image_shape']} differ from "
                             f"{paths[0]}: {first['classes']} {first['image_shape']}; retrain the members")


def check_compatible(ensemble: Ensemble, model_path: Path, classes: list[str], image_shape: list[int],
                     images: np.ndarray) -> None:
    """Refuse to score a model trained for other classes or image sizes than the dataset's."""
    if ensemble.classes != classes:
        raise StageError(f"{model_path}: model classes {ensemble.classes} do not match dataset.classes {classes}; "
                         "retrain (dvc repro) after changing the dataset")
    if list(ensemble.image_shape) != list(image_shape) or images.shape[1:] != tuple(image_shape):
        raise StageError(f"{model_path}: model expects images of {list(ensemble.image_shape)}, dataset has "
                         f"{list(images.shape[1:])} (dataset.image_shape {image_shape})")
