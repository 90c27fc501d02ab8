"""Data-parallel training: the real train stage on 2 gloo processes under torchrun, in a tiny project the test
writes (learnable IDX images: class k is a bright block at position k)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from fmnist.training.distributed import threads_per_process
from tests.conftest import ROOT, block_images, real_params, subprocess_env, write_idx_files

# One xdist worker runs this module, so its module fixtures (a prepared project, one uninterrupted run) run once.
pytestmark = pytest.mark.xdist_group("ddp")
EPOCHS = 4
TRAIN = [sys.executable, "-m", "stages.train", "--member", "m0", "--data", "processed/train", "--model", "m0.pt",
         "--metrics", "m0.json", "--history", "m0.csv", "--resume", "resume/m0.pt"]


def project_env(project: Path) -> dict[str, str]:
    # A system metrics sample every half second: the tiny run takes seconds.
    return {**subprocess_env(), "DVC_ROOT": str(project), "PYTHONPATH": str(ROOT),
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"}


def run(project: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=project, env=project_env(project), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project with processed data and params for 2 training processes; copied by each test."""
    from dvc.repo import Repo

    from fmnist.data.arrays import save_arrays
    from fmnist.data.splits import preprocess
    from fmnist.params import parse_params

    project = tmp_path_factory.mktemp("ddp")
    images, labels = block_images(2000, 0)
    params = real_params()
    params["dataset"] = write_idx_files(project / "mirror", {
        "train_images": images, "train_labels": labels, "test_images": images[:100], "test_labels": labels[:100]},
        [f"c{i}" for i in range(10)])
    params["preprocess"]["n_splits"] = 1
    params["members"] = {"m0": {"seed": 0, "split": 0}}
    params["train"].update({"epochs": EPOCHS, "batch_size": 64, "processes": 2,
                            "augment": {"flip": False, "translate": 1, "erasing": 0.0}})
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")  # the stages' MLflow params are those it lists
    Repo.init(str(project), no_scm=True)
    save_arrays(project / "processed/train", preprocess(images, labels, parse_params(params).preprocess))
    return project


@pytest.fixture
def ddp_project(prepared, tmp_path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(prepared, copy)
    return copy


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> dict:
    """One uninterrupted 2-process run: its model bytes and history."""
    copy = tmp_path_factory.mktemp("uninterrupted") / "project"
    shutil.copytree(prepared, copy)
    done = run(copy, *TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"project": copy, "log": done.stderr, "model": (copy / "m0.pt").read_bytes(),
            "history": (copy / "m0.csv").read_text()}


def train_runs(project: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], "attributes.run_name = 'train@m0'")


def test_two_processes_lower_the_loss_and_record_one_run(uninterrupted):
    project = uninterrupted["project"]
    assert "2 process(es) x 1 threads" in uninterrupted["log"]
    history = [line.split(",") for line in uninterrupted["history"].splitlines()]
    columns = history[0]
    losses = [float(row[columns.index("train_loss")]) for row in history[1:]]
    assert len(losses) == EPOCHS and losses[-1] < losses[0] / 2
    assert float(history[-1][columns.index("val_accuracy")]) > 0.9  # chance is 0.1
    # rank 0 alone wrote: one MLflow run with one value per epoch, one set of outputs, no checkpoint left
    runs = train_runs(project)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["processes"] == "2" and runs[0].data.params["train.processes"] == "2"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == EPOCHS
    assert sorted(p.name for p in project.glob("m0.*")) == ["m0.csv", "m0.json", "m0.pt"]
    assert not any((project / "resume").glob("*"))


def test_every_process_records_system_metrics_in_the_members_run(uninterrupted):
    run = train_runs(uninterrupted["project"])[0]
    client = mlflow.MlflowClient(f"sqlite:///{uninterrupted['project'] / 'mlflow.db'}")
    for rank in (0, 1):
        for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "process_cpu_utilization_percentage",
                     "process_memory_rss_megabytes"):
            key = f"system/rank{rank}/{name}"
            assert key in run.data.metrics, sorted(k for k in run.data.metrics if k.startswith("system/"))
            assert len(client.get_metric_history(run.info.run_id, key)) >= 1
        # a training process holds the data and the net: well over the interpreter's own ~30 MB, under 4 GB
        assert 100 < run.data.metrics[f"system/rank{rank}/process_memory_rss_megabytes"] < 4000
        assert run.data.metrics[f"system/rank{rank}/process_cpu_utilization_percentage"] > 0
        # logged at the step of the epoch in progress: 1..EPOCHS, and EPOCHS + 1 for the sample after training
        steps = {m.step for m in client.get_metric_history(run.info.run_id,
                                                           f"system/rank{rank}/process_memory_rss_megabytes")}
        assert steps <= set(range(1, EPOCHS + 2)) and EPOCHS + 1 in steps, steps
    assert not any(k.startswith("system/") and "/rank" not in k for k in run.data.metrics)  # all under a rank


