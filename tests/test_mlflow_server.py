"""`mlflow server` on the project's store serves what the stages logged, through MLflow's REST API."""
import json
import urllib.request
from pathlib import Path

import pytest

from stages import mlflow_server, tracking


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for stage in ("verify", "preprocess"):
        with tracking.stage_run(stage, {"preprocess": {"seed": 42}}, experiment="tiny") as run:
            run.log_metrics({"count": 60000})
    with mlflow_server.local_server(f"sqlite:///{tmp_path / 'mlflow.db'}") as base:
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
    assert {p["key"]: p["value"] for p in by_name["verify"]["data"]["params"]} == {"preprocess.seed": "42"}


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
