"""What the e2e tests do with a repo: run commands in it, read its MLflow store and dvc.lock, change its params."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import yaml

from tests.conftest import ROOT, commit_all, init_repo, subprocess_env

EXPERIMENT = "fashion-mnist"


def sh(repo: Path, *cmd: str, check: bool = True, env: dict[str, str | None] | None = None,
       timeout: float = 600) -> str:
    """Run a command in a test repo; `env` adds to (or, with None values, removes from) its environment."""
    environment = {**subprocess_env(), **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    done = subprocess.run(cmd, cwd=repo, env=environment, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{output[-6000:]}")
    return output


def ran(output: str) -> list[str]:
    """The stages `dvc repro` ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def copy_working_tree(target: Path) -> Path:
    """This working tree's files (tracked, and untracked but not ignored) in a new git repo, one commit; without
    the committed results (dvc.lock, metrics/), which belong to the default params, not to the CI profile."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    init_repo(target)
    commit_all(target, "copy of the working tree")
    return target


def client(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def all_runs(repo: Path) -> list:
    experiment = client(repo).get_experiment_by_name(EXPERIMENT)
    return client(repo).search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"],
                                    max_results=1000)


def runs(repo: Path) -> list:
    """Stage runs (the baselines' configurations excepted), oldest first."""
    return [r for r in all_runs(repo) if r.data.tags["stage"] != "pipeline" and
            r.data.tags["stage"] == r.info.run_name]


def pipelines(repo: Path) -> list:
    """Pipeline (parent) runs, oldest first."""
    return [r for r in all_runs(repo) if r.data.tags["stage"] == "pipeline"]


def children(repo: Path, parent) -> list[str]:
    return [r.info.run_name for r in runs(repo) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def cached_outputs(repo: Path) -> dict[str, str]:
    """{path: md5} that dvc.lock records for every output DVC caches (data, models); metrics and plots are
    `cache: false` and may carry timings."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        cached = {out.def_path for stage in dvc_repo.index.stages for out in stage.outs if out.use_cache}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])
            if out["path"] in cached}


def wait_for_queue(repo: Path, timeout_s: float = 400) -> str:
    """`dvc queue status` once nothing is queued or running (or at the deadline). Every few seconds: each `dvc`
    call costs seconds of CPU, taken from the experiments it waits for."""
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(5)
        status = sh(repo, "dvc", "queue", "status")
        if ("Queued" not in status and "Running" not in status) or time.monotonic() > deadline:
            return status
