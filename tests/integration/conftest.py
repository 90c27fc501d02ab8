"""The integration tier's projects: a DVC project in a temp directory, for stages and tracking run in-process.
(The S3 and PostgreSQL servers, shared with the e2e tier, are in tests/services.py.)"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, real_params


@pytest.fixture
def project(tmp_path, monkeypatch):
    """`project(params)`: a DVC project (no git) in tmp_path with this repo's dvc.yaml and `params` (default: the
    real params.yaml), made the working directory and DVC root, logging to its own mlflow.db."""
    from dvc.repo import Repo

    def make(params: dict | None = None) -> Path:
        if not (tmp_path / ".dvc").is_dir():
            Repo.init(str(tmp_path), no_scm=True)
        shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or real_params(), sort_keys=False))
        return tmp_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    return make
