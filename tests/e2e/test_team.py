"""A team on the real pipeline (CI profile): a DVC remote on moto's S3 server that a teammate pulls from instead
of retraining (outputs, and the run-cache that restores a stage instead of rerunning it), and one MLflow server on
PostgreSQL with artifacts proxied to S3, both on this machine."""
import json

import mlflow
import numpy as np
import pytest
import yaml

from tests import mlflow_server
from tests.conftest import clone, commit_all
from tests.e2e.repos import cached_outputs, ran, sh
from tests.services import S3_CREDENTIALS, bucket_keys, create_bucket, postgres_rows, s3_checking_keys

REMADE = ["ensemble", "train@m0", "train@m1"]  # what makes the models; the data stages: test_pipeline
DATA_STAGES = ("download", "verify", "preprocess")


@pytest.fixture(scope="module")
def s3_remote(s3_endpoint) -> str:
    """The session's S3 server with an empty bucket 'team', its credentials in this module's environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in S3_CREDENTIALS.items():
            patch.setenv(key, value)
        create_bucket(s3_endpoint, "team")
        yield s3_endpoint


def add_remote(repo, endpoint: str, prefix: str) -> None:
    """The team's DVC remote, committed (its address; never its keys)."""
    sh(repo, "dvc", "remote", "add", "-d", "team", f"s3://team/{prefix}")
    sh(repo, "dvc", "remote", "modify", "team", "endpointurl", endpoint)
    sh(repo, "dvc", "remote", "modify", "team", "verify", "true")
    commit_all(repo, "team remote")


@pytest.fixture(scope="module")
def team_server(postgres, s3_remote) -> str:
    """One MLflow server for the team: runs in PostgreSQL, artifacts proxied to the S3 bucket 'team-mlflow'."""
    create_bucket(s3_remote, "team-mlflow")
    with mlflow_server.local_server(postgres, artifacts_destination="s3://team-mlflow/artifacts",
                                    env={**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_remote}) as base:
        yield base


