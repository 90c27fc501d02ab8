"""A full disk is a failure, not a warning: with the DVC cache on a small tmpfs, outputs dvc.lock names that did not
fit in the cache fail `fmnist cached` (what `make repro` runs after `dvc repro`) and `fmnist share push`, naming
them and the free space; nothing cached is corrupt; once there is room, `dvc commit -f` caches them."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import commit_all, init_repo, require, subprocess_env

# A directory output, as preprocess writes: DVC transfers its files one by one and reports each failure.
# A directory output, as preprocess writes (DVC copies its files into the cache one by one); the same bytes on
# every run, as this pipeline's outputs are.
MAKE = ("import os; os.makedirs('arrays'); [open(f'arrays/{i}.npy', 'wb').write(bytes([i]) * (2**20 + i)) "
        "for i in range(6)]; open('small.txt', 'w').write('small')")


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=repo, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def privileged() -> list[str] | None:
    """How this test may mount: as root, or through sudo without a password (a GitHub runner)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs (32 MiB until the test shrinks it), unmounted afterwards; and how to resize it."""
    sudo = privileged()
    if sudo is None:
        require("a way to mount a small tmpfs", "run the tests as root or with passwordless sudo (as CI does)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", "size=32m,mode=1777", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        require("permission to mount a tmpfs (CAP_SYS_ADMIN)", f"mount said: {done.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run([*sudo, "mount", "-o", f"remount,size={size}", str(mount)], check=True)
    try:
        yield mount, resize
    finally:
        subprocess.run([*sudo, "umount", "-l", str(mount)], check=True)


@pytest.mark.fault
def test_outputs_a_full_disk_kept_out_of_the_cache_fail_the_check_and_the_push(small_filesystem, tmp_path):
    mount, resize = small_filesystem
    repo = init_repo(tmp_path / "repo")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {
        "cmd": f'python -c "{MAKE}"', "outs": ["arrays", "small.txt"]}}}))
    sh(repo, "dvc", "init", "-q")
    sh(repo, "dvc", "cache", "dir", str(mount / "cache"))
    sh(repo, "dvc", "remote", "add", "-d", "team", str(tmp_path / "remote"))
    sh(repo, "dvc", "repro")
    commit_all(repo, "6 MiB of outputs, cached")
    assert "every output dvc.lock names is in the DVC cache" in sh(repo, "fmnist", "cached").stdout

    # The same commit rerun where the cache has no room for them: dvc.lock names them, the cache lacks them
    shutil.rmtree(mount / "cache" / "files")
    resize("4m")
    rerun = sh(repo, "dvc", "repro", "-f", check=False)
    assert "No space left on device" in rerun.stdout + rerun.stderr
    check = sh(repo, "fmnist", "cached", check=False)
    assert check.returncode == 1, check.stdout
    assert f"outputs dvc.lock names are not in the DVC cache {mount / 'cache'} (" in check.stderr, check.stderr
    assert "MiB free of 4.0 MiB): arrays, small.txt" in check.stderr and "dvc commit -f" in check.stderr
    push = sh(repo, "fmnist", "share", "push", check=False)
    assert push.returncode == 1 and "not in the DVC cache" in push.stderr and "arrays, small.txt" in push.stderr
    assert not (tmp_path / "remote").exists()  # nothing pushed
    # What did get into the cache is whole: each object's bytes hash to its name (DVC's own temp files aside)
    objects = [path for path in (mount / "cache" / "files" / "md5").glob("??/*") if re.fullmatch(r"[0-9a-f]{30}",
                                                                                                 path.name)]
    assert all(hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name for path in objects)

    resize("32m")
    sh(repo, "dvc", "commit", "-f")
    assert "every output dvc.lock names is in the DVC cache" in sh(repo, "fmnist", "cached").stdout
