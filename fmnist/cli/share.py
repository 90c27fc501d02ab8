"""Share results through the DVC remote: data, models and the run-cache of this commit's stages, complete.

    fmnist share push     # after `dvc repro`: what dvc.lock names, and its stages' run-cache entries
    fmnist share pull     # on a teammate's clone: the same, then `dvc repro` is a no-op

`dvc push --run-cache` sends a run-cache entry but not the `cache: false` outputs it records (every stage here
writes a metrics file that way, for git), so on another clone DVC cannot restore the stage from the run-cache and
reruns it (see treeverse/dvc#8738). This sends and fetches those objects too, and only the entries of the stages
this dvc.lock names (not every pipeline anyone ever pushed); the rest is DVC's own push, fetch and checkout.
What comes from the remote is checked: the remote must verify the objects it downloads (`verify = true`: a
tampered object fails the pull), and every md5 a run-cache entry names must be one (32 hex digits, optionally
`.dir`) before it becomes a cache path. A pull checks out only after everything arrived and passed, so a failed
one leaves the workspace as it was.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from fmnist.cli.cached import MD5, checked_md5, directory_files, lock_objects, lock_outputs, require_cached
from fmnist.errors import StageError

log = logging.getLogger("fmnist.share")
SHA256 = re.compile(r"[0-9a-f]{64}")  # a run-cache key or entry name


class RemoteError(StageError):
    """The DVC remote cannot be reached, refuses access, or lacks what was asked for."""


def entry_objects(entry: Path) -> set[str]:
    """The md5 of every output (cached or not) that one run-cache entry records, each checked."""
    try:
        lock = yaml.safe_load(entry.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RemoteError(f"run-cache entry {entry.name}: not YAML ({exc})") from None
    outs = lock.get("outs", []) if isinstance(lock, dict) else None
    if not isinstance(outs, list):
        raise RemoteError(f"run-cache entry {entry.name}: no list of outs")
    return {checked_md5(out.get("md5"), f"run-cache entry {entry.name}, output {out.get('path')!r}")
            for out in outs if isinstance(out, dict) and "md5" in out}


def advice(cause: str) -> str:
    """What to do about a failed transfer, from the error's text."""
    lowered = cause.lower()
    if any(word in lowered for word in ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid",
                                        "signaturedoesnotmatch", "credentials", "403")):
        return "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the remote's credentialpath) for this bucket"
    if any(word in lowered for word in ("connect", "timeout", "timed out", "unreachable", "refused")):
        return "start the server, or fix the remote's url/endpointurl (`dvc remote list`, `dvc remote modify`)"
    if any(word in lowered for word in ("missing", "nosuchbucket", "not found", "does not exist")):
        return ("the remote lacks what this commit names: whoever ran the pipeline runs `fmnist share push` "
                "from their clone (or create the bucket)")
    return "see the cause above"


