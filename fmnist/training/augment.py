"""Augmentation of whole batches on the device: no per-sample loop, no DataLoader workers."""
from __future__ import annotations

from collections.abc import Callable

import torch

from fmnist.params import Augment


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    mask = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=gen) < 0.5
    return torch.where(mask, x.flip(-1), x)


def translate(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random offset in [-pixels, pixels] on both axes, filling with zeros."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n, 1), device=x.device, generator=gen)
    rows = (torch.arange(h, device=x.device) + dy)[:, None, :, None]  # (n, 1, h, 1)
    cols = (torch.arange(w, device=x.device) + dx)[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def erase(x: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): zero a random rectangle of 2-25% of the image in a share of images.
    Zero is the training mean after normalization."""
    n, _, h, w = x.shape
    area = torch.empty(n, device=x.device).uniform_(0.02, 0.25, generator=gen) * h * w
    aspect = torch.exp(torch.empty(n, device=x.device).uniform_(-1.2, 1.2, generator=gen))  # log(0.3)..log(3.3)
    eh = (area * aspect).sqrt().clamp(1, h).long()
    ew = (area / aspect).sqrt().clamp(1, w).long()
    top = (torch.rand(n, device=x.device, generator=gen) * (h - eh + 1)).long()
    left = (torch.rand(n, device=x.device, generator=gen) * (w - ew + 1)).long()
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    inside = (((rows >= top[:, None]) & (rows < (top + eh)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + ew)[:, None]))[:, None, :])
    chosen = torch.rand(n, device=x.device, generator=gen) < probability
    return x.masked_fill((inside & chosen[:, None, None])[:, None], 0.0)


def augment(x: torch.Tensor, cfg: Augment, gen: torch.Generator,
            normalize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """uint8 pixels -> the normalized batch with the augmentations `cfg` turns on, in a fixed order, drawing
    randomness from `gen` only. Flip and translation move raw pixels, so the edge a shift uncovers is background
    (0), as in every real image; shifted after normalization it was the mean's grey, a border no test image has
    (docs/fast-net-search.md: the same validation accuracy either way). Erasing comes after, filling with the mean."""
    if cfg.flip:
        x = flip(x, gen)
    if cfg.translate:
        x = translate(x, cfg.translate, gen)
    x = normalize(x)
    if cfg.erasing:
        x = erase(x, cfg.erasing, gen)
    return x
