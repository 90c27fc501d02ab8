"""predict: class names and probabilities for image files (PNG/JPEG of any size, converted the way
Fashion-MNIST's images were made) or IDX files, from the ensemble that evaluate scored.

    python -m stages.predict models/ensemble.pt shoe.png bag.jpg
    python -m stages.predict models/ensemble.pt data/raw/t10k-images-idx3-ubyte.gz --limit 5
    python -m stages.predict models:/fashion-mnist-ensemble@champion shoe.png    # from the MLflow registry
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageFilter, ImageOps

from stages import idx, tracking
from stages.common import StageError, run_main
from stages.ensemble import Ensemble

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def convert_like_fashion_mnist(image: Image.Image, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """The dataset's conversion (its README): trim the background, resize the longest edge to fit, sharpen,
    centre on the background, negate, 8-bit grey. Products on white become light objects on black."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)  # transparent = background
    gray = ImageOps.grayscale(image)
    background = gray.getpixel((0, 0))
    box = ImageChops.difference(gray, Image.new("L", gray.size, background)).getbbox()
    if box:
        gray = gray.crop(box)
    height, width = shape
    scale = min(width / gray.width, height / gray.height)
    gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.LANCZOS)
    gray = gray.filter(ImageFilter.SHARPEN)
    canvas = Image.new("L", (width, height), background)
    canvas.paste(gray, ((width - gray.width) // 2, (height - gray.height) // 2))
    return np.asarray(ImageOps.invert(canvas), dtype=np.uint8)


def load_images(paths: list[Path], shape: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
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


def as_images(data, shape: tuple[int, int]) -> np.ndarray:
    """Model input (array or DataFrame, (N, H, W) or flattened (N, H*W)) -> uint8 images (N, H, W)."""
    array = np.asarray(data.to_numpy() if isinstance(data, pd.DataFrame) else data)
    if array.ndim == 2 and array.shape[1] == shape[0] * shape[1]:
        array = array.reshape(-1, *shape)
    if array.ndim != 3 or array.shape[1:] != shape:
        raise ValueError(f"expected images of shape (N, {shape[0]}, {shape[1]}) or (N, {shape[0] * shape[1]}), "
                         f"got {array.shape}")
    if array.min() < 0 or array.max() > 255:
        raise ValueError(f"expected pixel values in [0, 255], got [{array.min()}, {array.max()}]")
    return array.astype(np.uint8)


def prediction_frame(probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per image: predicted class, its probability, and every class's probability."""
    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "probability", probs.max(axis=1))
    frame.insert(0, "class", [classes[i] for i in probs.argmax(axis=1)])
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="models/ensemble.pt, or a registered version: models:/<name>@champion")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files and/or IDX files")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    args = parser.parse_args()
    model = args.model
    if model.startswith("models:/"):
        model = tracking.registered_ensemble_file(model)
    ensemble = Ensemble.load(model)
    images, names = load_images(args.inputs, tuple(ensemble.image_shape))
    images, names = images[:args.limit], names[:args.limit]
    probs = ensemble.predict_proba(images)
    for name, p in zip(names, probs):
        ranked = np.argsort(-p, kind="stable")[:args.top]
        shown = ", ".join(f"{ensemble.classes[k]} {100 * p[k]:.1f}%" for k in ranked)
        print(f"{name}: {shown}")
    sys.stdout.flush()


if __name__ == "__main__":
    run_main(main)
