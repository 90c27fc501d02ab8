"""Where tensors compute: device choice and CPU threads."""
from __future__ import annotations

import logging
import os

import torch

from fmnist.errors import StageError

log = logging.getLogger("fmnist.device")


def pick_device(requested: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without a GPU is an error, never a silent CPU run."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise StageError(
            f"train.device is 'cuda' but no CUDA GPU is visible (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none: a CPU-only build'}). "
            "Set train.device: auto or cpu, or install a CUDA build of torch on a GPU machine."
        )
    device = torch.device("cuda" if requested == "cuda" or (requested == "auto" and available) else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log.info("device: %s (%s; train.device=%s)", device, name, requested)
    return device


def set_threads(threads: int) -> int:
    """Use `threads` CPU threads, or every core this process may run on (cgroups/affinity) when 0."""
    count = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(count)
    return count

