"""The ensemble: members plus how to combine them, from uint8 images to class probabilities. Soft, weighted-soft or
hard voting, optional flip and translation test-time augmentation, a temperature per member dividing its logits,
and the precision the members compute in."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from fmnist.model import nets
from fmnist.model.members import build_member
from fmnist.model.precision import autocast

# Batches that stay in the CPU's cache (docs/results.md: 512 beats 2,048 by 2.5x with channels-last weights).
INFERENCE_BATCH = 512


def combine(probs: np.ndarray, method: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Members' class probabilities (M, N, C) -> ensemble probabilities (N, C).
    soft: mean; weighted: weighted mean; hard: share of the members' votes (ties keep their share)."""
    if method == "soft":
        return probs.mean(axis=0)
    if method == "weighted":
        w = np.asarray(weights, dtype=np.float64)
        return np.tensordot(w / w.sum(), probs, axes=1)
    if method == "hard":
        votes = np.eye(probs.shape[2])[probs.argmax(axis=2)]  # (M, N, C) one-hot
        return votes.mean(axis=0)
    raise ValueError(f"unknown ensemble method {method!r}; choose soft, weighted or hard")


def member_weights(val_accuracies: list[float], method: str) -> np.ndarray:
    """Voting weights: validation accuracy for `weighted`, equal otherwise."""
    accuracies = np.asarray(val_accuracies, dtype=np.float64)
    return accuracies / accuracies.sum() if method == "weighted" else np.full(len(accuracies), 1 / len(accuracies))


# A test-time view of an image: (rows down, columns right) it is shifted by, and whether it is mirrored.
View = tuple[int, int, bool]
PLAIN: View = (0, 0, False)
MIRRORED: View = (0, 0, True)


def tta_views(flip: bool, translate: bool) -> tuple[list[View], np.ndarray]:
    """The views a member predicts from, and their weights. Translation is airbench's: the image shifted one pixel
    down-right and one up-left (each mirrored too when `flip`), the unshifted views keeping half the weight."""
    unshifted = [PLAIN, MIRRORED] if flip else [PLAIN]
    if not translate:
        return unshifted, np.full(len(unshifted), 1 / len(unshifted))
    shifted = [(d, d, v[2]) for d in (1, -1) for v in unshifted]
    return unshifted + shifted, np.array([0.5 / len(unshifted)] * len(unshifted) + [0.5 / len(shifted)] * len(shifted))


