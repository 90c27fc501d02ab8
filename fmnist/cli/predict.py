"""Predict the classes of image or IDX files with the ensemble, or with a registered version of it.

Image files (PNG/JPEG of any size) are converted the way Fashion-MNIST's images were made; IDX files are read as
they are. Prints each image's most likely classes and their probabilities.

    fmnist predict models/ensemble.pt shoe.png bag.jpg
    fmnist predict models/ensemble.pt data/raw/t10k-images-idx3-ubyte.gz --limit 5
    fmnist predict models:/fashion-mnist-ensemble@champion shoe.png    # from the MLflow registry
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fmnist.data import idx
from fmnist.errors import StageError
from fmnist.serving.inputs import convert_like_fashion_mnist

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_inputs(paths: list[Path], shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """uint8 images (N, H, W) and a name for each, from image files and IDX files."""
    images, names = [], []
    for path in paths:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                with Image.open(path) as image:
                    images.append(convert_like_fashion_mnist(image, shape)[None])
            except OSError as exc:
                raise StageError(f"{path}: cannot read as an image: {exc}") from None
            names.append(str(path))
            continue
        array = idx.read(path)
        if array.dtype != np.uint8 or array.shape[1:] != shape:
            raise StageError(f"{path}: expected uint8 IDX images of shape (N, {shape[0]}, {shape[1]}), "
                             f"got {array.dtype} {array.shape}")
        images.append(array)
        names += [f"{path}[{i}]" for i in range(len(array))]
    return np.concatenate(images), names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="models/ensemble.pt, or a registered version: models:/<name>@champion")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files and/or IDX files")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")


def run(args: argparse.Namespace) -> None:
    from fmnist.model.ensemble import Ensemble

    model = args.model
    if model.startswith("models:/"):
        from fmnist.tracking.registry import registered_ensemble_file

        model = registered_ensemble_file(model)
    ensemble = Ensemble.load(model)
    images, names = read_inputs(args.inputs, tuple(ensemble.image_shape))
    images, names = images[:args.limit], names[:args.limit]
    probs = ensemble.predict_proba(images)
    for name, p in zip(names, probs):
        ranked = np.argsort(-p, kind="stable")[:args.top]
        shown = ", ".join(f"{ensemble.classes[k]} {100 * p[k]:.1f}%" for k in ranked)
        print(f"{name}: {shown}")
    sys.stdout.flush()