def test_the_best_checkpoint_is_a_logged_model_with_its_validation_scores(uninterrupted):
    project = uninterrupted["project"]
    run = train_runs(project)[0]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert len(models) == 1 and models[0].source_run_id == run.info.run_id
    summary = json.loads((project / "m0.json").read_text())
    linked = {m.key: m for m in models[0].metrics}
    assert {"val_loss", "val_accuracy", "train_loss"} <= set(linked)
    # all of them the best epoch's: its training scores and the system samples taken while it trained
    assert {m.step for m in models[0].metrics} == {summary["best_epoch"]}
    assert linked["val_accuracy"].value == pytest.approx(summary["val_accuracy"], abs=1e-6)
    assert linked["val_loss"].value == pytest.approx(summary["val_loss"], abs=1e-6)
    assert linked["val_accuracy"].run_id == run.info.run_id
    # the logged model is the member file's weights: the same predictions on the same input
    import torch

    from fmnist.model.members import load_member

    member, _ = load_member(project / "m0.pt")
    x = torch.randn(2, 1, 28, 28)
    logged = mlflow.pytorch.load_model(f"models:/{models[0].model_id}")
    with torch.no_grad():
        assert torch.allclose(logged(x), member.float()(x), atol=1e-4)


def worker_pid(project: Path, rank: int) -> int | None:
    """The pid of the training worker with this rank running in `project` (torchrun sets RANK in its env)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != str(project):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ):
            return int(entry.name)
    return None


def start_until_first_checkpoint(project: Path) -> subprocess.Popen:
    """The 2-process stage, started and left running once rank 0 has saved epoch 1's checkpoint."""
    stage = subprocess.Popen(TRAIN, cwd=project, env=project_env(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 300
    while not (project / "resume" / "m0.pt").exists():
        assert stage.poll() is None and time.monotonic() < deadline, "the stage ended before its first checkpoint"
        time.sleep(0.02)
    return stage


@pytest.mark.fault
def test_a_killed_rank_fails_the_stage_and_a_rerun_resumes_to_the_same_weights(uninterrupted, ddp_project):
    stage = start_until_first_checkpoint(ddp_project)
    pid = worker_pid(ddp_project, 1)
    assert pid is not None, "no rank-1 worker found"
    os.kill(pid, signal.SIGKILL)
    output, _ = stage.communicate(timeout=300)
    assert stage.returncode == 1, output[-3000:]
    assert "a training process failed" in output and "rerunning the stage resumes from it" in output
    # rank 0 says in one line why it stops, whichever reaches it first: gloo's lost connection or torchrun's SIGTERM
    assert ("training process rank 0 of 2 stops: rank 1 failed" in output or "stopped by SIGTERM" in output), output
    assert "DistBackendError" not in output and "gloo/transport" not in output, output[-3000:]
    # torchrun's own report is one line, not its traceback and summary table
    assert re.search(r"torchrun: training process rank [01] failed first \((killed by SIG\w+|exit code \d+)\)",
                     output), output[-3000:]
    assert "ChildFailedError" not in output and "Traceback" not in output, output[-3000:]
    assert not (ddp_project / "m0.pt").exists() and not (ddp_project / "m0.json").exists()  # nothing half-written
    assert (ddp_project / "resume" / "m0.pt").exists()
    # rank 0 ends its run FAILED whether gloo's broken connection or torchrun's SIGTERM reaches it first
    assert [r.info.status for r in train_runs(ddp_project)] == ["FAILED"]
    resumed = run(ddp_project, *TRAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from resume/m0.pt after epoch" in resumed.stderr
    # two executions of the 2-process stage, one of them killed and resumed, give the same bytes
    assert (ddp_project / "m0.pt").read_bytes() == uninterrupted["model"]
    assert (ddp_project / "m0.csv").read_text().split("seconds")[0] == uninterrupted["history"].split("seconds")[0]
    assert sorted(r.info.status for r in train_runs(ddp_project)) == ["FAILED", "FINISHED"]


@pytest.mark.fault
def test_sigterm_to_the_stage_stops_every_process_and_fails_its_run(ddp_project):
    stage = start_until_first_checkpoint(ddp_project)
    workers = [worker_pid(ddp_project, rank) for rank in (0, 1)]
    assert None not in workers, "no training workers found"
    stage.send_signal(signal.SIGTERM)  # what a CI cancel or `kill` sends; only the stage's own pid
    output, _ = stage.communicate(timeout=120)
    assert stage.returncode == 1, output[-3000:]
    assert "stopped by SIGTERM" in output and "rerunning the stage resumes from it" in output
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # no worker trains on, orphaned
    assert not (ddp_project / "m0.pt").exists() and (ddp_project / "resume" / "m0.pt").exists()
    assert [r.info.status for r in train_runs(ddp_project)] == ["FAILED"]


def test_threads_are_split_between_the_processes():
    assert threads_per_process(8, 2) == 4 and threads_per_process(2, 2) == 1 and threads_per_process(1, 4) == 1
    assert threads_per_process(0, 1) == len(os.sched_getaffinity(0))
