"""Free space, checked before a stage writes outputs whose size it knows: on a full disk it fails at once, naming
the sizes, instead of after minutes of work or with a cache DVC could only partly fill (fmnist/cli/cached.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from fmnist.errors import StageError


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def require_space(directory: Path, nbytes: int, what: str, cache: Path | None = None) -> None:
    """Room for `nbytes` of `what` in `directory`, and for DVC's copy of them in `cache` (default: the project's
    .dvc/cache): twice the bytes where both are on one filesystem, as DVC copies rather than links by default."""
    target = _existing(directory)
    cache = _existing(cache or Path(os.environ.get("DVC_ROOT", ".")) / ".dvc" / "cache")
    same = os.stat(target).st_dev == os.stat(cache).st_dev
    needs = {target: 2 * nbytes} if same else {target: nbytes, cache: nbytes}
    for place, needed in needs.items():
        free = shutil.disk_usage(place).free
        if free < needed:
            raise StageError(
                f"not enough space for {what} in {place}: {needed / 2**20:.1f} MiB needed ({nbytes / 2**20:.1f} MiB "
                f"of outputs{', and as much again for the DVC cache on the same filesystem' if same else ''}), "
                f"{free / 2**20:.1f} MiB free. Nothing was written; free space and rerun the stage")
