"""Fetch each IDX file from the first mirror (a directory or an HTTP URL) that serves it intact. HTTP retries and
their backoff are urllib3's Retry; a connection that drops mid-file resumes with a Range request. Bounded: the
file's own bytes only (no Content-Encoding decoded on the fly), at most the bytes its counts allow, within a
deadline per file."""
from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import urllib3
from tqdm import tqdm
from urllib3.exceptions import HTTPError, MaxRetryError, ProtocolError
from urllib3.util import Retry, Timeout

from fmnist.data import idx
from fmnist.data.checks import MANIFEST, VerifyError, check_checksums, dataset_files, wire_bound
from fmnist.errors import StageError
from fmnist.files import atomic_dir, write_json
from fmnist.params import DatasetFile, DatasetFiles, Download, Mirror

log = logging.getLogger("fmnist.download")
CHUNK = 1 << 16
RETRIABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(StageError):
    """A mirror could not serve a file."""


def is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def netrc_headers(url: str) -> dict[str, str]:
    """Basic-auth headers for `url`'s host from ~/.netrc (or $NETRC), the way curl and pip find a mirror's
    credentials; none when the file or the host's entry is missing. Never from params.yaml, which is committed."""
    host = urlparse(url).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not host or not path.is_file():
        return {}
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise DownloadError(f"cannot read {path}: {exc}") from None
    if entry is None:
        return {}
    login, _account, password = entry
    return urllib3.make_headers(basic_auth=f"{login}:{password or ''}")


def retry_policy(cfg: Download) -> Retry:
    """cfg.retries attempts in all per URL, whatever fails (connecting, reading, a retriable status, a connection
    dropped mid-file), with waits of backoff_s x 2^n between them (urllib3 makes the first retry at once)."""
    return Retry(total=cfg.retries - 1, backoff_factor=cfg.backoff_s, status_forcelist=RETRIABLE_STATUS,
                 allowed_methods=frozenset({"GET"}), raise_on_status=False, respect_retry_after_header=True)


def _gave_up(error: BaseException, cfg: Download) -> DownloadError:
    reason = error.reason if isinstance(error, MaxRetryError) and error.reason else error
    return DownloadError(f"{type(reason).__name__}: {reason} (gave up after {cfg.retries} attempts)")


def fetch_http(url: str, dest: Path, partial_dir: Path, cfg: Download, max_bytes: int,
               pool: urllib3.PoolManager | None = None) -> None:
    """Stream `url` to `dest` with timeouts, retries and resume of partial files, refusing more than `max_bytes`
    or more than cfg.deadline_s in all. The partial file lives outside DVC's outputs, so a rerun after an
    interruption resumes too."""
    pool = pool or urllib3.PoolManager()
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.part"
    retry = retry_policy(cfg)
    timeout = Timeout(connect=cfg.timeout_s, read=cfg.timeout_s)
    deadline = time.monotonic() + cfg.deadline_s
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        # identity: the bytes as stored, whose MD5 is checked, never a transfer encoding decoded on the fly
        headers = {**netrc_headers(url), "Accept-Encoding": "identity",
                   **({"Range": f"bytes={have}-"} if have else {})}
        try:
            response = pool.request("GET", url, headers=headers, retries=retry, timeout=timeout,
                                    preload_content=False, decode_content=False)
        except HTTPError as exc:  # connection refused, timed out, ... on every attempt
            raise _gave_up(exc, cfg) from None
        retry = response.retries or retry
        try:
            if _receive(response, url, partial, have, max_bytes, deadline, cfg):
                shutil.move(partial, dest)
                return
        except HTTPError as exc:  # the connection dropped mid-file: the next attempt resumes where it stopped
            try:
                retry = retry.increment("GET", url, error=exc)
            except MaxRetryError as gave_up:
                raise _gave_up(gave_up, cfg) from None
            log.warning("%s: %s; resuming (attempt %d/%d)", url, exc, len(retry.history) + 1, cfg.retries)
            retry.sleep()
        except DownloadError:
            partial.unlink(missing_ok=True)  # refused, not interrupted: nothing to resume
            raise
        finally:
            response.release_conn()


