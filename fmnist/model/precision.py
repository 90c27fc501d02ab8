"""The precision a net computes in, shared by training and inference: the served model carries this package."""
from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked: on CPUs with AVX-512 BF16/AMX and on GPUs it is the fast path."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
