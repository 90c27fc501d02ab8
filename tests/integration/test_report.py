"""The PR report and regression gate, on a temporary git + DVC repo with two commits whose metrics differ."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, commit_all, git, init_repo, require, subprocess_env

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
    report = (repo / "report.md").read_text().splitlines()
    assert report[2].startswith("**❌ Gate failed** (tolerances from `HEAD`")  # the verdict, first
    assert "| `ensemble_accuracy` | 94.00% | 93.00% | -1.00 pts | 0.30 pts | ▼ worse |" in report
    assert "| `ensemble_log_loss` | 0.25 | 0.26 | +0.01 | 0.01 | ▲ worse |" in report
    assert "- `evaluate.ece_bins`: 15 → 10" in report


def test_an_improvement_passes_the_gate(repo):
    write_metrics(repo, 0.945, 0.24)
    done = run(repo, "fmnist", "report", "--base", "HEAD", "--fail-on-regression")
    assert done.returncode == 0, done.stderr
    assert "| `ensemble_accuracy` | 94.00% | 94.50% | +0.50 pts | 0.30 pts | ▲ better |" in done.stdout
    assert "**✅ Gate passed**" in done.stdout


def test_two_commits_compare_as_revisions_whatever_the_workspace_holds(repo):
    write_metrics(repo, 0.90, 0.40)
    commit_all(repo, "worse")
    write_metrics(repo, 0.99, 0.01)  # uncommitted: must not show up
    done = run(repo, "fmnist", "report", "--base", "HEAD~1", "--head", "HEAD",
               "--fail-on-regression")
    assert done.returncode == 1
    assert "| `ensemble_accuracy` | 94.00% | 90.00% | -4.00 pts | 0.30 pts | ▼ worse |" in done.stdout
    head = git(repo, "rev-parse", "HEAD").strip()
    assert f"→ `HEAD` ({head[:12]})" in done.stdout


def test_changed_params_without_new_metrics_are_flagged(repo):
    params = (repo / "params.yaml").read_text().replace("ece_bins: 15", "ece_bins: 10")
    (repo / "params.yaml").write_text(params)
    done = run(repo, "fmnist", "report", "--base", "HEAD")
    assert done.returncode == 0
    assert "⚠️ **No metric changed although params did**: rerun the pipeline" in done.stdout


@pytest.mark.fault
def test_a_change_cannot_loosen_its_own_gate_or_turn_a_direction_around(repo):
    write_metrics(repo, 0.93, 0.26)
    params = (repo / "params.yaml").read_text()
    loosened = params.replace("{metric: ensemble_accuracy, max_worsening: 0.003}",
                              "{metric: ensemble_accuracy, max_worsening: 0.5}").replace(
        '{pattern: "*accuracy*", better: higher}', '{pattern: "*accuracy*", better: lower}')
    assert loosened.count("0.5}") == 1 and "better: lower}" in loosened
    (repo / "params.yaml").write_text(loosened)
    done = run(repo, "fmnist", "report", "--base", "HEAD", "--fail-on-regression")
    assert done.returncode == 1, done.stdout
    assert "more than the allowed 0.003" in done.stderr  # the base revision's tolerance and direction
    base = git(repo, "rev-parse", "HEAD").strip()
    assert f"**❌ Gate failed** (tolerances from `HEAD` ({base[:12]}))" in done.stdout


def png(path: Path, shade: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 40), (shade, 90, 160)).save(path)


def write_revision(repo: Path, accuracy: float, std: float, seconds: float, per_second: float, shade: int,
                   epochs: int) -> None:
    """The files a pipeline run commits, small: metrics, a member's history, a picture."""
    (repo / "metrics/train").mkdir(parents=True, exist_ok=True)
    (repo / "metrics/history").mkdir(parents=True, exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps({
        "ensemble_accuracy": accuracy, "members_accuracy_mean": accuracy - 0.004, "members_accuracy_std": std,
        "ensemble_log_loss": 0.2 - accuracy / 10, "ensemble_ece": 0.006, "per_class_f1": {"Coat": accuracy - 0.1}}))
    (repo / "metrics/ensemble.json").write_text(json.dumps({"members": epochs // 10, "temperature_m0": 0.6 + std}))
    (repo / "metrics/train/m0.json").write_text(json.dumps({"train_seconds": seconds,
                                                            "images_per_second": per_second, "epochs": epochs}))
    (repo / "metrics/history/m0.csv").write_text("epoch,val_loss,val_accuracy\n" + "".join(
        f"{e},{1 / e:.4f},{accuracy - 0.1 / e:.4f}\n" for e in range(1, epochs + 1)))
    png(repo / "plots/confusion_matrix.png", shade)


DVC_YAML_FULL = """stages:
  evaluate:
    cmd: "true"
    params: [evaluate]
    metrics:
      - metrics/evaluate.json: {cache: false}
      - metrics/ensemble.json: {cache: false}
      - metrics/train/m0.json: {cache: false}
"""


def test_the_report_reads_in_ten_seconds_and_its_html_renders_in_chromium(repo, tmp_path):
    (repo / "dvc.yaml").write_text(DVC_YAML_FULL)
    write_revision(repo, 0.943, 0.0014, 700.0, 4000.0, 40, 22)
    commit_all(repo, "base: 22 epochs")
    write_revision(repo, 0.9491, 0.0007, 760.0, 2400.0, 200, 38)
    params = (repo / "params.yaml").read_text().replace("epochs: 38", "epochs: 39")
    (repo / "params.yaml").write_text(params)
    commit_all(repo, "head: longer")
    done = run(repo, "fmnist", "report", "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md",
               "--html", "out/report.html")
    assert done.returncode == 0, done.stderr
    lines = (repo / "out/report.md").read_text().splitlines()
    # Headline first: the verdict, then the headline table in params' order, then the params, one line each
    assert lines[2].startswith("**✅ Gate passed**") and "`ensemble_accuracy` +0.61 pts" in lines[2]
    table = [line.split(" | ")[0].strip("| ") for line in lines[4:10]]
    assert table[2:] == ["`ensemble_accuracy`", "`members_accuracy_mean` ± std", "`ensemble_log_loss`",
                         "`ensemble_ece`"]
    assert "| `members_accuracy_mean` ± std | 93.90% ± 0.14 | 94.51% ± 0.07 | +0.61 pts | 0.30 pts | ▲ better |" \
        in lines
    assert lines[11:14] == ["**Params**: 1 changed", "", "- `train.epochs`: 38 → 39"]
    text = "\n".join(lines)
    # Declared directions: no verdict for a temperature or a count; timings flagged only beyond ±25%
    assert "| `temperature_m0` | metrics/ensemble.json | 0.6014 | 0.6007 | -0.0007 |  |" in text
    assert "| `members` | metrics/ensemble.json | 2 | 3 | +1 |  |" in text
    assert "| `train_seconds` | metrics/train/m0.json | 700 | 760 | +60 | within ±25% |" in text
    assert "| `images_per_second` | metrics/train/m0.json | 4000 | 2400 | -1600 | ⚠️ -40%, worse |" in text
    # Everything after the headline is collapsed
    summaries = [line for line in lines if line.startswith("<details")]
    assert summaries == ["<details><summary>Members: 3 changed</summary>",
                         "<details><summary>Per-class scores: 1 changed</summary>",
                         "<details><summary>Timings and throughput (host-dependent): 1 of 2 changed by more than "
                         "±25%</summary>",
                         "<details><summary>Pictures: 2 changed</summary>"]
    assert text.index("**Params**") < text.index("<details>")
    # The pictures: both revisions side by side, and the training curves of both on one chart, files beside it
    images = [line for line in lines if "<img " in line]
    assert 'src="report-assets/training_curves.png"' in images[0]
    assert images[1].count("<img ") == 2 and 'src="report-assets/base/confusion_matrix.png"' in images[1] \
        and 'src="report-assets/head/confusion_matrix.png"' in images[1]
    for source in ("training_curves.png", "base/confusion_matrix.png", "head/confusion_matrix.png"):
        assert (repo / "out/report-assets" / source).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rendered = chromium_dom(repo / "out/report.html", tmp_path / "screenshot.png")
    assert 'data-rendered="yes"' in rendered and 'data-images="3"' in rendered and 'data-decoded="3"' in rendered
    assert "94.51% ± 0.07" in rendered and (tmp_path / "screenshot.png").stat().st_size > 10000


def chromium_dom(page: Path, screenshot: Path) -> str:
    """The page as headless Chromium rendered it (its DOM once loaded), and a screenshot of it."""
    binary = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    if binary is None:
        require("headless Chromium", "Debian: apt-get install chromium (`make chromium` does it, with sudo -n where "
                "you are not root)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--virtual-time-budget=5000", f"--user-data-dir={screenshot.parent / 'chromium-profile'}"]
    shot = subprocess.run([binary, *flags, f"--screenshot={screenshot}", "--window-size=1280,1800",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    dom = subprocess.run([binary, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console  # the page's own
    return dom.stdout
