"""Muon for convolution filters (Jordan et al., 2024; airbench94_muon): the momentum of each filter bank's gradient,
viewed as an (out, in*k*k) matrix, is replaced by the nearest semi-orthogonal matrix (Newton-Schulz iterations),
and the bank's weights are renormalized every step, which a BatchNorm after the conv makes harmless. The other
parameters (BatchNorm, the linear head) take torch.optim.SGD's Nesterov steps (its functional form) in the same
optimizer, so that one optimizer holds every group for the schedule and one state dict for resume checkpoints."""
from __future__ import annotations

import torch
from torch.optim.sgd import sgd


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T: the quintic Newton-Schulz iteration in bfloat16, as airbench runs it."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Groups with `muon: True` (conv filters) take Muon steps; the others SGD with Nesterov momentum and weight
    decay. Each group's `lr` is set by the schedule; `lr_scale` multiplies it for that group."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, muon_momentum: float):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0, "muon": False,
                                  "muon_momentum": muon_momentum, "lr_scale": 1.0})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                for p in params:
                    self._muon_step(p, group["lr"], group["muon_momentum"])
                continue
            # torch.optim.SGD's own update (Nesterov, no dampening), on this optimizer's state
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=True, maximize=False,
                foreach=False)
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer

    def _muon_step(self, p: torch.Tensor, lr: float, momentum: float) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(p.grad)
        g = p.grad.add(buf, alpha=momentum)
        p.mul_(len(p) ** 0.5 / p.norm())
        p.add_(orthogonalize(g.reshape(len(g), -1)).view(g.shape), alpha=-lr)
