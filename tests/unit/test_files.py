"""Outputs are written atomically, with normal permissions, and no model file is ever unpickled: a full disk or an
interruption mid-write keeps what was there. (`pytest -m fault` runs every fault case of the suite.)"""
import ast
import errno

import pytest

from fmnist.files import atomic_dir, atomic_path
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


def test_an_interrupted_directory_write_leaves_the_previous_directory(tmp_path):
    target = tmp_path / "train"
    target.mkdir()
    (target / "images.npy").write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "images.npy").write_text("new, half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["train"]
    assert (target / "images.npy").read_text() == "previous"


def test_every_torch_load_in_the_package_refuses_pickled_code():
    calls = []
    for module in sorted([*(ROOT / "fmnist").rglob("*.py"), *(ROOT / "stages").glob("*.py")]):
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


@pytest.mark.fault
def test_a_stage_that_knows_its_output_size_refuses_a_disk_without_room_for_it_and_its_cache_copy(tmp_path,
                                                                                                  monkeypatch):
    import shutil
    from collections import namedtuple

    from fmnist.errors import StageError
    from fmnist.space import require_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**20, 70 * 2**20, 30 * 2**20))
    require_space(tmp_path / "out" / "train", 15 * 2**20, "the arrays", cache=tmp_path)  # 2 x 15 MiB fit
    with pytest.raises(StageError) as full:
        require_space(tmp_path / "out" / "train", 20 * 2**20, "the arrays", cache=tmp_path)
    assert str(full.value) == (
        f"not enough space for the arrays in {tmp_path.resolve()}: 40.0 MiB needed (20.0 MiB of outputs, and as much "
        "again for the DVC cache on the same filesystem), 30.0 MiB free. Nothing was written; free space and rerun "
        "the stage")
    assert not (tmp_path / "out").exists()
