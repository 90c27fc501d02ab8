"""bench/holdout.py: the shared holdout that ensemble choices are made on never reaches a member's training or
validation images, and every class keeps its share of it."""
import argparse
import importlib.util

import numpy as np
import pytest

from tests.conftest import ROOT


def _holdout_module():
    spec = importlib.util.spec_from_file_location("holdout_script", ROOT / "bench" / "holdout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_holds_out_a_stratified_part_that_no_split_contains(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # params.yaml's preprocess section: 5 splits of 20%
    holdout = _holdout_module()
    source, out = tmp_path / "train", tmp_path / "holdout"
    source.mkdir()
    labels = np.repeat(np.arange(10), 100)
    # each image carries its own index in its first two pixels, so the test can tell where every image went
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(len(labels)) // 256, np.arange(len(labels)) % 256
    for name, array in {"images": images, "labels": labels, "mean": np.float32(0.3), "std": np.float32(0.35)}.items():
        np.save(source / f"{name}.npy", array)

    holdout.prepare(source, out, holdout=200, seed=123)

    def ids(path):
        pictures = np.load(path)
        return set((pictures[:, 0, 0].astype(int) * 256 + pictures[:, 0, 1]).tolist())

    kept, held = ids(out / "images.npy"), ids(out / "holdout_images.npy")
    assert len(held) == 200 and len(kept) == 800 and not kept & held
    assert np.array_equal(np.bincount(np.load(out / "holdout_labels.npy")), np.full(10, 20))
    is_val = np.load(out / "is_val.npy")
    assert is_val.shape == (5, 800) and set(is_val.sum(axis=1)) == {160}
    assert float(np.load(out / "mean.npy")) == pytest.approx(0.3)


def test_an_ensemble_without_members_is_refused_naming_the_argument():
    holdout = _holdout_module()
    assert holdout.ensemble_spec("a=x/m0.pt,x/m1.pt")[1][1].name == "m1.pt"
    with pytest.raises(argparse.ArgumentTypeError, match="'a': expected NAME=member.pt"):
        holdout.ensemble_spec("a")
