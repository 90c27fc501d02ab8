"""What the served model takes and returns: uint8 images in (arrays, flattened pixels, or photos converted the
way Fashion-MNIST's images were made), a table of the class and every class's probability out."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageFilter, ImageOps


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
