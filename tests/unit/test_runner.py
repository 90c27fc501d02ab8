"""How a stage ends: a distributed worker whose peer died says so in one line; a server that refuses who asks is
told apart from one that is down; the process exits without the interpreter's final garbage collections."""
import gc
import subprocess
import sys

import pytest
import torch.distributed
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE, UNAUTHENTICATED

from fmnist.runner import lost_peer, run_main
from fmnist.tracking.store import refusal
from tests.conftest import ROOT

GLOO = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Connection closed by peer [127.0.0.1]:29500. "
        "This is typically caused by a remote worker crashing.\nException raised from ... (most recent call first):")


@pytest.mark.fault
def test_a_worker_whose_peer_died_stops_with_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lost_peer(torch.distributed.DistBackendError(GLOO)) == (
        "training process rank 0 of 2 stops: rank 1 failed and left it alone (Connection closed by peer "
        "[127.0.0.1]:29500)")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "stops: another rank failed" in lost_peer(RuntimeError(GLOO))
    assert lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # a bug keeps its traceback
    monkeypatch.delenv("RANK")
    assert lost_peer(torch.distributed.DistBackendError(GLOO)) is None  # not a distributed worker


@pytest.mark.fault
def test_a_refusal_says_which_credentials_to_set_and_an_outage_is_not_one(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    unauthenticated = MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code "
                                      "401 != 200", error_code=UNAUTHENTICATED)
    assert refusal(unauthenticated, "https://ci:token@mlflow.example") == (
        "MLflow tracking server https://***@mlflow.example requires an account: set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to your account's (never credentials in the URI); the "
        "server's admin creates accounts (docs/team-server.md)")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert "refused the credentials of user 'alice'" in refusal(unauthenticated, "http://h")
    denied = MlflowException("API request to endpoint /api/2.0/mlflow/model-versions/create failed with error code "
                             "403 != 200. Response body: 'Permission denied'", error_code=PERMISSION_DENIED)
    assert refusal(denied, "http://h").startswith("MLflow tracking server http://h does not let alice do this "
                                                  "(model-versions/create): viewers log nothing")
    assert refusal(MlflowException("API request failed: 503", error_code=TEMPORARILY_UNAVAILABLE), "http://h") \
        is None
    assert refusal(ConnectionError("refused"), "http://h") is None


def test_a_stage_process_exits_with_the_collector_frozen_and_an_in_process_caller_keeps_it_running():
    # Registered before run_main's own exit handler, so it runs after it: what the interpreter's teardown sees.
    script = ("import atexit, gc\n"
              "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
              "from fmnist.runner import run_main\n"
              "run_main(lambda: None)\n"
              "run_main(lambda: None)\n"
              "print('frozen before exit:', gc.get_freeze_count() > 0)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.splitlines() == ["frozen before exit: False", "frozen at exit: True"]
    frozen = gc.get_freeze_count()
    run_main(lambda: None)
    assert gc.get_freeze_count() == frozen
