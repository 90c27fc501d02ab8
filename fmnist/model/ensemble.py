"""The ensemble: members plus how to combine them, from uint8 images to class probabilities. Soft, weighted-soft or
hard voting, optional flip test-time augmentation, a temperature per member dividing its logits, and the precision
the members compute in."""
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


def tempered_probabilities(views: list[np.ndarray], temperature: float) -> np.ndarray:
    """Class probabilities (N, C) from the logits of one or more views of the same images (e.g. the images and
    their mirror images), each divided by `temperature`, softmaxed, then averaged: how a member predicts."""
    return np.mean([softmax(np.asarray(z, dtype=np.float64) / temperature, axis=1) for z in views], axis=0)


def input_batches(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                  batch_size: int = INFERENCE_BATCH) -> Iterator[torch.Tensor]:
    """uint8 images (N, H, W) as normalized, channels-last (B, 1, H, W) batches on `device`, in order."""
    norm = nets.Normalizer(mean.to(device), std.to(device), channels_last=True)
    for start in range(0, len(images), batch_size):
        yield norm(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device).unsqueeze(1))


@torch.no_grad()
def member_logits(model: nn.Module, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                  device: torch.device, mirrored: bool = False, precision: str = "fp32") -> np.ndarray:
    """Logits of one member, as nets.for_inference returns it, for uint8 images (N, H, W), or for their mirror
    images, computed in `precision` (bf16: under autocast, as the member was validated when trained in bf16)."""
    model = model.to(device)
    out = []
    for x in input_batches(images, mean, std, device):
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
    # the members with BatchNorm folded: built once, not on every call (a served model answers many small ones)
    inference_members: list[nn.Module] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperatures is None:
            self.temperatures = np.ones(len(self.members))
        # the layout input_batches delivers: several times faster than contiguous weights on a CPU
        for model in self.members:
            model.eval().to(memory_format=torch.channels_last)
        self.inference_members = [nets.for_inference(model) for model in self.members]

    def member_logits(self, images: np.ndarray, device: torch.device | str = "cpu",
                      mirrored: bool = False) -> np.ndarray:
        """(M, N, C) logits of every member for the images, or for their mirror images."""
        return np.stack([member_logits(m, images, s["mean"], s["std"], torch.device(device), mirrored, self.precision)
                         for m, s in zip(self.inference_members, self.states)])

    def member_probabilities(self, plain: np.ndarray, mirrored: np.ndarray | None = None,
                             calibrated: bool = True) -> np.ndarray:
        """(M, N, C) probabilities from member_logits: tempered unless `calibrated` is false, averaged with the
        mirror images' when they are given (flip TTA)."""
        views = [plain] if mirrored is None else [plain, mirrored]
        temperatures = self.temperatures if calibrated else np.ones(len(self.members))
        return np.stack([tempered_probabilities([v[i] for v in views], float(t))
                         for i, t in enumerate(temperatures)])

    def predict_proba(self, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
        """(N, C) ensemble probabilities for uint8 images (N, H, W), with flip TTA when the ensemble uses it."""
        mirrored = self.member_logits(images, device, mirrored=True) if self.tta_flip else None
        return combine(self.member_probabilities(self.member_logits(images, device), mirrored),
                       self.method, self.weights)

    def to_state(self) -> dict[str, Any]:
        """The ensemble file's content: tensors and plain values only, so it loads with weights_only=True."""
        return {"members": self.states, "method": self.method, "weights": torch.from_numpy(self.weights),
                "tta_flip": self.tta_flip, "classes": self.classes, "image_shape": list(self.image_shape),
                "temperatures": torch.from_numpy(np.asarray(self.temperatures, dtype=np.float64)),
                "precision": self.precision}

    @classmethod
    def from_members(cls, states: list[dict], method: str, tta_flip: bool,
                     temperatures: np.ndarray | None = None, precision: str = "fp32") -> Ensemble:
        """An ensemble of member states (fmnist.model.members), weighted by their validation accuracy when
        `method` is weighted."""
        weights = member_weights([state["val_accuracy"] for state in states], method)
        first = states[0]
        return cls([build_member(state) for state in states], states, method, weights, tta_flip,
                   first["classes"], tuple(first["image_shape"]), temperatures, precision)

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Files from before temperature scaling or bf16 inference (registered versions in a team's store) have
        # neither: they computed in fp32 with temperature 1.
        temperatures = state["temperatures"].numpy() if "temperatures" in state else None
        return cls([build_member(member) for member in state["members"]], state["members"], state["method"],
                   state["weights"].numpy(), state["tta_flip"], state["classes"], tuple(state["image_shape"]),
                   temperatures, state.get("precision", "fp32"))
