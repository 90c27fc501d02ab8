"""The one pipeline run the e2e tests share: this working tree as a fresh git repo, the CI profile applied, and
`dvc repro` on the real data, which the pipeline gets the way it always does (params' mirrors in order: the Debian
package's directory, then the official URLs).

It starts in the background as soon as a session that selected e2e tests begins (tests/conftest.py), so that the
unit and integration tiers run beside it; the first e2e test waits for it. A directory per test run, shared by
pytest-xdist's workers, holds it; a file lock lets one worker start it and one commit its results. (Interrupted,
the session leaves it running to its end, a minute or two: it belongs to no worker.)"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from filelock import FileLock

from tests.conftest import commit_all, require, subprocess_env
from tests.e2e.repos import copy_working_tree, sh

TIMEOUT_S = 1200


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's directory that every xdist worker sees (each worker's own is the run's popen-gw<N>)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def start(shared: Path) -> None:
    """Start the prepared run in the background, unless a worker already did."""
    home = shared / "prepared"
    with FileLock(shared / "prepared.lock"):
        if home.exists():
            return
        repo = copy_working_tree(home / "repo")
        sh(repo, "fmnist", "profile", "profiles/ci.yaml")
        with open(home / "repro.log", "w") as log:
            subprocess.Popen(["sh", "-c", "dvc repro; echo $? > ../repro.rc.tmp && mv ../repro.rc.tmp ../repro.rc"],
                             cwd=repo, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True,  # a worker's Ctrl-C or exit does not cut it short
                             preexec_fn=every_core)


def every_core() -> None:
    """The prepared run may use every core, not only the share of the xdist worker that starts it."""
    if os.environ.get("FMNIST_TEST_CORES"):
        os.sched_setaffinity(0, {int(core) for core in os.environ["FMNIST_TEST_CORES"].split(",")})


def wait(shared: Path) -> Path:
    """The prepared repo once its run has ended well, its results committed; a clear failure (or, outside CI, a
    skip) when the dataset could not be had."""
    start(shared)
    home = shared / "prepared"
    deadline = time.monotonic() + TIMEOUT_S
    while not (home / "repro.rc").exists():
        if time.monotonic() > deadline:
            pytest.fail(f"the prepared pipeline run did not end in {TIMEOUT_S} s; its log: {home / 'repro.log'}")
        time.sleep(1)
    log = (home / "repro.log").read_text()
    if int((home / "repro.rc").read_text()) != 0:
        if "no mirror could provide" in log:
            require("the Fashion-MNIST dataset", "apt-get install dataset-fashion-mnist (`make dataset-package` "
                    "does it, with sudo -n where you are not root), or network access to the official mirror")
        pytest.fail(f"the prepared pipeline run (CI profile) failed:\n{log[-6000:]}", pytrace=False)
    with FileLock(shared / "prepared.lock"):
        if not (home / "committed").exists():
            commit_all(home / "repo", "CI profile and its results")
            (home / "committed").touch()
    return home / "repo"
