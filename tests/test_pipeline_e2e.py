"""The real pipeline on the real data, in a temporary git+DVC copy of this repo."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import ROOT, real_params

pytestmark = pytest.mark.e2e

DEBIAN_DATA = Path(real_params()["dataset"]["mirrors"][0]["location"])
if not DEBIAN_DATA.is_dir():
    pytest.skip(f"{DEBIAN_DATA} missing: install the Debian package dataset-fashion-mnist", allow_module_level=True)


def sh(repo: Path, *cmd: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{output}")
    return output


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """This working tree (tracked and untracked-not-ignored files) as a fresh git repo, one commit."""
    repo = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def runs(repo: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_repro_runs_the_data_stages_and_logs_one_run_each(repo):
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["download", "verify", "preprocess"]
    verify = yaml.safe_load((repo / "metrics/verify.json").read_text())
    assert verify["train_count"] == 60000 and verify["sha256_checked"] == 4
    metrics = yaml.safe_load((repo / "metrics/preprocess.json").read_text())
    assert (metrics["val_count"], metrics["fit_count"]) == (12000, 48000)
    assert metrics["pixel_mean"] == pytest.approx(0.2860, abs=1e-4)
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    logged = runs(repo)
    assert [r.info.run_name for r in logged] == ["download", "verify", "preprocess"]
    for run in logged:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == run.info.run_name and run.data.tags["git_commit"] == head
        assert len(run.data.tags["params_hash"]) == 16


def test_second_repro_reruns_nothing(repo):
    output = sh(repo, "dvc", "repro", "preprocess")
    assert ran(output) == [] and "up to date" in output
    assert len(runs(repo)) == 3


def test_changing_a_preprocess_param_reruns_preprocess_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["seed"] = 43
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["preprocess"]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "seed 43")


def test_bad_param_fails_before_any_work(repo):
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(original.replace("val_fraction: 0.2", "val_fraction: 1.2"))
    try:
        output = sh(repo, "dvc", "repro", "preprocess", check=False)
    finally:
        params_file.write_text(original)
    assert "preprocess.val_fraction: Input should be less than 1 (got 1.2)" in output
    assert "Traceback" not in output


def test_queued_experiment_logs_into_the_root_store(repo):
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "preprocess.seed=7", "preprocess")
    sh(repo, "dvc", "queue", "start", "-j", "1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Success" in status, status
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    queued = [r for r in runs(repo) if "dvc_exp_name" in r.data.tags]
    assert [r.info.run_name for r in queued] == ["preprocess"]
    assert queued[0].data.tags["dvc_exp_baseline_rev"] == head
    assert queued[0].data.params["preprocess.seed"] == "7"
