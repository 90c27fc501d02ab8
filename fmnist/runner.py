"""How a stage or a command runs: concise logging, and a known failure ends with its message, not a traceback."""
from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import sys
from collections.abc import Callable

from fmnist.errors import StageError
from fmnist.params import ParamsError

log = logging.getLogger("fmnist")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a known failure ends with its message and exit code 1, not a traceback."""
    setup_logging()
    exit_without_collecting()
    try:
        main()
    except (StageError, ParamsError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    except OSError as exc:  # disk full, permissions, a vanished input: the path and the reason, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        log.error("cannot read or write%s: %s (nothing was left half-written: outputs are renamed into place "
                  "only when complete)", where, exc.strerror or exc)
        sys.exit(1)
    except Exception as exc:
        line = lost_peer(exc)
        if line is None:
            raise
        log.error("%s", line)
        sys.exit(1)


def exit_without_collecting() -> None:
    """At exit, freeze the garbage collector: the interpreter's final collections over the objects of ~2,400
    imported modules (torch, MLflow, scikit-learn) took 1.0-1.3 s of every stage's process after its work was done,
    1.8 s of each training process, against 0.15 s frozen (docs/results.md). Nothing is lost: objects are still
    released as the modules are torn down, and the operating system takes back the rest. Registered at most once,
    and only for exit, so in-process callers (tests) keep a running collector until their own exit."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


# What gloo and the c10d store say when the other end of a connection is gone (torch raises them as
# DistBackendError/DistNetworkError or, from some calls, a plain RuntimeError).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout",
              "connection refused", "Timed out waiting")


def lost_peer(exc: BaseException) -> str | None:
    """One line for a training process whose peer died (a kill, an out-of-memory, another rank's exception) in
    place of gloo's traceback, which names neither the rank that failed nor what to do; None for anything else.
    torchrun's summary, printed after, names the rank that failed first."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or "RANK" not in os.environ:  # not a worker of a distributed run
        return None
    dist_error = getattr(distributed, "DistError", RuntimeError)
    text = str(exc)
    if not (isinstance(exc, dist_error) or isinstance(exc, RuntimeError) and "gloo" in text.lower()) \
            or not any(sign.lower() in text.lower() for sign in _PEER_GONE):
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", "0"))
    peer = f"rank {1 - rank}" if world == 2 else "another rank"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    # gloo's '[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:34981. This is ...'
    reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0] or type(exc).__name__
    return f"training process rank {rank} of {world} stops: {peer} failed and left it alone ({reason[:200]})"
