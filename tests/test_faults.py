"""Faults that the other modules' tests do not already provoke: a full disk, a tracking server that hangs,
concurrent writers to one SQLite store, and the rule that nothing is unpickled. (`pytest -m fault` runs every
fault case of the suite, these and the ones beside the code they break.)"""
import ast
import errno
import logging
import multiprocessing
import socket
import sys
import threading
import time

import mlflow
import numpy as np
import pytest
import yaml

from stages import preprocess, tracking
from stages.common import atomic_dir, atomic_path, run_main
from tests.conftest import ROOT

pytestmark = pytest.mark.fault


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)


def test_disk_full_during_a_file_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_text("half")
        no_space(tmp)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_disk_full_during_preprocess_leaves_no_output_and_says_why(tmp_path, params_with, monkeypatch, caplog):
    from stages import download

    monkeypatch.chdir(tmp_path)
    params = params_with()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    download.download(download.load_params().dataset, download.load_params().download, tmp_path / "raw",
                      tmp_path / "partial")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    writes = []

    def save_then_fill_up(path, array, **kwargs):
        writes.append(path)
        if len(writes) > 1:  # the first array is written, the second finds the disk full
            no_space(path)
        with open(path, "wb") as handle:
            np.lib.format.write_array(handle, array)

    monkeypatch.setattr(preprocess.np, "save", save_then_fill_up)
    monkeypatch.setattr(sys, "argv", ["preprocess", "--raw", "raw", "--out", "processed", "--metrics", "p.json"])
    with pytest.raises(SystemExit) as exit_code, caplog.at_level(logging.ERROR):
        run_main(preprocess.main)
    assert exit_code.value.code == 1
    assert "No space left on device" in caplog.text and "processed" in caplog.text
    assert not (tmp_path / "processed").exists() or not any((tmp_path / "processed").iterdir())
    assert not (tmp_path / "p.json").exists()


def test_an_interrupted_directory_write_leaves_the_previous_directory(tmp_path):
    target = tmp_path / "train"
    target.mkdir()
    (target / "images.npy").write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "images.npy").write_text("new, half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
    assert (target / "images.npy").read_text() == "previous"


@pytest.fixture
def silent_server():
    """Accepts connections and never answers: a tracking server that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_hanging_tracking_server_fails_the_stage_within_a_minute(silent_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    for name in tracking.HTTP_DEFAULTS:  # the stage's own bounds
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"MLflow tracking store {silent_server} is not usable"), \
            tracking.stage_run("verify", {}, experiment="tiny"):
        pass
    assert time.monotonic() - started < 60


def log_stage(root: str, index: int) -> None:
    """One stage process: a run with 20 metric steps, as a training stage logs epochs."""
    import os

    os.environ["DVC_ROOT"] = root
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    with tracking.stage_run(f"train@m{index}", {"member": index}, experiment="tiny") as run:
        for step in range(20):
            run.log_metrics({"val_accuracy": step / 20}, step=step)


def test_concurrent_stages_on_one_sqlite_store_lose_no_runs(tmp_path):
    # spawn: fresh interpreters, as separate stage processes are (DVC queue workers)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=log_stage, args=(str(tmp_path), i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    runs = client.search_runs([experiment.experiment_id])
    stages = sorted(r.info.run_name for r in runs if r.data.tags["stage"] != "pipeline")
    assert stages == ["train@m0", "train@m1", "train@m2", "train@m3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        if run.data.tags["stage"] != "pipeline":
            assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 20


def test_every_torch_load_in_the_package_refuses_pickled_code():
    calls = []
    for module in sorted((ROOT / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                weights_only = [k.value.value for k in node.keywords if k.arg == "weights_only"]
                calls.append((module.name, node.lineno, weights_only))
    assert calls, "no torch.load found: the check itself is broken"
    assert [c for c in calls if c[2] != [True]] == []


def test_atomic_outputs_get_normal_permissions_not_the_temp_files_0600(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "plots") as tmp:
            (tmp / "a.png").write_bytes(b"png")
    finally:
        os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "plots").stat().st_mode & 0o777 == 0o755
