"""MLflow's own authentication on the team server (`mlflow server --app-name basic-auth`, runs and permissions in
PostgreSQL), with the accounts `fmnist access grant` makes: what a client without credentials, a viewer, a teammate
and the CI account can each do through the pipeline's own tracking code."""
from __future__ import annotations

import io
import secrets
import shutil

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException

from fmnist.cli.main import main as fmnist
from fmnist.files import save_torch
from fmnist.tracking.run import stage_run
from fmnist.tracking.store import TrackingError
from tests import mlflow_server
from tests.conftest import ROOT, real_params, tiny_ensemble, write_dataset
from tests.services import create_database, postgres_rows

# One xdist worker runs this module: its one server is started once.
pytestmark = pytest.mark.xdist_group("auth")
MODEL = "tiny-ensemble"  # the registered ensemble of the tiny dataset (params' dataset.name 'tiny')
ROLES = ("ci", "teammate", "viewer")
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    """The server, its accounts (one per role, each with a fresh password) and a project logging to it; the CI
    account has run evaluate once, so a version of the ensemble is registered and is the champion."""
    root = tmp_path_factory.mktemp("auth")
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump({**real_params(), "dataset": write_dataset(root / "mirror")}))
    runs, permissions = create_database(postgres, "auth_runs"), create_database(postgres, "auth_permissions")
    config = mlflow_server.write_auth_config(root / "basic_auth.ini", permissions)
    admin = secrets.token_urlsafe(16)
    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    server_env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    with mlflow_server.local_server(runs, artifacts_destination=(root / "artifacts").as_uri(), env=server_env,
                                    app="basic-auth") as base, pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("DVC_ROOT", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", base)
        for name in ("MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME"):
            patch.delenv(name, raising=False)
        login(patch, "admin", admin)
        for role in ROLES:
            patch.setattr("sys.stdin", io.StringIO(passwords[role] + "\n"))
            fmnist(["access", "grant", f"{role}-account", role, "--password-stdin"])  # exits only on failure
        login(patch, "ci-account", passwords["ci"])
        save_torch(root / "ensemble.pt", tiny_ensemble().to_state())
        with stage_run("evaluate") as run:
            verdict = run.log_ensemble_model(root / "ensemble.pt", IMAGES[:2], metrics={})
        mlflow.set_tracking_uri(None)
        yield {"base": base, "root": root, "passwords": passwords, "ci_run": run.run_id, "ci_verdict": verdict,
               "runs": runs}


def login(patch: pytest.MonkeyPatch, user: str | None, password: str | None = None) -> None:
    """Act as `user` (None: without credentials), the way every MLflow client authenticates: the environment."""
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            patch.delenv(name, raising=False)
        else:
            patch.setenv(name, value)


@pytest.fixture
def as_role(team, monkeypatch):
    """`as_role(role)`: this test acts as that account (or, for None, without credentials) in the team's project."""
    monkeypatch.chdir(team["root"])
    monkeypatch.setenv("DVC_ROOT", str(team["root"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team["base"])
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)

    def act(role: str | None) -> mlflow.MlflowClient:
        monkeypatch.setenv("DVC_EXP_NAME", str(role))  # a pipeline of its own, not the CI account's
        login(monkeypatch, f"{role}-account" if role else None, team["passwords"].get(role))
        return mlflow.MlflowClient(team["base"])
    return act


def stored_runs(team) -> int:
    return postgres_rows(team["runs"], "select count(*) from runs")[0][0]


def test_the_ci_account_registers_versions_and_moves_the_champion(team, as_role):
    assert team["ci_verdict"] == f"{MODEL} version 1 is the first champion"
    client = as_role("ci")
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == team["ci_run"]
    client.set_registered_model_alias(MODEL, "champion", "1")  # CI may move it


@pytest.mark.fault
def test_without_credentials_a_stage_fails_naming_the_server_and_the_variables_and_writes_nothing(team, as_role):
    as_role(None)
    before = stored_runs(team)
    with pytest.raises(TrackingError) as refused, stage_run("verify"):
        pytest.fail("the stage ran without credentials")
    assert str(refused.value) == (
        f"MLflow tracking server {team['base']} requires an account: set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to your account's (never credentials in the URI); the "
        "server's admin creates accounts (docs/team-server.md)")
    assert stored_runs(team) == before


@pytest.mark.fault
def test_a_viewer_reads_runs_and_loads_the_champion_but_cannot_log_a_run(team, as_role):
    client = as_role("viewer")
    experiment = client.get_experiment_by_name("tiny")
    assert team["ci_run"] in {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert len(champion.predict(IMAGES)) == len(IMAGES)
    before = stored_runs(team)
    with pytest.raises(TrackingError) as refused, stage_run("verify"):
        pytest.fail("a viewer's stage ran")
    assert f"MLflow tracking server {team['base']} does not let viewer-account do this (runs/create)" in \
        str(refused.value)
    assert stored_runs(team) == before


def test_a_teammate_logs_runs_but_neither_registers_a_version_nor_moves_the_champion(team, as_role, caplog):
    client = as_role("teammate")
    with stage_run("evaluate") as run:
        verdict = run.log_ensemble_model(team["root"] / "ensemble.pt", IMAGES[:2], metrics={})
    assert verdict == (f"{MODEL}: not registered, teammate-account may not register versions on {team['base']} "
                       "(CI registers); the model is logged in this run")
    assert [r.message for r in caplog.records if "not registered" in r.message] == [verdict]  # one line
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).data.tags["champion"] == verdict
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    with pytest.raises(MlflowException, match="403"):
        client.set_registered_model_alias(MODEL, "champion", "1")
    with pytest.raises(MlflowException, match="403"):
        client.create_model_version(MODEL, f"runs:/{run.run_id}/ensemble", run.run_id)
