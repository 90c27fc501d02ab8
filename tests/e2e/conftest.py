"""Each e2e test works on its own copy of the prepared pipeline run (tests/e2e/prepared.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e import prepared as prepared_run


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """The CI profile (profiles/ci.yaml: 3,000 training images, 2 epochs, 2 members) run once, committed."""
    return prepared_run.wait(prepared_run.shared_dir(tmp_path_factory))


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    """A copy of the prepared repo (git history, workspace, DVC cache, MLflow store) for one test to change."""
    return Path(shutil.copytree(prepared, tmp_path / "repo", symlinks=True))
