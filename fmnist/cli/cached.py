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
import re
import shutil
from pathlib import Path

from fmnist.errors import StageError


MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")


class NotCachedError(StageError):
    """Outputs dvc.lock names are missing from the DVC cache."""


class ObjectIdError(StageError):
    """Something that should name a DVC object (an md5) names anything else."""


def checked_md5(value: object, where: str) -> str:
    """`value` if it is an md5 DVC would write; anything else (a path, `../`, a URL) is refused."""
    if not isinstance(value, str) or not MD5.fullmatch(value):
        raise ObjectIdError(f"{where}: {value!r} is not an md5 (32 hex digits, optionally .dir); refusing it, "
                            "nothing in the workspace or the cache was changed")
    return value


def lock_outputs(repo, cached_only: bool = False) -> dict[str, str]:
    """{md5: output path} for each output the workspace's dvc.lock records (only those DVC caches, if asked)."""
    return {out.hash_info.value: out.def_path for stage in repo.index.stages for out in stage.outs
            if out.hash_info and out.hash_info.value and (out.use_cache or not cached_only)}


def directory_files(repo, md5: str) -> dict[str, str]:
    """{md5: relative path} of the files a directory object lists, each md5 checked; {} where `md5` is not a
    directory object or the local cache lacks it (DVC's transfer of a bare .dir object does not bring them)."""
    cache = repo.cache.local
    if not md5.endswith(".dir") or not cache.exists(md5):
        return {}
    listing = json.loads(Path(cache.oid_to_path(md5)).read_text())
    return {checked_md5(item.get("md5"), f"directory object {md5}"): item.get("relpath", "?") for item in listing}


def lock_objects(repo) -> dict[str, str]:
    """{md5: path} for every object the workspace's dvc.lock names: each cached output, and the files of each
    directory output whose listing is in the local cache."""
    named = lock_outputs(repo, cached_only=True)
    for md5, path in list(named.items()):
        named.update({file: f"{path}/{relpath}" for file, relpath in directory_files(repo, md5).items()
                      if file not in named})
    return named


def missing_from_cache(repo) -> dict[str, str]:
    """{md5: output path} of every cached output dvc.lock records (each file of a directory output too) that the
    local DVC cache lacks."""
    return {md5: path for md5, path in lock_objects(repo).items() if not repo.cache.local.exists(md5)}


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
