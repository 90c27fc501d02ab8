"""Stages run in-process in a tiny DVC project, and their failures: a full disk mid-write, a tracking server that
hangs, several stages logging to one SQLite store at once. (`pytest -m fault` lists every fault case.)"""
import errno
import json
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

from fmnist.runner import run_main
from fmnist.tracking.run import HTTP_DEFAULTS, stage_run
from fmnist.tracking.store import TrackingError

TINY_GRID = [{"classifier": "GaussianNB"},
             {"classifier": "DecisionTreeClassifier", "grid": {"max_depth": [2, 4], "criterion": ["gini"]}}]


def write_split(directory, n, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.integers(0, 60, (n, 8, 8)) + labels[:, None, None] * 80).astype(np.uint8)  # separable classes
    directory.mkdir(parents=True)
    np.save(directory / "images.npy", images)
    np.save(directory / "labels.npy", labels.astype(np.uint8))


def test_the_baselines_stage_writes_one_row_and_one_mlflow_run_per_configuration(project, params_with, tmp_path,
                                                                                  monkeypatch):
    from stages import baselines

    params = params_with()
    params["baselines"].update(profile="tiny", repeats=2, profiles={"tiny": TINY_GRID})
    project(params)
    write_split(tmp_path / "train", 120, seed=1)
    write_split(tmp_path / "test", 60, seed=2)
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump({
        "source": "a test", "columns": {"tiny": "tiny"},
        "rows": [{"classifier": "GaussianNB", "params": {}, "tiny": 0.5}]}))
    monkeypatch.setattr(sys, "argv", ["baselines", "--train", "train", "--test", "test", "--reference",
                                      "reference.yaml", "--metrics", "baselines.json", "--table", "baselines.csv"])
    baselines.main()
    metrics = json.loads((tmp_path / "baselines.json").read_text())
    rows = metrics["configurations"]
    assert list(rows) == ["GaussianNB", "DecisionTreeClassifier criterion=gini max_depth=2",
                          "DecisionTreeClassifier criterion=gini max_depth=4"]
    assert rows["GaussianNB"]["accuracy"] == 1.0 and rows["GaussianNB"]["published"] == 0.5
    assert rows["GaussianNB"]["difference"] == pytest.approx(0.5)
    assert "published" not in rows["DecisionTreeClassifier criterion=gini max_depth=2"]
    assert metrics["best_accuracy"] == max(r["accuracy"] for r in rows.values())
    assert (tmp_path / "baselines.csv").read_text().count("\n") == 4  # header + 3 rows
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = store.search_runs([store.get_experiment_by_name("tiny").experiment_id])
    stage = next(r for r in runs if r.info.run_name == "baselines")
    assert stage.data.params["baselines.profile"] == "tiny" and "dataset.name" in stage.data.params
    configurations = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id]
    assert sorted(r.info.run_name for r in configurations) == sorted(rows)
    for run in configurations:
        assert run.data.metrics["accuracy"] == pytest.approx(rows[run.info.run_name]["accuracy"])
        assert run.data.tags["stage"] == "baselines"
    tree = next(r for r in configurations if r.info.run_name.endswith("max_depth=4"))
    assert tree.data.params == {"classifier": "DecisionTreeClassifier", "criterion": "gini", "max_depth": "4"}


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)


@pytest.mark.fault
def test_disk_full_during_preprocess_leaves_no_output_and_says_why(project, params_with, tmp_path, monkeypatch,
                                                                   caplog):
    from fmnist.data.checks import decoded_bounds
    from fmnist.data.download import download
    from fmnist.params import parse_params
    from stages import preprocess

    params = params_with()
    project(params)
    parsed = parse_params(params)
    dataset = parsed.dataset
    download(dataset.files, dataset.mirrors, decoded_bounds(dataset.train_count, dataset.test_count, dataset.image_shape),
             parsed.download, tmp_path / "raw", tmp_path / "partial")
    writes = []

    def save_then_fill_up(path, array, **kwargs):
        writes.append(path)
        if len(writes) > 1:  # the first array is written, the second finds the disk full
            no_space(path)
        with open(path, "wb") as handle:
            np.lib.format.write_array(handle, array)

    monkeypatch.setattr(np, "save", save_then_fill_up)
    monkeypatch.setattr(sys, "argv", ["preprocess", "--raw", "raw", "--out", "processed", "--metrics", "p.json"])
    with pytest.raises(SystemExit) as exit_code, caplog.at_level(logging.ERROR):
        run_main(preprocess.main)
    assert exit_code.value.code == 1
    assert "No space left on device" in caplog.text and "processed" in caplog.text
    assert not (tmp_path / "processed").exists() or not any((tmp_path / "processed").iterdir())
    assert not (tmp_path / "p.json").exists()


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


@pytest.mark.fault
def test_a_hanging_tracking_server_fails_the_stage_within_a_minute(project, silent_server, monkeypatch):
    project()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
    for name in HTTP_DEFAULTS:  # the stage's own bounds
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLflow tracking store {silent_server} is not usable"), \
            stage_run("verify"):
        pass
    assert time.monotonic() - started < 60


def log_stage(root: str, index: int) -> None:
    """One stage process: a run with 20 metric steps, as a training stage logs epochs."""
    import os

    os.environ["DVC_ROOT"] = root
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    with stage_run(f"train@m{index}") as run:
        for step in range(20):
            run.log_metrics({"val_accuracy": step / 20}, step=step)


@pytest.mark.fault
def test_concurrent_stages_on_one_sqlite_store_lose_no_runs(project, params_with, tmp_path):
    params = params_with()
    params["members"] = {f"m{i}": {"seed": i, "split": i} for i in range(4)}
    project(params)
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
