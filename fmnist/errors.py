"""The failure a user can act on: its message says what is wrong and what to do, and it ends a stage or a command
with that message and exit code 1, not a traceback."""


class StageError(RuntimeError):
    """A failure the user can act on; fmnist.runner prints its message without a traceback."""
