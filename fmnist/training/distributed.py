"""Data-parallel training across processes with PyTorch's own engine: the stage relaunches itself under
torchrun (torch.distributed.run) when train.processes > 1, and each worker learns its rank from the environment
torchrun sets. Gloo on the CPU, NCCL on CUDA. Started by hand with `torchrun --nnodes ... -m stages.train`, the
same code runs on several machines."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fmnist.errors import StageError

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


def under_torchrun() -> bool:
    """True in a worker that torchrun (or another elastic launcher) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def threads_per_process(threads: int, processes: int) -> int:
    """train.threads split between the processes on this machine (0 = every core this process may use)."""
    total = threads or len(os.sched_getaffinity(0))
    return max(1, total // processes)


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent dies. torchrun starts each worker in a session of its own,
    so a SIGKILL of `dvc repro`'s process group would otherwise leave the workers training, and writing outputs,
    after the stage is gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def relaunch(processes: int, module: str, argv: list[str]) -> None:
    """Run `python -m module argv` as `processes` workers on this machine under torchrun and wait for them.
    A worker that fails (an exception, a kill, running out of memory) makes torchrun stop the others; that ends
    here as a StageError. Only rank 0 writes, and only by renaming complete files, so nothing half-written stays."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={processes}", "--max-restarts=0", "-m", module, *argv]
    log.info("starting %d training processes under torchrun", processes)
    # OMP_NUM_THREADS would be set to 1 by torchrun with a warning; the workers set their own thread count.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # torchrun gets a session of its own, so a signal reaches it once, from here, and it stops its workers with
    # it: they unwind and end their MLflow run FAILED. A second signal kills at once (the workers die with it).
    launcher = subprocess.Popen(command, env=env, preexec_fn=die_with_parent, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        launcher.send_signal(signum if not received else signal.SIGKILL)
        received.append(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = launcher.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise StageError(f"stopped by {signal.Signals(received[0]).name}; the training processes were stopped "
                         "with it. No model or metrics were written; the last per-epoch checkpoint is kept, so "
                         "rerunning the stage resumes from it")
    if returncode != 0:
        raise StageError(f"a training process failed (torchrun exit code {returncode}; its error is above). "
                         "No model or metrics were written; the last per-epoch checkpoint is kept, so rerunning "
                         "the stage resumes from it")


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
