"""What the ensemble's members compute just before their classifier heads: the points `visualize` embeds."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fmnist.model.ensemble import INFERENCE_BATCH, Ensemble, input_batches
from fmnist.model.precision import autocast


def _classifier_head(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return linears[-1]


@torch.no_grad()
def penultimate_features(ensemble: Ensemble, images: np.ndarray, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """(N, sum of members' feature sizes): each member's input to its last linear layer, concatenated, because
    the members' feature spaces are unrelated and averaging them would mix unrelated axes."""
    cpu = torch.device("cpu")
    per_member = []
    for model, state in zip(ensemble.members, ensemble.states):
        captured: list[torch.Tensor] = []
        hook = _classifier_head(model).register_forward_pre_hook(
            lambda _, inputs, into=captured: into.append(inputs[0].flatten(1).float()))
        try:
            for x in input_batches(images, state["mean"], state["std"], cpu, batch_size):
                with autocast(cpu, ensemble.precision):
                    model(x)
        finally:
            hook.remove()
        per_member.append(torch.cat(captured).numpy())
    return np.concatenate(per_member, axis=1)
