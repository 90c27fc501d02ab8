"""Share results through the DVC remote: data, models and the run-cache, complete.

    fmnist share push     # after `dvc repro`: what dvc.lock names, and every run-cache entry
    fmnist share pull     # on a teammate's clone: the same, then `dvc repro` is a no-op

`dvc push --run-cache` sends a run-cache entry but not the `cache: false` outputs it records (every stage here
writes a metrics file that way, for git), so on another clone DVC cannot restore the stage from the run-cache and
reruns it (see treeverse/dvc#8738). This sends and fetches those objects too; the rest is DVC's own push, fetch
and checkout. A pull checks out only after everything arrived, so a failed one leaves the workspace as it was.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import yaml

from fmnist.errors import StageError

log = logging.getLogger("fmnist.share")


class RemoteError(StageError):
    """The DVC remote cannot be reached, refuses access, or lacks what was asked for."""


def run_cache_objects(runs_dir: Path) -> set[str]:
    """The md5 of every output (cached or not) that the local run-cache entries record."""
    md5s = set()
    for entry in runs_dir.glob("*/*/*"):
        lock = yaml.safe_load(entry.read_text()) or {}
        md5s.update(out["md5"] for out in lock.get("outs", []) if "md5" in out)
    return md5s


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
    """The remote as DVC configures it, and the objects this module moves beside DVC's own commands."""

    def __init__(self, name: str | None):
        from dvc.repo import Repo

        self.repo = Repo(".")
        try:
            found = self.repo.cloud.get_remote(name)
        except Exception as exc:  # no remote configured: DVC's message says how to add one
            raise RemoteError(f"no DVC remote to use: {exc}") from None
        self.name, self.fs, self.path = found.name, found.fs, found.path
        endpoint = self.repo.config["remote"].get(found.name, {}).get("endpointurl")
        self.url = found.fs.unstrip_protocol(found.path) + (f" (endpoint {endpoint})" if endpoint else "")

    def fail(self, action: str, cause: str) -> RemoteError:
        return RemoteError(f"{action} DVC remote {self.url} failed: {cause.strip()}\nTo fix: {advice(cause)}; "
                           "nothing in the workspace was changed")

    def probe(self, action: str) -> None:
        """One cheap request first, so that a down, denying or missing remote fails with one clear message."""
        try:
            self.fs.exists(self.fs.join(self.path, "files"))
        except Exception as exc:  # botocore, aiohttp, fsspec: many types for one cause
            raise self.fail(action, f"{type(exc).__name__}: {exc}") from None

    def dvc(self, action: str, *args: str) -> None:
        """A DVC command on this remote; its own messages go to the terminal."""
        done = subprocess.run([sys.executable, "-m", "dvc", *args, "-r", self.name], stderr=subprocess.PIPE,
                              text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise self.fail(action, lines[-1] if lines else f"`dvc {' '.join(args)}` exited {done.returncode}")

    def with_directory_entries(self, md5s: set[str]) -> set[str]:
        """`md5s` plus the files of every directory object among them that the local cache holds (a
        directory's .dir object lists them; DVC's transfer of a bare .dir object does not bring them)."""
        cache = self.repo.cache.local
        entries = set()
        for md5 in md5s:
            if md5.endswith(".dir") and cache.exists(md5):
                entries.update(entry["md5"] for entry in json.loads(Path(cache.oid_to_path(md5)).read_text()))
        return md5s | entries

    def push_run_cache_outputs(self) -> int:
        from dvc_data.hashfile.hash_info import HashInfo

        md5s = self.with_directory_entries(run_cache_objects(Path(self.repo.stage_cache.cache_dir)))
        local = {m for m in md5s if self.repo.cache.local.exists(m)}
        result = self.repo.cloud.push({HashInfo("md5", m) for m in local}, remote=self.name)
        if result.failed:
            raise self.fail("push to", f"{len(result.failed)} run-cache outputs were not sent")
        return len(result.transferred)

    def pull_run_cache_outputs(self) -> int:
        from dvc_data.hashfile.hash_info import HashInfo

        md5s = run_cache_objects(Path(self.repo.stage_cache.cache_dir))
        # the directory objects first: only once they are here do we know which files they list
        first = self.repo.cloud.pull({HashInfo("md5", m) for m in md5s}, remote=self.name)
        files = self.with_directory_entries(md5s) - md5s
        second = self.repo.cloud.pull({HashInfo("md5", m) for m in files}, remote=self.name)
        return len(first.transferred) + len(second.transferred)


def push(remote: str | None = None) -> None:
    """What the workspace's dvc.lock names, the run-cache, and the run-cache's uncached outputs."""
    target = Remote(remote)
    target.probe("push to")
    target.dvc("push to", "push", "--run-cache")
    sent = target.push_run_cache_outputs()
    log.info("pushed to %s, with %d run-cache outputs DVC does not send itself", target.url, sent)


def pull(remote: str | None = None) -> None:
    """Fetch what dvc.lock names, the run-cache and the outputs its entries record; then check out."""
    source = Remote(remote)
    source.probe("pull from")
    source.dvc("pull from", "fetch", "--run-cache")
    got = source.pull_run_cache_outputs()
    # `dvc fetch` passes over objects the remote lacks; checkout would then fail half-way
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud", "--json", "-r", source.name],
                            capture_output=True, text=True)
    missing = sorted(path for path, state in json.loads(status.stdout or "{}").items() if state == "missing")
    if missing:
        raise source.fail("pull from", f"{len(missing)} outputs this commit's dvc.lock names are missing there: "
                          + ", ".join(missing))
    done = subprocess.run([sys.executable, "-m", "dvc", "checkout"], check=False)
    if done.returncode:
        raise StageError("dvc checkout failed after a complete fetch; see its message above")
    log.info("pulled from %s, with %d run-cache outputs DVC does not fetch itself", source.url, got)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["push", "pull"],
                        help="push: after `dvc repro`, send it all; pull: fetch it all, then check out")
    parser.add_argument("-r", "--remote", help="a remote named in .dvc/config (default: the default remote)")


def run(args: argparse.Namespace) -> None:
    # Transfer errors are reported once, by this module, not as a traceback per object.
    for noisy in ("aiobotocore", "dvc_objects", "dvc_data", "dvc"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    (push if args.action == "push" else pull)(args.remote)
