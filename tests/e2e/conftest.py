"""The e2e tier's one prepared pipeline run: this working tree as a fresh git repo, the CI profile applied, and
`dvc repro` run once on the real data, which the pipeline gets the way it always does (params' mirrors in order:
the Debian package's directory, then the official URLs). Each test works on its own copy of it."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import commit_all, require, subprocess_env
from tests.e2e.repos import copy_working_tree, sh


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The CI profile (profiles/ci.yaml: 3,000 training images, 2 epochs, 2 members) run once, committed."""
    repo = copy_working_tree(tmp_path_factory.mktemp("prepared") / "repo")
    sh(repo, "fmnist", "profile", "profiles/ci.yaml")
    started = time.monotonic()
    done = subprocess.run(["dvc", "repro"], cwd=repo, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    if done.returncode and "no mirror could provide" in output:
        require("the Fashion-MNIST dataset", "apt-get install dataset-fashion-mnist (`make dataset-package` does "
                "it, with sudo -n where you are not root), or network access to the official mirror in params.yaml")
    assert done.returncode == 0, output[-6000:]
    print(f"prepared pipeline (CI profile, dvc repro): {time.monotonic() - started:.0f} s")
    commit_all(repo, "CI profile and its results")
    return repo


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    """A copy of the prepared repo (git history, workspace, DVC cache, MLflow store) for one test to change."""
    return Path(shutil.copytree(prepared, tmp_path / "repo", symlinks=True))


