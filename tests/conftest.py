"""Shared by every tier: tiny, valid IDX datasets written by the tests themselves, the real params shrunk, git
repos that need no global identity, and the rule that a missing service or dataset never skips in silence under
CI (`CI` set, as GitHub and .ci/run set it): there it fails, naming what is missing and how to get it."""
from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fmnist.data import idx

pytest_plugins = ("tests.services",)
ROOT = Path(__file__).resolve().parents[1]
FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The identity of the tests' own commits, set in each repo they make: the suite needs no global git config.
GIT_IDENTITY = {"user.name": "fmnist tests", "user.email": "tests@fmnist.invalid", "commit.gpgsign": "false"}


def under_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(what: str, how: str) -> None:
    """A test's missing prerequisite: a failure under CI, a one-line skip elsewhere."""
    message = f"{what} is missing: {how}"
    if under_ci():
        pytest.fail(f"{message} (CI is set: nothing may be skipped)", pytrace=False)
    pytest.skip(message)


def subprocess_env() -> dict[str, str]:
    """The environment for a command in a test repo: this venv's tools first, no DVC or MLflow settings leaking
    in from the caller (a test run inside `dvc exp run` or with a team MLFLOW_TRACKING_URI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=subprocess_env())
    if done.returncode:
        raise AssertionError(f"git {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def identify(repo: Path) -> None:
    """Give a test repo the commit identity that `git commit` and `dvc exp run` need."""
    for key, value in GIT_IDENTITY.items():
        git(repo, "config", key, value)


def init_repo(repo: Path) -> Path:
    """A new git repo at `repo` (branch main) with the tests' identity."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    identify(repo)
    return repo


def clone(source: Path, target: Path) -> Path:
    git(source.parent, "clone", "-q", str(source), str(target))
    identify(target)
    return target


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


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
    return write_idx_files(directory, arrays, [f"class{i}" for i in range(n_classes)], shape)


def write_idx_files(directory: Path, arrays: dict[str, np.ndarray], classes: list[str],
                    shape: tuple[int, int] = (28, 28)) -> dict:
    """The four arrays as IDX .gz files in `directory`; returns a params `dataset` section for them."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, array in arrays.items():
        idx.write(directory / FILE_NAMES[role], array)
        files[role] = {"name": FILE_NAMES[role], "gz_md5": None,
                       "sha256": hashlib.sha256(idx.encode(array)).hexdigest()}
    return {
        "name": "tiny",
        "mirrors": [{"location": str(directory), "original_gz": False}],
        "files": files,
        "train_count": len(arrays["train_labels"]),
        "test_count": len(arrays["test_labels"]),
        "image_shape": list(shape),
        "classes": classes,
    }


def block_images(n: int, seed: int, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable in seconds: class k is a bright 7x7 block at position k of a 4x4 grid, on noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % n_classes).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 4)
        images[i, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 220
    return images, labels


def tiny_ensemble(classes=("a", "b", "c")):
    """A one-member ensemble of an untrained fast net: real code paths, no training."""
    import torch

    from fmnist.model import nets
    from fmnist.model.ensemble import Ensemble

    torch.manual_seed(0)
    model = nets.build("fast", len(classes), (28, 28)).eval()
    state = {"net": "fast", "classes": list(classes), "image_shape": [28, 28], "mean": torch.tensor(0.3),
             "std": torch.tensor(0.3), "member": "m0", "split": 0, "state_dict": model.state_dict()}
    return Ensemble([model], [state], "soft", np.ones(1), False, list(classes), (28, 28))


@pytest.fixture(scope="session", autouse=True)
def prepared_pipeline_in_the_background(request, tmp_path_factory):
    """When e2e tests are selected, their one pipeline run starts now, beside the unit and integration tiers."""
    if any(item.get_closest_marker("e2e") for item in request.session.items):
        from tests.e2e import prepared

        prepared.start(prepared.shared_dir(tmp_path_factory))


@pytest.fixture(autouse=True)
def forget_mlflow_tracking_uri():
    """mlflow.set_tracking_uri (called by stages run in-process) keeps a global and exports
    MLFLOW_TRACKING_URI; without this reset, one test's store would leak into the next."""
    yield
    if "mlflow" in sys.modules:
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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker and what it starts (stages, torchrun, servers) keeps to its own share of the
    cores: the stages take every core they may use (train.threads: 0), and two workers each running torch on
    every core slow each other down several times over."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.environ["FMNIST_TEST_CORES"] = ",".join(map(str, cores))  # for what needs them all (tests/e2e)
        share = cores[int(worker.removeprefix("gw")) % len(cores)::int(count)]
        os.sched_setaffinity(0, share or cores)


# The longest tests, first in their tier: pytest-xdist hands tests out in this order, so the last minutes of a run
# are not one worker finishing a long test while the other has nothing left.
LONGEST_FIRST = ("tests/e2e/test_team.py", "tests/integration/test_distributed.py", "tests/integration/test_share.py",
                 "tests/integration/test_mlflow_server.py", "tests/integration/test_team_auth.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-random-order's, which reorders after this when asked to
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries the marker of its tier, the folder it is in; the longest come first in their tier."""
    for item in items:
        tier = item.path.relative_to(ROOT / "tests").parts[0]
        if tier in ("unit", "integration", "e2e"):
            item.add_marker(tier)
    tiers = ("unit", "integration", "e2e")
    items.sort(key=lambda item: (tiers.index(tier) if (tier := item.path.relative_to(ROOT / "tests").parts[0])
                                 in tiers else -1, item.path.relative_to(ROOT).as_posix() not in LONGEST_FIRST))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():  # a GPU is never required, CI or not: CI machines have none
            pytest.skip(f"needs a CUDA GPU; none is visible (torch {torch.__version__}, "
                        f"CUDA {torch.version.cuda or 'none: a CPU-only build'})")
