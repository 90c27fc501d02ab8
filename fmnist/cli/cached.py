"""Fail unless every output this dvc.lock names is in the DVC cache, naming those that are not and the free space.

    dvc repro && fmnist cached     # what `make repro` runs

On a full disk DVC fails to copy outputs into its cache, with an error per file; it has been seen to exit 0
all the same, and a stage restored or committed by other means can leave the cache short too. Then the workspace
looks done, `dvc status` says "not in cache", and a push leaves those outputs out. This check does not rely on
DVC's exit code; `fmnist share push` runs it first.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fmnist.errors import StageError


class NotCachedError(StageError):
    """Outputs dvc.lock names are missing from the DVC cache."""


def missing_from_cache(repo) -> dict[str, str]:
    """{md5: output path} of every cached output dvc.lock records (each file of a directory output too) that the
    local DVC cache lacks."""
    cache = repo.cache.local
    missing = {}
    for stage in repo.index.stages:
        for out in stage.outs:
            md5 = out.hash_info.value if out.hash_info else None
            if not out.use_cache or not md5:
                continue
            if not cache.exists(md5):
                missing[md5] = out.def_path
            elif md5.endswith(".dir"):
                listing = json.loads(Path(cache.oid_to_path(md5)).read_text())
                missing.update({item["md5"]: f"{out.def_path}/{item['relpath']}" for item in listing
                                if not cache.exists(item["md5"])})
    return missing


def require_cached(repo) -> None:
    missing = missing_from_cache(repo)
    if not missing:
        return
    cache_dir = Path(repo.cache.local_cache_dir)
    usage = shutil.disk_usage(cache_dir if cache_dir.exists() else repo.root_dir)
    paths = sorted(set(missing.values()))
    raise NotCachedError(
        f"{len(paths)} outputs dvc.lock names are not in the DVC cache {cache_dir} ({usage.free / 2**20:.1f} MiB "
        f"free of {usage.total / 2**20:.1f} MiB): {', '.join(paths[:8])}{' ...' if len(paths) > 8 else ''}\n"
        "A full disk keeps outputs out of the cache ('No space left on device' in `dvc repro`'s output). Free "
        "space, then `dvc commit -f` caches the outputs the workspace holds; a push now would leave them out.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no arguments: the project is the current directory's


def run(args: argparse.Namespace) -> None:
    from dvc.repo import Repo

    del args
    with Repo() as repo:
        require_cached(repo)
    print("every output dvc.lock names is in the DVC cache")