def tempered_probabilities(views: list[np.ndarray], temperature: float,
                           weights: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (N, C) from the logits of one or more views of the same images (e.g. the images and
    their mirror images), each divided by `temperature`, softmaxed, then averaged (with `weights`, equal if none):
    how a member predicts."""
    probs = [softmax(np.asarray(z, dtype=np.float64) / temperature, axis=1) for z in views]
    return np.average(probs, axis=0, weights=weights)


def shifted(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """uint8 images (N, H, W) moved `rows` down and `cols` right, the uncovered edge black (0), as in training's
    translation (fmnist/training/augment.py)."""
    if not rows and not cols:
        return images
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(rows, 0):h + min(rows, 0), max(cols, 0):w + min(cols, 0)] = \
        images[:, max(-rows, 0):h + min(-rows, 0), max(-cols, 0):w + min(-cols, 0)]
    return out


def input_batches(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                  batch_size: int = INFERENCE_BATCH, shift: tuple[int, int] = (0, 0)) -> Iterator[torch.Tensor]:
    """uint8 images (N, H, W), shifted by `shift` (rows, cols), as normalized, channels-last (B, 1, H, W) batches
    on `device`, in order."""
    norm = nets.Normalizer(mean.to(device), std.to(device), channels_last=True)
    for start in range(0, len(images), batch_size):
        batch = shifted(images[start:start + batch_size], *shift)
        yield norm(torch.from_numpy(np.ascontiguousarray(batch)).to(device).unsqueeze(1))


@torch.no_grad()
def member_logits(model: nn.Module, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                  device: torch.device, mirrored: bool = False, precision: str = "fp32",
                  shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Logits of one member, as nets.for_inference returns it, for uint8 images (N, H, W), or for their mirror
    images, shifted by `shift` (rows, cols), computed in `precision` (bf16: under autocast, as the member was
    validated when trained in bf16)."""
    model = model.to(device)
    out = []
    for x in input_batches(images, mean, std, device, shift=shift):
        with autocast(device, precision):
            out.append(model(x.flip(-1) if mirrored else x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


@dataclass
class Ensemble:
    """Members plus how to combine them: everything needed to go from uint8 images to class probabilities."""
    members: list[nn.Module]
    states: list[dict]
    method: str
    weights: np.ndarray
    tta_flip: bool
    classes: list[str]
    image_shape: tuple[int, int]
    # one per member, dividing its logits; 1 leaves a member as trained
    temperatures: np.ndarray | None = None
    # what the members compute in: the precision they were trained and their checkpoints chosen in (bf16 runs
    # 2-3 times faster than fp32 on CPUs with AVX-512 BF16 or AMX, docs/results.md)
    precision: str = "fp32"
    tta_translate: bool = False
    # the members with BatchNorm folded: built once, not on every call (a served model answers many small ones)
    inference_members: list[nn.Module] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperatures is None:
            self.temperatures = np.ones(len(self.members))
        # the layout input_batches delivers: several times faster than contiguous weights on a CPU
        for model in self.members:
            model.eval().to(memory_format=torch.channels_last)
        self.inference_members = [nets.for_inference(model) for model in self.members]

    @property
    def views(self) -> tuple[list[View], np.ndarray]:
        """The test-time views every member predicts from, and their weights."""
        return tta_views(self.tta_flip, self.tta_translate)

    def member_logits(self, images: np.ndarray, device: torch.device | str = "cpu",
                      mirrored: bool = False, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """(M, N, C) logits of every member for the images, or for their mirror images, shifted by `shift`."""
        return np.stack([member_logits(m, images, s["mean"], s["std"], torch.device(device), mirrored, self.precision,
                                       shift) for m, s in zip(self.inference_members, self.states)])

    def view_logits(self, images: np.ndarray, views: list[View],
                    device: torch.device | str = "cpu") -> dict[View, np.ndarray]:
        """member_logits of each view."""
        return {view: self.member_logits(images, device, view[2], view[:2]) for view in views}

    def member_probabilities(self, views: list[np.ndarray], weights: np.ndarray | None = None,
                             calibrated: bool = True) -> np.ndarray:
        """(M, N, C) probabilities from the member_logits of one or more views of the images, averaged with
        `weights` (equal if none); tempered unless `calibrated` is false."""
        temperatures = self.temperatures if calibrated else np.ones(len(self.members))
        return np.stack([tempered_probabilities([v[i] for v in views], float(t), weights)
                         for i, t in enumerate(temperatures)])

    def predict_proba(self, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
        """(N, C) ensemble probabilities for uint8 images (N, H, W), with the TTA views the ensemble uses."""
        views, weights = self.views
        logits = self.view_logits(images, views, device)
        return combine(self.member_probabilities([logits[v] for v in views], weights), self.method, self.weights)

    def to_state(self) -> dict[str, Any]:
        """The ensemble file's content: tensors and plain values only, so it loads with weights_only=True."""
        return {"members": self.states, "method": self.method, "weights": torch.from_numpy(self.weights),
                "tta_flip": self.tta_flip, "classes": self.classes, "image_shape": list(self.image_shape),
                "temperatures": torch.from_numpy(np.asarray(self.temperatures, dtype=np.float64)),
                "precision": self.precision, "tta_translate": self.tta_translate}

    @classmethod
    def from_members(cls, states: list[dict], method: str, tta_flip: bool,
                     temperatures: np.ndarray | None = None, precision: str = "fp32",
                     tta_translate: bool = False) -> Ensemble:
        """An ensemble of member states (fmnist.model.members), weighted by their validation accuracy when
        `method` is weighted."""
        weights = member_weights([state["val_accuracy"] for state in states], method)
        first = states[0]
        return cls([build_member(state) for state in states], states, method, weights, tta_flip,
                   first["classes"], tuple(first["image_shape"]), temperatures, precision, tta_translate)

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Files from before temperature scaling or bf16 inference (registered versions in a team's store) have
        # neither: they computed in fp32 with temperature 1. Translation TTA came later still.
        temperatures = state["temperatures"].numpy() if "temperatures" in state else None
        return cls([build_member(member) for member in state["members"]], state["members"], state["method"],
                   state["weights"].numpy(), state["tta_flip"], state["classes"], tuple(state["image_shape"]),
                   temperatures, state.get("precision", "fp32"), state.get("tta_translate", False))
