import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from fmnist.data.checks import MANIFEST, VerifyError, dataset_files, headline, verify_dataset
from fmnist.params import parse_params


def stage_raw(params_dict, original_gz=False):
    """Lay out data/raw as the download stage leaves it: the four files plus the manifest."""
    params = parse_params(params_dict)
    raw = mirror_dir(params_dict)
    manifest = {role: {"file": spec.name, "original_gz": original_gz} for role, spec in dataset_files(params.dataset.files)}
    (raw / MANIFEST).write_text(json.dumps(manifest))
    return raw, params


def mirror_dir(params_dict) -> Path:
    return Path(params_dict["dataset"]["mirrors"][0]["location"])


def test_valid_tiny_dataset_passes_with_counts(params_with):
    raw, params = stage_raw(params_with())
    report = verify_dataset(raw, params.dataset, params.verify)
    assert headline(report) == {"train_count": 200, "test_count": 50, "train_imbalance": 1.0,
                                "test_imbalance": 1.0, "sha256_checked": 4, "gz_md5_checked": 0}
    assert report["train"]["class_counts"]["class3"] == 20


def rewrite_payload(path, mutate):
    data = bytearray(gzip.decompress(path.read_bytes()))
    mutate(data)
    path.write_bytes(gzip.compress(bytes(data)))


@pytest.mark.fault
def test_flipped_byte_fails_naming_file_check_expected_and_actual(params_with):
    raw, params = stage_raw(params_with())
    path = raw / "train-images-idx3-ubyte.gz"
    rewrite_payload(path, lambda d: d.__setitem__(100, d[100] ^ 1))
    expected = params.dataset.files.train_images.sha256
    actual = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    with pytest.raises(VerifyError, match=rf"{path}: decoded SHA-256 mismatch: expected {expected}, got {actual}"):
        verify_dataset(raw, params.dataset, params.verify)


@pytest.mark.fault
def test_truncated_file_fails(params_with):
    raw, params = stage_raw(params_with())
    path = raw / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(VerifyError, match=r"t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip"):
        verify_dataset(raw, params.dataset, params.verify)


def verify_with_payload(params_with, role, mutate):
    """Change one file's decoded payload and give params its new SHA-256, so only the structure checks can
    object; returns the VerifyError's message."""
    params_dict = params_with()
    path = mirror_dir(params_dict) / params_dict["dataset"]["files"][role]["name"]
    rewrite_payload(path, mutate)
    params_dict["dataset"]["files"][role]["sha256"] = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    raw, params = stage_raw(params_dict)
    with pytest.raises(VerifyError) as caught:
        verify_dataset(raw, params.dataset, params.verify)
    return str(caught.value)


@pytest.mark.fault
def test_wrong_magic_fails_even_when_the_checksum_was_updated(params_with):
    message = verify_with_payload(params_with, "train_labels", lambda d: d.__setitem__(2, 0x42))
    assert "train-labels-idx1-ubyte.gz: bad IDX magic number 0x00004201" in message


@pytest.mark.fault
def test_header_claiming_more_items_than_present_fails(params_with):
    message = verify_with_payload(params_with, "train_images",
                                  lambda d: d.__setitem__(slice(4, 8), (10**9).to_bytes(4, "big")))
    # refused from the header, before decoding (or allocating) the 784 GB it claims
    assert "header claims dims [1000000000, 28, 28] = 784000000016 bytes, more than the" in message


@pytest.mark.fault
def test_wrong_counts_and_label_range_are_reported_together(params_with):
    params_dict = params_with()
    params_dict["dataset"]["train_count"] = 60000
    params_dict["dataset"]["classes"] = params_dict["dataset"]["classes"][:5]
    raw, params = stage_raw(params_dict)
    with pytest.raises(VerifyError) as caught:
        verify_dataset(raw, params.dataset, params.verify)
    message = str(caught.value)
    assert "train images: expected 60000 items, got 200" in message
    assert "train labels: expected values in [0, 4] (5 classes), got [0, 9]" in message


@pytest.mark.fault
def test_class_imbalance_beyond_the_limit_fails(params_with):
    def unbalance(payload):
        payload[8:18] = bytes(10)  # the first 10 labels become class 0: 29 of class 0, 19 of each other class
    message = verify_with_payload(params_with, "train_labels", unbalance)
    assert re.search(r"train labels: class imbalance .* 1\.526 exceeds verify\.max_class_imbalance=1\.0", message)


def test_md5_is_checked_only_for_the_release_own_gz(params_with):
    params_dict = params_with()
    params_dict["dataset"]["files"]["test_labels"]["gz_md5"] = "0" * 32
    raw, params = stage_raw(params_dict, original_gz=False)
    assert headline(verify_dataset(raw, params.dataset, params.verify))["gz_md5_checked"] == 0
    raw, params = stage_raw(params_dict, original_gz=True)
    with pytest.raises(VerifyError, match=r"t10k-labels-idx1-ubyte.gz: .gz MD5 mismatch: expected 0{32}, got [0-9a-f]{32}"):
        verify_dataset(raw, params.dataset, params.verify)


@pytest.mark.fault
def test_a_file_no_checksum_covers_is_refused_with_its_sha256(params_with):
    params_dict = params_with()
    params_dict["dataset"]["files"]["test_labels"]["sha256"] = None
    raw, params = stage_raw(params_dict)
    with pytest.raises(VerifyError, match=r"no checksum applies .* decoded SHA-256 is [0-9a-f]{64}"):
        verify_dataset(raw, params.dataset, params.verify)
