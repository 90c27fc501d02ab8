"""Data-parallel training across processes with PyTorch's own engine, inside the workers torchrun started
(fmnist.training.launch): each learns its rank from the environment torchrun sets and joins the process group.
Gloo on the CPU, NCCL on CUDA. Started by hand with `torchrun --nnodes ... -m stages.train`, the same code runs on
several machines."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fmnist.training.launch import die_with_parent, under_torchrun

log = logging.getLogger("fmnist.distributed")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; rank 0 alone writes files and talks to MLflow."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def quiet_other_ranks() -> None:
    """Progress and INFO logs from rank 0 only: the other ranks say the same, or nothing new."""
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("fmnist").setLevel(logging.WARNING)


def threads_per_process(threads: int, processes: int) -> int:
    """train.threads split between the processes on this machine (0 = every core this process may use)."""
    total = threads or len(os.sched_getaffinity(0))
    return max(1, total // processes)


def join(device_type: str) -> World:
    """Join the process group torchrun prepared (gloo on the CPU, NCCL on CUDA); a single process joins nothing."""
    if not under_torchrun():
        return World()
    die_with_parent()  # the torchrun agent
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, device_id=torch.device("cuda", world.local_rank)
                                if device_type == "cuda" else None)
    return world


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(world: World, *values: torch.Tensor) -> None:
    """Each tensor summed over all processes, in place."""
    if world.distributed:
        for value in values:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)


def share_buffers(world: World, module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every process: each process updates its own from its
    own shard of the batch, so without this the ranks would validate, and choose the best epoch, with different
    models."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def from_main(world: World, value: object) -> object:
    """Rank 0's `value` on every process (a small picklable object: a run id, a URI)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

