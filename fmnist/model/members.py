"""A member's file: its weights and what rebuilds and feeds its net, as plain tensors and values, so that
torch.load(weights_only=True) reads it and nothing arbitrary is ever unpickled."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist.model import nets


def member_state(model: nn.Module, norm: nets.Normalizer, net: str, classes: list[str], image_shape: list[int],
                 **record: Any) -> dict[str, Any]:
    """The member file's content: the net's name and state dict, the classes and image size it was trained for,
    its input normalization, and `record` (member name, seed, split, best epoch and its validation scores)."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "net": net,
        "classes": list(classes),
        "image_shape": list(image_shape),
        "mean": norm.mean.cpu(),
        "std": norm.std.cpu(),
        **record,
    }


def build_member(state: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The net a member state describes, with its weights, in eval mode on `device`."""
    model = nets.build(state["net"], len(state["classes"]), tuple(state["image_shape"]))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval()


def load_member(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A saved member, ready for inference, and its state."""
    state = torch.load(path, map_location=device, weights_only=True)
    return build_member(state, device), state
