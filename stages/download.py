"""download stage: fetch each IDX file from the first mirror (directory or HTTP URL) that serves it intact."""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import requests
from tqdm import tqdm

from stages import idx, tracking
from stages.common import StageError, atomic_dir, run_main, write_json
from stages.config import Dataset, DatasetFile, Download, Mirror, load_params
from stages.verify import MANIFEST, VerifyError, check_checksums

log = logging.getLogger("stages.download")
CHUNK = 1 << 16
RETRIABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(StageError):
    """A mirror could not serve a file."""


class _Retriable(Exception):
    """A transient failure worth another attempt at the same URL."""


def is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def _fetch_once(url: str, partial: Path, timeout: float) -> None:
    """One HTTP attempt, appending to `partial` when the server honours a Range request."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code == 416 and have:
                total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
                if total and int(total.group(1)) == have:
                    return  # the previous attempt had already received every byte
                partial.unlink()
                raise _Retriable(f"server refused to resume at byte {have}; starting over")
            if response.status_code in RETRIABLE_STATUS:
                raise _Retriable(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise DownloadError(f"HTTP {response.status_code} {response.reason}")
            resumed = response.status_code == 206
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            with open(partial, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=Path(urlparse(url).path).name,
                disable=None, leave=False,
            ) as bar:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        raise _Retriable(f"{type(exc).__name__}: {exc}") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise _Retriable(f"connection closed after {size} of {total} bytes")


def fetch_http(url: str, dest: Path, partial_dir: Path, cfg: Download) -> None:
    """Stream `url` to `dest` with timeouts, retries with exponential backoff, and resume of partial files.
    The partial file lives outside DVC's outputs, so a rerun after an interruption resumes too."""
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.part"
    for attempt in range(1, cfg.retries + 1):
        try:
            _fetch_once(url, partial, cfg.timeout_s)
            shutil.move(partial, dest)
            return
        except _Retriable as exc:
            if attempt == cfg.retries:
                raise DownloadError(f"{exc} (gave up after {cfg.retries} attempts)") from None
            wait = cfg.backoff_s * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1fs (attempt %d/%d)", url, exc, wait, attempt + 1, cfg.retries)
            time.sleep(wait)


def fetch(mirror: Mirror, name: str, dest: Path, partial_dir: Path, cfg: Download) -> str:
    """Copy or download one file from one mirror into `dest`; returns the source it came from."""
    if is_url(mirror.location):
        url = f"{mirror.location.rstrip('/')}/{name}"
        fetch_http(url, dest, partial_dir, cfg)
        return url
    path = Path(urlparse(mirror.location).path if mirror.location.startswith("file:") else mirror.location)
    source = path.expanduser() / name
    try:
        shutil.copyfile(source, dest)
    except OSError as exc:
        raise DownloadError(exc.strerror or str(exc)) from None
    return str(source)


def download_file(
    spec: DatasetFile, mirrors: list[Mirror], dest: Path, partial_dir: Path, cfg: Download
) -> tuple[dict, list[str]]:
    """Try each mirror in order until one serves a file that passes its checksums.
    Returns the manifest entry and the failures of the mirrors tried before it."""
    tried = []
    for mirror in mirrors:
        try:
            source = fetch(mirror, spec.name, dest, partial_dir, cfg)
            _, checks = check_checksums(dest, spec, mirror.original_gz)
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


def download(dataset: Dataset, cfg: Download, out_dir: Path, partial_dir: Path) -> tuple[dict, list[str]]:
    """Fetch all four files into `out_dir` (replaced whole, atomically).
    Returns the manifest (deterministic, so DVC sees unchanged data as unchanged) and the mirror failures."""
    manifest, failures = {}, []
    with atomic_dir(out_dir) as tmp:
        for role, spec in dataset.files.items():
            manifest[role], failed = download_file(spec, dataset.mirrors, tmp / spec.name, partial_dir, cfg)
            failures.extend(failed)
        write_json(tmp / MANIFEST, manifest)
    return manifest, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partial", type=Path, required=True, help="resumable partial downloads")
    args = parser.parse_args()
    params = load_params()
    section = {"dataset": {"mirrors": [m.model_dump() for m in params.dataset.mirrors],
                           "files": params.dataset.files.model_dump()},
               "download": params.download.model_dump()}
    with tracking.stage_run("download", section, experiment=params.dataset.name) as run:
        manifest, failures = download(params.dataset, params.download, args.out, args.partial)
        for failure in failures:
            log.warning("mirror skipped: %s", failure)
        sizes = [(args.out / entry["file"]).stat().st_size for entry in manifest.values()]
        run.log_metrics({"bytes": sum(sizes), "mirror_failures": len(failures)})
        run.log_artifact(args.out / MANIFEST)


if __name__ == "__main__":
    run_main(main)
