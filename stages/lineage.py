"""What ties a stage's run to its pipeline: which `dvc repro` launched it, and which outputs DVC records for it.

No MLflow here; tracking.py turns these facts into parent runs and lineage tags.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import yaml

from stages.common import digest

LOCK_FILE = "dvc.lock"


def _process(pid: int) -> tuple[int, str, list[str]] | None:
    """(parent pid, start time in clock ticks, argv) of a Linux process, or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after it do not.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], [a.decode(errors="replace") for a in argv if a]


def _is_dvc(argv: list[str]) -> bool:
    """`dvc ...`, `python .../bin/dvc ...` or `python -m dvc ...`."""
    names = [Path(a).name for a in argv[:3]]
    return bool(names) and ("dvc" == names[0] or names[0].startswith("python") and "dvc" in names[1:3])


def launching_dvc() -> str | None:
    """'pid:start' of the nearest `dvc` ancestor process: one id per `dvc repro` / queued experiment, shared by
    all the stages it runs (DVC itself exports no such id). None when not run by DVC or not on Linux."""
    pid = os.getppid()
    for _ in range(12):
        info = _process(pid)
        if info is None or pid <= 1:
            return None
        parent, started, argv = info
        if _is_dvc(argv):
            return f"{pid}:{started}"
        pid = parent
    return None


def pipeline_key() -> str:
    """Same for every stage of one pipeline execution, different for the next one (or for a stage run by hand).
    Not the commit or params: a commit made while `dvc repro` runs must not split its pipeline in two."""
    return digest({"invocation": launching_dvc() or f"manual:{os.getpid()}",
                   "experiment": os.environ.get("DVC_EXP_NAME", "")})


def lock_outputs(lock_path: str | Path = LOCK_FILE) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock (metrics and plots included: DVC lists them as outs)."""
    path = Path(lock_path)
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    return {stage: {out["path"]: out["md5"] for out in entry.get("outs", []) if "md5" in out}
            for stage, entry in (lock.get("stages") or {}).items()}


def output_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    """DVC's own md5 of each output (a directory gets DVC's '<md5>.dir' tree hash), as dvc.lock will record it."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    odb = HashFileDB(MemoryFileSystem(), "/lineage")  # dry run: hashes only, nothing stored
    hashes = {}
    for path in paths:
        if Path(path).exists():
            _, _, obj = build(odb, str(path), LocalFileSystem(), "md5", dry_run=True)
            hashes[Path(path).as_posix()] = obj.hash_info.value
    return hashes


def stage_outputs(stage: str) -> list[str]:
    """The outs (metrics and plots included) dvc.yaml declares for `stage`, e.g. 'train@m0'; [] outside a DVC
    project or for a name it does not know (a stage run by hand under another name)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            (found,) = repo.stage.collect(stage)
            return [out.def_path for out in found.outs]
    except (DvcException, ValueError):
        return []


def outputs_digest(outputs: dict[str, dict[str, str]]) -> str:
    """One digest of every stage's recorded outputs: the data-identity part of dvc.lock."""
    canonical = "\n".join(f"{stage} {path} {md5}" for stage in sorted(outputs)
                          for path, md5 in sorted(outputs[stage].items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


if __name__ == "__main__":
    import sys

    # The digest tracking.py tags pipeline runs with, for a given dvc.lock: `python -m stages.lineage dvc.lock`.
    print(outputs_digest(lock_outputs(sys.argv[1] if len(sys.argv) > 1 else LOCK_FILE)))