class Remote:
    """The remote as DVC configures it, and the run-cache entries (with the objects they record) that this module
    moves beside DVC's own commands."""

    def __init__(self, name: str | None):
        from dvc.repo import Repo

        self.repo = Repo(".")
        try:
            found = self.repo.cloud.get_remote(name)
        except Exception as exc:  # no remote configured: DVC's message says how to add one
            raise RemoteError(f"no DVC remote to use: {exc}") from None
        self.name, self.fs, self.path = found.name, found.fs, found.path
        self.config = self.repo.config["remote"].get(found.name, {})
        endpoint = self.config.get("endpointurl")
        self.url = found.fs.unstrip_protocol(found.path) + (f" (endpoint {endpoint})" if endpoint else "")
        self.local_runs = Path(self.repo.stage_cache.cache_dir)

    def fail(self, action: str, cause: str) -> RemoteError:
        return RemoteError(f"{action} DVC remote {self.url} failed: {cause.strip()}\nTo fix: {advice(cause)}; "
                           "nothing in the workspace was changed")

    def probe(self, action: str) -> None:
        """One cheap request first, so that a down, denying or missing remote fails with one clear message."""
        try:
            self.fs.exists(self.fs.join(self.path, "files"))
        except Exception as exc:  # botocore, aiohttp, fsspec: many types for one cause
            raise self.fail(action, f"{type(exc).__name__}: {exc}") from None

    def require_verify(self) -> None:
        """Without `verify`, DVC checks out a downloaded object without hashing it: a tampered object would
        pass for the one dvc.lock names."""
        if str(self.config.get("verify", "false")).lower() not in ("true", "1"):
            raise RemoteError(f"DVC remote {self.name} does not verify what it downloads; run "
                              f"`dvc remote modify {self.name} verify true` and commit .dvc/config (a pull then "
                              "hashes every object it fetches and refuses one that does not match)")

    def dvc(self, action: str, *args: str) -> None:
        """A DVC command on this remote; its own messages go to the terminal."""
        done = subprocess.run([sys.executable, "-m", "dvc", *args, "-r", self.name], stderr=subprocess.PIPE,
                              text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise self.fail(action, self.name_objects(lines[-1] if lines else
                                                      f"`dvc {' '.join(args)}` exited {done.returncode}"))

    def name_objects(self, message: str) -> str:
        """`message` with each md5 of a dvc.lock output followed by that output's path."""
        paths = lock_outputs(self.repo)
        return MD5.sub(lambda m: f"{m[0]} ({paths[m[0]]})" if m[0] in paths else m[0], message)

    def stage_keys(self) -> dict[str, str]:
        """{stage: run-cache key} for the stages dvc.lock records, computed as DVC does when it saves an entry."""
        from dvc.stage.cache import _get_cache_hash
        from dvc.stage.serialize import to_single_stage_lockfile

        return {stage.addressing: _get_cache_hash(to_single_stage_lockfile(stage), key=True)
                for stage in self.repo.index.stages if stage.cmd and stage.deps and stage.outs}

    def remote_runs(self, key: str) -> str:
        return self.fs.join(self.path, "runs", key[:2], key)

    def with_directory_entries(self, md5s: set[str]) -> set[str]:
        """`md5s` plus the files of every directory object among them that the local cache holds."""
        return md5s.union(*(directory_files(self.repo, md5) for md5 in md5s))

    def check_arrived(self, named: dict[str, str]) -> None:
        """Every object in the local cache. DVC reports an object fetched even when the remote lacks it (a
        warning) or, with `verify`, when its bytes did not match its md5 (it deletes it, silently): so each one
        absent here is missing there, or tampered with or corrupted there."""
        absent = {md5: path for md5, path in named.items() if not self.repo.cache.local.exists(md5)}
        if not absent:
            return
        there = {md5 for md5 in absent if self.fs.exists(self.remote_object(md5))}
        problems = [f"{path} ({md5}): " + ("its bytes there do not match its md5 (tampered with or corrupted); "
                                           "discarded" if md5 in there else "missing there")
                    for md5, path in sorted(absent.items(), key=lambda item: item[1])]
        raise self.fail("pull from", f"{len(absent)} objects did not arrive intact: " + "; ".join(problems[:5]))

    def remote_object(self, md5: str) -> str:
        return self.fs.join(self.path, "files", "md5", md5[:2], md5[2:])

    def transfer_objects(self, action: str, md5s: set[str], push: bool) -> int:
        from dvc_data.hashfile.hash_info import HashInfo

        objects = {HashInfo("md5", m) for m in md5s}
        result = (self.repo.cloud.push if push else self.repo.cloud.pull)(objects, remote=self.name)
        if result.failed:
            failed = ", ".join(sorted(str(h.value) for h in result.failed)[:5])
            raise self.fail(action, self.name_objects(f"{len(result.failed)} objects were not transferred: "
                                                      f"{failed}"))
        return len(result.transferred)

    def push_run_cache(self) -> int:
        """This dvc.lock's stages' entries (those the local run-cache holds) and every object they record."""
        sent, md5s = 0, set()
        for key in self.stage_keys().values():
            for entry in sorted((self.local_runs / key[:2] / key).glob("*")):
                md5s |= entry_objects(entry)
                try:
                    self.fs.put_file(str(entry), self.fs.join(self.remote_runs(key), entry.name))
                except Exception as exc:  # botocore, aiohttp, fsspec: many types for one cause
                    raise self.fail("push to", f"run-cache entry {key}/{entry.name}: {type(exc).__name__}: "
                                               f"{exc}") from None
                sent += 1
        local = {m for m in self.with_directory_entries(md5s) if self.repo.cache.local.exists(m)}
        self.transfer_objects("push to", local, push=True)
        return sent

    def fetch_run_cache(self, staging: Path) -> tuple[dict[Path, str], set[str]]:
        """This dvc.lock's stages' entries from the remote into `staging`, each name and md5 checked:
        ({staged entry: its key}, the md5s they record)."""
        staged, md5s = {}, set()
        for stage, key in self.stage_keys().items():
            folder = self.remote_runs(key)
            try:
                names = [self.fs.name(path) for path in self.fs.find(folder)] if self.fs.exists(folder) else []
                for name in names:
                    if not SHA256.fullmatch(name):
                        raise RemoteError(f"run-cache of stage {stage}: entry name {name!r} is not a sha256; "
                                          "refusing it, nothing in the workspace or the cache was changed")
                    target = staging / key / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(self.fs.join(folder, name), str(target))
                    md5s |= entry_objects(target)  # refused here, before anything reaches the cache
                    staged[target] = key
            except RemoteError:
                raise
            except Exception as exc:  # botocore, aiohttp, fsspec: many types for one cause
                raise self.fail("pull from", f"run-cache of stage {stage}: {type(exc).__name__}: {exc}") from None
        return staged, md5s

    def install(self, staged: dict[Path, str]) -> None:
        """Staged entries into the local run-cache, each renamed into place whole."""
        for entry, key in staged.items():
            target = self.local_runs / key[:2] / key / entry.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)