def test_a_forced_rerun_against_one_team_server_reproduces_every_output_and_a_teammate_experiments_on_it(
        repo, s3_remote, team_server, postgres, tmp_path, monkeypatch):
    # MLflow clients hold no S3 keys: the server proxies artifacts. DVC's push and pull use them.
    tracked = {"MLFLOW_TRACKING_URI": team_server, **{key: None for key in S3_CREDENTIALS}}
    client = mlflow.MlflowClient(team_server)
    add_remote(repo, s3_remote, "team")
    prepared = cached_outputs(repo)
    # Clone A reruns, against the team server, the stages that make the models (both members, the ensemble):
    # forced, so that each logs a run there. Same commit, same params: every model has the bytes of the prepared
    # run, which logged to SQLite. Its data comes from the prepared run's cache (checked out, not remade).
    clone_a = clone(repo, tmp_path / "a")
    sh(clone_a, "dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache"))
    sh(clone_a, "dvc", "checkout", *DATA_STAGES)
    stages = ran(sh(clone_a, "dvc", "repro", "-f", "-s", "train@m0", "train@m1", "ensemble", env=tracked))
    assert sorted(stages) == REMADE
    changed = {path: (md5, cached_outputs(clone_a)[path]) for path, md5 in prepared.items()
               if cached_outputs(clone_a)[path] != md5}
    assert not changed, f"same commit, same params, different bytes: {changed}"
    assert set(prepared) == {"data/raw", "data/processed/train", "data/processed/test", "models/members/m0.pt",
                             "models/members/m1.pt", "models/ensemble.pt"}
    commit_all(clone_a, "results")
    sh(clone_a, "fmnist", "share", "push")
    experiment = client.get_experiment_by_name("fashion-mnist")
    (pipeline_a,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    made_by_a = {r.info.run_name: r for r in client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline_a.info.run_id}'")}
    assert sorted(made_by_a) == REMADE
    assert {r.info.status for r in made_by_a.values()} == {"FINISHED"} and pipeline_a.info.status == "FINISHED"
    assert {k: v.split()[0] for k, v in pipeline_a.data.tags.items() if k.startswith("lineage.")} == {
        **{f"lineage.{stage.replace('@', '/')}": "ran" for stage in REMADE},
        # no run in this store made the outputs of the stages A did not rerun: the lineage says so
        **{f"lineage.{stage}": "cached" for stage in (*DATA_STAGES, "evaluate", "baselines", "visualize_data",
                                                           "visualize")}}
    stored = dict(postgres_rows(postgres, "select r.run_uuid, r.status from runs r join experiments e on "
                                          "r.experiment_id = e.experiment_id where e.name = 'fashion-mnist'"))
    assert {r.info.run_id for r in made_by_a.values()} | {pipeline_a.info.run_id} <= set(stored)  # in PostgreSQL
    keys = bucket_keys(s3_remote, "team-mlflow")
    assert sum(k.endswith("/MLmodel") for k in keys) == 2, keys  # the two members, through the server's proxy

    # Clone B, fresh: pulls instead of training, then runs an experiment into the same server. (Two experiments
    # at once into one store: test_pipeline's queued sweep, on SQLite, where it is hardest.)
    clone_b = clone(clone_a, tmp_path / "b")
    sh(clone_b, "fmnist", "share", "pull")
    assert "up to date" in sh(clone_b, "dvc", "status")
    assert "✅ Every output `dvc.lock` names was pulled from `team`" in sh(clone_b, ".github/check-artifacts.sh")
    assert ran(sh(clone_b, "dvc", "repro", env=tracked)) == []
    assert cached_outputs(clone_b) == prepared
    # A stage this clone never ran (its dvc.lock entry gone) is restored from the run-cache entry clone A pushed
    lock = yaml.safe_load((clone_b / "dvc.lock").read_text())
    del lock["stages"]["ensemble"]
    (clone_b / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    restored = sh(clone_b, "dvc", "repro", env=tracked)
    assert ran(restored) == [] and "Stage 'ensemble' is cached - skipping run" in restored, restored
    assert "up to date" in sh(clone_b, "dvc", "status")
    committed = yaml.safe_load(sh(clone_b, "git", "show", "HEAD:dvc.lock"))
    assert yaml.safe_load((clone_b / "dvc.lock").read_text()) == committed  # the same entry as before
    sh(clone_b, "dvc", "exp", "run", "-n", "mistakes-16", "-S", "evaluate.mistakes=16", env=tracked)
    (pipeline,) = client.search_runs([experiment.experiment_id],
                                     "tags.stage = 'pipeline' and tags.dvc_exp_name = 'mistakes-16'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")
    assert [(r.info.run_name, r.info.status) for r in children] == [("evaluate", "FINISHED")]
    assert pipeline.info.status == "FINISHED"
    # B's row points what it reused at the runs A made, in the shared server
    for stage in REMADE:
        key = "lineage." + stage.replace("@", "/")
        assert pipeline.data.tags[key] == f"cached {made_by_a[stage].info.run_id}", key
    assert pipeline.data.metrics["evaluate/ensemble_accuracy"] == pytest.approx(
        json.loads((clone_b / "metrics/evaluate.json").read_text())["ensemble_accuracy"])
    (evaluate,) = children
    keys = bucket_keys(s3_remote, "team-mlflow")
    assert any(evaluate.info.run_id in k and k.endswith("evaluation/confusion_matrix.png") for k in keys)
    assert postgres_rows(postgres, "select count(*) from runs where status != 'FINISHED' and experiment_id = %s",
                         int(experiment.experiment_id)) == [(0,)]

    # The champion, loaded from the team server without S3 keys (the server proxies its files): it agrees with
    # evaluate. (MLflow's own `mlflow models predict` CLI on it: test_pipeline's predict test.)
    for key in S3_CREDENTIALS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server)
    champion = mlflow.pyfunc.load_model("models:/fashion-mnist-ensemble@champion")
    images = np.load(clone_b / "data/processed/test/images.npy")[:5]
    classes = list(champion.predict(images)["class"])
    rows = (clone_b / "metrics/evaluate/predictions.csv").read_text().splitlines()[1:6]  # actual,predicted
    assert classes == [line.split(",")[1] for line in rows]
    assert len(client.search_model_versions("name = 'fashion-mnist-ensemble'")) == 1  # B's evaluate registered it

@pytest.mark.fault
def test_a_remote_that_is_down_or_refuses_fails_naming_it_and_changes_nothing(repo, s3_remote, tmp_path):
    add_remote(repo, s3_remote, "down")
    teammate = clone(repo, tmp_path / "teammate")
    before = sorted(p.name for p in teammate.iterdir())
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "endpointurl", "http://127.0.0.1:9")
    down = sh(teammate, "fmnist", "share", "pull", check=False)
    assert "pull from DVC remote s3://team/down (endpoint http://127.0.0.1:9) failed" in down
    assert "To fix: start the server" in down and "Traceback" not in down
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "endpointurl", s3_remote)
    with s3_checking_keys(s3_remote):
        denied = sh(teammate, "fmnist", "share", "pull", check=False)
    assert "pull from DVC remote s3://team/down" in denied and "Forbidden" in denied, denied
    assert "To fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in denied and "Traceback" not in denied
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "url", "s3://no-such-bucket/dvc")
    missing = sh(teammate, "fmnist", "share", "pull", check=False)
    assert "pull from DVC remote s3://no-such-bucket/dvc" in missing and "To fix:" in missing, missing
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "url", "s3://team/nothing-pushed-here")
    report = sh(teammate, ".github/check-artifacts.sh", check=False)  # the PR report's artifact check
    assert "❌" in report and "have no pushed" in report, report
    assert "outputs this commit's dvc.lock names are missing there: " in report and "models/ensemble.pt" in report
    assert sorted(p.name for p in teammate.iterdir()) == before
    assert not (teammate / "models/ensemble.pt").exists() and not (teammate / "data/raw").exists()
