"""How a stage or a command runs: concise logging, and a known failure ends with its message, not a traceback."""
from __future__ import annotations

import logging
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
