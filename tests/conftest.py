"""Shared fixtures: tiny, valid IDX datasets written by the tests themselves, and the real params shrunk."""
from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import idx

ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def subprocess_env() -> dict[str, str]:
    """The environment for a command in a test repo: this venv's tools first, no DVC or MLflow settings leaking
    in from the caller (a test run inside `dvc exp run` or with a team MLFLOW_TRACKING_URI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def real_params() -> dict:
    """params.yaml of the repo, decoded (a fresh copy each call)."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_dataset(directory: Path, n_train: int = 200, n_test: int = 50, n_classes: int = 10,
                  shape: tuple[int, int] = (28, 28), seed: int = 0) -> dict:
    """Write a balanced random IDX dataset as four .gz files; returns a params `dataset` section for it."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % n_classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % n_classes).astype(np.uint8),
    }
    files = {}
    for role, array in arrays.items():
        idx.write(directory / FILE_NAMES[role], array)
        files[role] = {"name": FILE_NAMES[role], "gz_md5": None,
                       "sha256": hashlib.sha256(idx.encode(array)).hexdigest()}
    return {
        "name": "tiny",
        "mirrors": [{"location": str(directory), "original_gz": False}],
        "files": files,
        "train_count": n_train,
        "test_count": n_test,
        "image_shape": list(shape),
        "classes": [f"class{i}" for i in range(n_classes)],
    }


@pytest.fixture(autouse=True)
def forget_mlflow_tracking_uri():
    """mlflow.set_tracking_uri (called by stages run in-process) keeps a global and exports
    MLFLOW_TRACKING_URI; without this reset, one test's store would leak into the next."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def tiny_dataset(tmp_path) -> dict:
    return write_dataset(tmp_path / "mirror")


@pytest.fixture
def params_with(tiny_dataset):
    """Real params with the tiny dataset swapped in; `params_with(**sections)` overrides whole sections."""
    def build(**overrides) -> dict:
        params = real_params()
        params["dataset"] = copy.deepcopy(tiny_dataset)
        params.update(overrides)
        return params
    return build


def tiny_ensemble(classes=("a", "b", "c")):
    """A one-member ensemble of an untrained fast net: real code paths, no training."""
    import torch

    from stages import nets
    from stages.ensemble import Ensemble

    torch.manual_seed(0)
    model = nets.build("fast", len(classes), (28, 28)).eval()
    state = {"net": "fast", "classes": list(classes), "image_shape": [28, 28], "mean": torch.tensor(0.3),
             "std": torch.tensor(0.3), "member": "m0", "split": 0, "state_dict": model.state_dict()}
    return Ensemble([model], [state], "soft", np.ones(1), False, list(classes), (28, 28))