def _receive(response: urllib3.BaseHTTPResponse, url: str, partial: Path, have: int, max_bytes: int,
             deadline: float, cfg: Download) -> bool:
    """Append the response body to `partial` (or start it over); True once the file is complete."""
    if response.status == 416 and have:
        total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
        if total and int(total.group(1)) == have:
            return True  # the previous attempt had already received every byte
        partial.unlink()
        raise ProtocolError(f"server refused to resume at byte {have}; starting over")
    if response.status >= 400:
        retried = " (gave up after retrying)" if response.status in RETRIABLE_STATUS else ""
        raise DownloadError(f"HTTP {response.status} {response.reason}{retried}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise DownloadError(f"served with Content-Encoding: {encoding}; expected the file's own bytes (identity)")
    resumed = response.status == 206
    start = have if resumed else 0
    length = response.headers.get("Content-Length")
    total = start + int(length) if length and length.isdigit() else None
    if total is not None and total > max_bytes:
        raise DownloadError(f"{total} bytes announced, more than the {max_bytes} this file can take")
    with open(partial, "ab" if resumed else "wb") as out, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=Path(urlparse(url).path).name,
        disable=None, leave=False,
    ) as bar:
        received = start
        # read1: whatever has arrived, so the deadline is checked while a mirror trickles
        while chunk := response.read1(CHUNK, decode_content=False):
            received += len(chunk)
            if received > max_bytes:
                raise DownloadError(f"more than the {max_bytes} bytes this file can take; stopped there")
            if time.monotonic() > deadline:
                raise DownloadError(f"not complete after download.deadline_s={cfg.deadline_s:g} s "
                                    f"({received} bytes received)")
            out.write(chunk)
            bar.update(len(chunk))
    return True


def fetch(mirror: Mirror, name: str, dest: Path, partial_dir: Path, cfg: Download, max_bytes: int,
          pool: urllib3.PoolManager | None = None) -> str:
    """Copy or download one file from one mirror into `dest`; returns the source it came from."""
    if is_url(mirror.location):
        url = f"{mirror.location.rstrip('/')}/{name}"
        fetch_http(url, dest, partial_dir, cfg, max_bytes, pool)
        return url
    path = Path(urlparse(mirror.location).path if mirror.location.startswith("file:") else mirror.location)
    source = path.expanduser() / name
    try:
        size = source.stat().st_size
        if size > max_bytes:
            raise DownloadError(f"{source}: {size} bytes, more than the {max_bytes} this file can take")
        shutil.copyfile(source, dest)
    except OSError as exc:
        raise DownloadError(exc.strerror or str(exc)) from None
    return str(source)


def download_file(spec: DatasetFile, mirrors: list[Mirror], decoded: int, dest: Path, partial_dir: Path,
                  cfg: Download, pool: urllib3.PoolManager | None = None) -> tuple[dict, list[str]]:
    """Try each mirror in order until one serves a file that passes its checksums and decodes to at most
    `decoded` bytes. Returns the manifest entry and the failures of the mirrors tried before it."""
    tried = []
    for mirror in mirrors:
        try:
            source = fetch(mirror, spec.name, dest, partial_dir, cfg, wire_bound(decoded), pool)
            _, checks = check_checksums(dest, spec, mirror.original_gz, decoded)
        except (DownloadError, VerifyError, idx.IdxError) as exc:
            tried.append(f"{mirror.location}: {exc}")
            dest.unlink(missing_ok=True)
            continue
        log.info("%s <- %s", spec.name, source)
        return {"file": spec.name, "source": source, "original_gz": mirror.original_gz, **checks}, tried
    raise DownloadError(
        f"no mirror could provide {spec.name}:\n  " + "\n  ".join(tried) + "\n"
        "To fix: on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` (files in "
        "/usr/share/datasets/fashion-mnist), or add a directory or URL holding the file to dataset.mirrors "
        "in params.yaml."
    )


def download(files: DatasetFiles, mirrors: list[Mirror], bounds: dict[str, int], cfg: Download, out_dir: Path,
             partial_dir: Path) -> tuple[dict, list[str]]:
    """Fetch all four files into `out_dir` (replaced whole, atomically), each from the first mirror that serves it
    intact and no larger than `bounds` (checks.decoded_bounds) allows. Returns the manifest (deterministic, so DVC
    sees unchanged data as unchanged) and the mirror failures."""
    manifest, failures = {}, []
    pool = urllib3.PoolManager()
    with atomic_dir(out_dir) as tmp:
        for role, spec in dataset_files(files):
            manifest[role], failed = download_file(spec, mirrors, bounds[role], tmp / spec.name, partial_dir, cfg,
                                                   pool)
            failures.extend(failed)
        write_json(tmp / MANIFEST, manifest)
    return manifest, failures
