"""What makes raw files the dataset params describe: checksums, IDX structure, counts, label range, class balance."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from fmnist.data import idx
from fmnist.errors import StageError
from fmnist.params import Dataset, DatasetFile, DatasetFiles, Verify

MANIFEST = "manifest.json"
# The four files in a fixed order: the manifest's key order, and so data/raw's bytes, never follow the schema's.
ROLES = ("train_images", "train_labels", "test_images", "test_labels")


class VerifyError(StageError):
    """The raw data is not the dataset params describe."""


def dataset_files(files: DatasetFiles) -> list[tuple[str, DatasetFile]]:
    """(role, file) pairs in ROLES order."""
    return [(role, getattr(files, role)) for role in ROLES]


def decoded_bounds(train_count: int, test_count: int, image_shape: list[int]) -> dict[str, int]:
    """{role: the most decoded bytes its file may hold}: twice what its counts and image shape need (so a file
    with a wrong count still reaches check_split's precise message), a bound on memory and on a gzip bomb."""
    exact = {"train_images": 16 + train_count * math.prod(image_shape), "train_labels": 8 + train_count,
             "test_images": 16 + test_count * math.prod(image_shape), "test_labels": 8 + test_count}
    return {role: 2 * size + (1 << 16) for role, size in exact.items()}


def wire_bound(decoded: int) -> int:
    """The most bytes a file decoding to at most `decoded` bytes can take as stored, gzipped or not: deflate's
    stored blocks (incompressible data) add 5 bytes per 64 KiB, gzip's header and trailer a few dozen."""
    return decoded + 5 * (decoded // 65535 + 1) + 1024


def check_checksums(path: Path, spec: DatasetFile, original_gz: bool, max_bytes: int) -> tuple[np.ndarray, dict]:
    """Check `path` against `spec`, then decode it: the .gz MD5 first where the bytes are the release's own (a
    mismatch is refused before anything is decompressed), and always the decoded payload's SHA-256 (recompressed
    copies, e.g. Debian's, differ only in the .gz). Decoding holds one copy, of at most `max_bytes`."""
    with open(path, "rb") as handle:
        md5 = hashlib.file_digest(handle, "md5").hexdigest()
    md5_applies = original_gz and spec.gz_md5 is not None
    if md5_applies and md5 != spec.gz_md5:
        raise VerifyError(f"{path}: .gz MD5 mismatch: expected {spec.gz_md5}, got {md5}")
    payload = idx.decode(path, max_bytes)
    sha256 = hashlib.sha256(payload).hexdigest()
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise VerifyError(f"{path}: decoded SHA-256 mismatch: expected {spec.sha256}, got {sha256}")
    if spec.sha256 is None and not md5_applies:
        raise VerifyError(
            f"{path}: no checksum applies (the .gz is not the release's own and dataset.files.*.sha256 for "
            f"{spec.name} is null). Its decoded SHA-256 is {sha256}: set it in params.yaml once you trust the file."
        )
    record = {"gz_md5": md5, "gz_md5_checked": md5_applies, "sha256": sha256, "sha256_checked": spec.sha256 is not None}
    return idx.parse(payload, str(path)), record


def check_split(
    split: str, images: np.ndarray, labels: np.ndarray, expected_count: int, dataset: Dataset, cfg: Verify
) -> tuple[dict, list[str]]:
    """Structure, counts, label range and class balance of one split; returns (summary, problems)."""
    problems = []
    shape = tuple(dataset.image_shape)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != shape:
        problems.append(f"{split} images: expected uint8 IDX of shape (N, {shape[0]}, {shape[1]}) "
                        f"(magic 0x00000803), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        problems.append(f"{split} labels: expected uint8 IDX of shape (N,) (magic 0x00000801), "
                        f"got {labels.dtype} {labels.shape}")
    for what, count in (("images", len(images)), ("labels", len(labels))):
        if count != expected_count:
            problems.append(f"{split} {what}: expected {expected_count} items, got {count}")
    n_classes = len(dataset.classes)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        problems.append(f"{split} labels: expected values in [0, {n_classes - 1}] ({n_classes} classes), "
                        f"got [{labels.min()}, {labels.max()}]")
        return {"count": len(labels)}, problems
    counts = np.bincount(labels, minlength=n_classes)
    imbalance = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
    if imbalance > cfg.max_class_imbalance:
        problems.append(f"{split} labels: class imbalance (largest/smallest count) {imbalance:.3f} exceeds "
                        f"verify.max_class_imbalance={cfg.max_class_imbalance}; counts {counts.tolist()}")
    summary = {"count": len(labels), "class_counts": dict(zip(dataset.classes, counts.tolist())),
               "imbalance": round(imbalance, 4)}
    return summary, problems


def verify_dataset(raw_dir: Path, dataset: Dataset, cfg: Verify) -> dict:
    """Check every file and split; raise VerifyError listing every problem found, else return the report."""
    manifest = json.loads((raw_dir / MANIFEST).read_text())
    arrays, files, problems = {}, {}, []
    bounds = decoded_bounds(dataset.train_count, dataset.test_count, dataset.image_shape)
    for role, spec in dataset_files(dataset.files):
        try:
            arrays[role], files[role] = check_checksums(raw_dir / spec.name, spec, manifest[role]["original_gz"],
                                                        bounds[role])
        except (VerifyError, idx.IdxError) as exc:
            problems.append(str(exc))
    report: dict = {"dataset": dataset.name, "files": files}
    for split, expected in (("train", dataset.train_count), ("test", dataset.test_count)):
        if f"{split}_images" in arrays and f"{split}_labels" in arrays:
            summary, found = check_split(split, arrays[f"{split}_images"], arrays[f"{split}_labels"],
                                         expected, dataset, cfg)
            report[split] = summary
            problems.extend(found)
    if problems:
        raise VerifyError(f"{raw_dir}: {len(problems)} check(s) failed:\n  " + "\n  ".join(problems))
    return report


def headline(report: dict) -> dict:
    """The flat numbers of metrics/verify.json, for `dvc metrics show/diff`; checksums stay in the report."""
    files = report["files"].values()
    return {
        "train_count": report["train"]["count"],
        "test_count": report["test"]["count"],
        "train_imbalance": report["train"]["imbalance"],
        "test_imbalance": report["test"]["imbalance"],
        "sha256_checked": sum(f["sha256_checked"] for f in files),
        "gz_md5_checked": sum(f["gz_md5_checked"] for f in files),
    }
