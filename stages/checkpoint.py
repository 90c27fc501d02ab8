"""Model files: written so the same state gives the same bytes, read without unpickling arbitrary objects."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stages import nets
from stages.common import atomic_path


def save_checkpoint(path: Path, state: dict) -> None:
    """Same state, same bytes, whatever the path: given a file name, torch.save names the zip's inner folder
    after it (here the random temp name), so it writes to an open file, whose folder is always 'archive'."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def load_member(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A saved member, ready for inference; never unpickles arbitrary objects."""
    state = torch.load(path, map_location=device, weights_only=True)
    model = nets.build(state["net"], len(state["classes"]), tuple(state["image_shape"]))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state
