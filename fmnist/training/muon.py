"""Muon for convolution filters (Jordan et al., 2024; airbench94_muon): the momentum of each filter bank's gradient,
viewed as an (out, in*k*k) matrix, is replaced by the nearest semi-orthogonal matrix (Newton-Schulz iterations),
and the bank's weights are renormalized every step, which a BatchNorm after the conv makes harmless. The other
parameters (BatchNorm, the linear head) take SGD-Nesterov steps in the same optimizer."""
from __future__ import annotations

import torch


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
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                if group["muon"]:
                    momentum = group["muon_momentum"]
                    buf.mul_(momentum).add_(g)
                    g = g.add(buf, alpha=momentum)
                    p.mul_(len(p) ** 0.5 / p.norm())
                    p.add_(orthogonalize(g.reshape(len(g), -1)).view(g.shape), alpha=-lr)
                else:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    buf.mul_(group["momentum"]).add_(g)
                    p.add_(g.add(buf, alpha=group["momentum"]), alpha=-lr)