def push(remote: str | None = None) -> None:
    """What the workspace's dvc.lock names, its stages' run-cache entries, and the objects those record."""
    target = Remote(remote)
    require_cached(target.repo)  # what a full disk kept out of the cache would be missing on the remote
    target.probe("push to")
    target.dvc("push to", "push")
    sent = target.push_run_cache()
    log.info("pushed to %s, with %d run-cache entries of this dvc.lock's stages and their outputs", target.url, sent)


def pull(remote: str | None = None) -> None:
    """Fetch what dvc.lock names, its stages' run-cache entries and the objects they record, all checked; then
    check out. Any failure stops before the checkout, with the workspace and the run-cache as they were."""
    source = Remote(remote)
    source.require_verify()
    source.probe("pull from")
    source.dvc("pull from", "fetch")
    # `dvc fetch` passes over objects the remote lacks; checkout would then fail half-way
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "--json", "-r", source.name],
                            capture_output=True, text=True, check=False)
    if status.returncode:
        raise source.fail("pull from", f"`dvc status --cloud` failed: {status.stderr.strip()[-500:]}")
    missing = sorted(path for path, state in json.loads(status.stdout or "{}").items() if state == "missing")
    if missing:
        raise source.fail("pull from", f"{len(missing)} outputs this commit's dvc.lock names are missing "
                          "there: " + ", ".join(missing))
    source.check_arrived(lock_objects(source.repo))
    with tempfile.TemporaryDirectory(dir=source.local_runs.parent) as staging:
        staged, md5s = source.fetch_run_cache(Path(staging))
        # the directory objects first: only once they are here do we know which files they list
        source.transfer_objects("pull from", md5s, push=False)
        recorded = source.with_directory_entries(md5s)
        source.transfer_objects("pull from", recorded - md5s, push=False)
        source.check_arrived({md5: "an output a run-cache entry records" for md5 in recorded})
        source.install(staged)
    done = subprocess.run([sys.executable, "-m", "dvc", "checkout"], check=False)
    if done.returncode:
        raise StageError("dvc checkout failed after a complete fetch; see its message above")
    log.info("pulled from %s, with %d run-cache entries of this dvc.lock's stages and their outputs", source.url,
             len(staged))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["push", "pull"],
                        help="push: after `dvc repro`, send it all; pull: fetch it all, then check out")
    parser.add_argument("-r", "--remote", help="a remote named in .dvc/config (default: the default remote)")


def run(args: argparse.Namespace) -> None:
    # Transfer errors are reported once, by this module, not as a traceback per object.
    for noisy in ("aiobotocore", "dvc_objects", "dvc_data", "dvc"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    (push if args.action == "push" else pull)(args.remote)
