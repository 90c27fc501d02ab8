"""The PR workflow and the shell scripts through their linters, offline, from wheels the lock pins: zizmor at its
strictest persona, ShellCheck. Any finding fails."""
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, subprocess_env

BIN = Path(sys.executable).parent


def test_zizmor_finds_nothing_in_the_workflows():
    done = subprocess.run([str(BIN / "zizmor"), "--offline", "--persona=auditor", ".github/workflows"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_shellcheck_finds_nothing_in_the_scripts():
    scripts = [".ci/run", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github").glob("*.sh"))]
    assert len(scripts) >= 3
    done = subprocess.run([str(BIN / "shellcheck"), *scripts], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
