"""The PR report and regression gate, on a temporary git + DVC repo with two commits whose metrics differ."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, commit_all, git, init_repo, subprocess_env

DVC_YAML = """stages:
  evaluate:
    cmd: "true"
    params: [evaluate]
    metrics:
      - metrics/evaluate.json:
          cache: false
"""


def run(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=repo, env=subprocess_env(), capture_output=True, text=True, timeout=120)


def write_metrics(repo: Path, accuracy: float, log_loss: float) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps({"ensemble_accuracy": accuracy,
                                                            "ensemble_log_loss": log_loss}))


@pytest.fixture
def repo(tmp_path) -> Path:
    """Commit 1: accuracy 0.94. The workspace is then changed by each test."""
    repo = init_repo(tmp_path / "repo")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_metrics(repo, 0.94, 0.25)
    assert run(repo, "dvc", "init", "-q").returncode == 0
    commit_all(repo, "base")
    return repo


def test_a_drop_beyond_tolerance_is_reported_and_fails_the_gate(repo):
    write_metrics(repo, 0.93, 0.26)
    params = (repo / "params.yaml").read_text().replace("ece_bins: 15", "ece_bins: 10")
    (repo / "params.yaml").write_text(params)
    done = run(repo, "fmnist", "report", "--base", "HEAD", "--out", "report.md",
               "--fail-on-regression")
    assert done.returncode == 1
    assert "ensemble_accuracy got worse by 0.01 (0.94 -> 0.93), more than the allowed 0.003" in done.stderr
    report = (repo / "report.md").read_text()
    assert "| metrics/evaluate.json | ensemble_accuracy | 0.94 | 0.93 | -0.01 | ▼ worse |" in report
    assert "| metrics/evaluate.json | ensemble_log_loss | 0.25 | 0.26 | 0.01 | ▲ worse |" in report
    assert "| params.yaml | evaluate.ece_bins | 15 | 10 |" in report
    assert "❌ metrics/evaluate.json: ensemble_accuracy got worse" in report


def test_an_improvement_passes_the_gate(repo):
    write_metrics(repo, 0.945, 0.24)
    done = run(repo, "fmnist", "report", "--base", "HEAD", "--fail-on-regression")
    assert done.returncode == 0, done.stderr
    assert "| ensemble_accuracy | 0.94 | 0.945 | 0.005 | ▲ better |" in done.stdout
    assert "✅ no gated metric regressed" in done.stdout


def test_two_commits_compare_as_revisions_whatever_the_workspace_holds(repo):
    write_metrics(repo, 0.90, 0.40)
    commit_all(repo, "worse")
    write_metrics(repo, 0.99, 0.01)  # uncommitted: must not show up
    done = run(repo, "fmnist", "report", "--base", "HEAD~1", "--head", "HEAD",
               "--fail-on-regression")
    assert done.returncode == 1
    assert "| ensemble_accuracy | 0.94 | 0.9 | -0.04 | ▼ worse |" in done.stdout
    head = git(repo, "rev-parse", "HEAD").strip()
    assert f"→ `HEAD` ({head[:12]})" in done.stdout
    back = run(repo, "fmnist", "report", "--base", "HEAD", "--head", "HEAD~1",
               "--fail-on-regression")
    assert back.returncode == 0 and "| ensemble_accuracy | 0.9 | 0.94 | 0.04 | ▲ better |" in back.stdout


def test_changed_params_without_new_metrics_are_flagged(repo):
    params = (repo / "params.yaml").read_text().replace("ece_bins: 15", "ece_bins: 10")
    (repo / "params.yaml").write_text(params)
    done = run(repo, "fmnist", "report", "--base", "HEAD")
    assert done.returncode == 0
    assert "⚠️ No metric changed although params did: rerun the pipeline" in done.stdout


@pytest.mark.fault
def test_a_change_cannot_loosen_its_own_gate(repo):
    write_metrics(repo, 0.93, 0.26)
    loosened = (repo / "params.yaml").read_text().replace("{metric: ensemble_accuracy, max_worsening: 0.003}",
                                                          "{metric: ensemble_accuracy, max_worsening: 0.5}")
    assert loosened != (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(loosened)
    done = run(repo, "fmnist", "report", "--base", "HEAD", "--fail-on-regression")
    assert done.returncode == 1, done.stdout
    assert "more than the allowed 0.003" in done.stderr  # the base revision's tolerance, not the 0.5
    base = git(repo, "rev-parse", "HEAD").strip()
    assert f"Tolerances of `report.gates` from `HEAD` ({base[:12]})." in done.stdout
