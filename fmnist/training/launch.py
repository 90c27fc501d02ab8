"""Starting the training processes: the train stage relaunches itself under torchrun (torch.distributed.run)
when train.processes > 1 and waits for it. Nothing here imports torch at module level: the launching process
only waits, and importing torch and MLflow there would add seconds to every member for nothing."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys

from fmnist.errors import StageError

log = logging.getLogger("fmnist.distributed")


def under_torchrun() -> bool:
    """True in a worker that torchrun (or another elastic launcher) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


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
    command = [sys.executable, "-m", "fmnist.training.launch", "--standalone", "--nnodes=1",
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


def torchrun(argv: list[str]) -> int:
    """torchrun (torch.distributed.run) with `argv`; a failed worker ends it with one line naming the rank and
    how it ended, instead of torchrun's traceback and summary table (the worker logged its own error)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"torchrun: training process rank {rank} failed first ({how}); the others were stopped",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":  # relaunch() starts torchrun through this
    sys.exit(torchrun(sys.argv[1:]))
