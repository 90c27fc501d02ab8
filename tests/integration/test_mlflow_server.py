"""`mlflow server` on the project's store serves what the stages logged, through MLflow's REST API."""
import contextlib
import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml

from fmnist.tracking.run import stage_run
from fmnist.tracking.store import TrackingError
from tests import mlflow_server
from tests.conftest import ROOT
from tests.services import S3_CREDENTIALS, bucket_keys, create_bucket, postgres_rows


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on the store of a project in which two stages ran (one server for the module's tests)."""
    import mlflow
    from dvc.repo import Repo

    from tests.conftest import real_params, write_dataset

    root = tmp_path_factory.mktemp("served")
    params = {**real_params(), "dataset": write_dataset(root / "mirror")}
    Repo.init(str(root), no_scm=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("DVC_ROOT", str(root))
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME"):
            patch.delenv(name, raising=False)
        for stage in ("verify", "preprocess"):
            with stage_run(stage) as run:
                run.log_metrics({"count": 60000})
        mlflow.set_tracking_uri(None)
    with mlflow_server.local_server(f"sqlite:///{root / 'mlflow.db'}") as base:
        yield base


def test_server_serves_the_pipeline_and_its_stage_runs(server):
    experiment = get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
    found = post(f"{server}/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [experiment["experiment_id"]], "order_by": ["attributes.start_time ASC"]})
    by_name = {run["info"]["run_name"]: run for run in found["runs"]}
    assert set(by_name) == {"pipeline", "verify", "preprocess"}
    tags = {name: {t["key"]: t["value"] for t in run["data"]["tags"]} for name, run in by_name.items()}
    parent_id = by_name["pipeline"]["info"]["run_id"]
    assert tags["verify"]["mlflow.parentRunId"] == tags["preprocess"]["mlflow.parentRunId"] == parent_id
    assert tags["pipeline"]["lineage.preprocess"] == f"ran {by_name['preprocess']['info']['run_id']}"
    metrics = {m["key"]: m["value"] for m in by_name["preprocess"]["data"]["metrics"]}
    assert metrics == {"count": 60000.0}
    params = {p["key"]: p["value"] for p in by_name["preprocess"]["data"]["params"]}
    assert params["preprocess.seed"] == "42" and "verify.max_class_imbalance" not in params


@pytest.mark.fault
def test_server_listens_on_loopback_only(server):
    port = int(server.rsplit(":", 1)[1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian hex; not 0.0.0.0 or ::


def test_a_team_server_keeps_runs_in_postgresql_and_artifacts_in_s3_behind_its_proxy(
        postgres, s3_endpoint, project, params_with, monkeypatch):
    import mlflow

    create_bucket(s3_endpoint, "mlflow")
    server_env = {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    with mlflow_server.local_server(postgres, artifacts_destination="s3://mlflow/artifacts", env=server_env) as base:
        for key in (*S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL"):  # the client has no S3 credentials at all
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
        project(params_with())
        with stage_run("verify") as run:
            run.log_metrics({"train_count": 60000})
            run.log_text("checked", "notes/verify.txt")
        assert mlflow.artifacts.load_text(f"runs:/{run.run_id}/notes/verify.txt") == "checked"  # via the proxy
    stored = postgres_rows(postgres, "select r.name, r.status from runs r join experiments e on "
                                     "r.experiment_id = e.experiment_id where e.name = 'team' order by r.start_time")
    metrics = dict(postgres_rows(postgres, "select key, value from metrics where run_uuid = %s", run.run_id))
    assert stored == [("pipeline", "FINISHED"), ("verify", "FINISHED")]
    assert metrics == {"train_count": 60000.0}
    keys = bucket_keys(s3_endpoint, "mlflow")
    assert any(key.endswith(f"{run.run_id}/artifacts/notes/verify.txt") for key in keys), keys


def test_server_restarts_mid_stage_and_as_a_stage_opens_its_run_are_waited_out(postgres, project, params_with,
                                                                               monkeypatch, caplog):
    import threading
    import time

    project(params_with())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "restarts")
    with contextlib.ExitStack() as servers:
        base = servers.enter_context(mlflow_server.local_server(postgres))
        port = int(base.rsplit(":", 1)[1])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)

        def restart_after(seconds: float) -> threading.Timer:
            servers.close()
            back = threading.Timer(seconds, lambda: servers.enter_context(
                mlflow_server.local_server(postgres, port=port)))
            back.start()
            return back

        with stage_run("train@m0") as first:
            first.log_metrics({"val_accuracy": 0.8}, step=1)
            back = restart_after(3)  # down mid-stage, back a few seconds later (its start takes a few more)
            started = time.monotonic()
            first.log_metrics({"val_accuracy": 0.9}, step=2)  # waits for it rather than failing the stage
            mid_stage_wait = time.monotonic() - started
            back.join()
        back = restart_after(20)  # down for 20 s exactly as the next stage opens its run (a deploy, a crash)
        started = time.monotonic()
        with stage_run("ensemble") as second:
            opening_wait = time.monotonic() - started
            second.log_metrics({"members": 1})
        back.join()
    assert mid_stage_wait > 3 and opening_wait > 20
    assert postgres_rows(postgres, "select step, value from metrics where run_uuid = %s order by step",
                         first.run_id) == [(1, 0.8), (2, 0.9)]
    waits = [r.message for r in caplog.records if "waits up to" in r.message]
    assert waits == [f"MLflow tracking server {base} is not answering; it did earlier in this pipeline, so stage "
                     "ensemble waits up to 300 s for it (a restart?)"]  # one line, not one per retry
    stored = postgres_rows(postgres, "select r.name, r.status from runs r join experiments e on r.experiment_id = "
                                     "e.experiment_id where e.name = 'restarts' order by r.start_time")
    assert stored == [("pipeline", "FINISHED"), ("train@m0", "FINISHED"), ("ensemble", "FINISHED")]


@pytest.mark.fault
def test_a_server_gone_for_good_fails_the_stage_naming_it_and_keeps_what_was_logged(postgres, project, params_with,
                                                                                     monkeypatch):
    project(params_with())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gone")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the user's choice wins over the minute of retries
    with contextlib.ExitStack() as servers:
        base = servers.enter_context(mlflow_server.local_server(postgres))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        with pytest.raises(TrackingError) as failed, stage_run("train@m1") as run:
            run.log_metrics({"val_accuracy": 0.8}, step=1)
            servers.close()  # down, and not coming back
            run.log_metrics({"val_accuracy": 0.9}, step=2)
    message = str(failed.value)
    assert f"MLflow tracking store {base} failed during stage train@m1 (run {run.run_id})" in message
    assert "What was logged before is kept there" in message and "`dvc repro` reruns it" in message
    assert postgres_rows(postgres, "select step, value from metrics where run_uuid = %s", run.run_id) == [(1, 0.8)]


def test_the_pr_report_links_the_compare_page_of_both_revisions_pipeline_runs(server, tmp_path, monkeypatch):
    import urllib.parse

    import mlflow

    from fmnist.cli.report import compare_link
    from fmnist.tracking.lineage import lock_outputs, outputs_digest
    from tests.conftest import commit_all, init_repo

    repo = init_repo(tmp_path / "repo")
    client = mlflow.MlflowClient(server)
    experiment = client.create_experiment("report-links")
    ids = []
    for md5 in ("a" * 32, "b" * 32):  # two revisions whose dvc.lock records different outputs
        (repo / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: m.pt\n"
                                       f"      md5: {md5}\n")
        commit_all(repo, md5[0])
        run = client.create_run(experiment, tags={"stage": "pipeline",
                                                  "dvc_outs_digest": outputs_digest(lock_outputs(repo / "dvc.lock"))})
        ids.append(run.info.run_id)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    (link,) = compare_link("HEAD~1", "HEAD")
    assert link.startswith(f"[Compare the two pipeline runs in MLflow]({server}/#/compare-runs?runs=")
    query = urllib.parse.parse_qs(link[link.index("?") + 1:-1])
    assert json.loads(query["runs"][0]) == ids and json.loads(query["experiments"][0]) == [experiment]
    # the workspace: results no pipeline run logged
    (repo / "dvc.lock").write_text((repo / "dvc.lock").read_text().replace("b" * 32, "c" * 32))
    (missing,) = compare_link("HEAD~1", None)
    assert "has no pipeline run with the head revision's outputs: no compare link" in missing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'local.db'}")
    assert compare_link("HEAD~1", "HEAD") == []  # a local store has no page to link to
