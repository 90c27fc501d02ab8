"""Params profiles: an override file laid over params.yaml, validated before it is written."""
import argparse
import difflib
import importlib.util

import numpy as np
import pytest

from fmnist.cli import profile
from fmnist.cli.profile import apply_profile, merge, read_yaml
from fmnist.params import Params, ParamsError, parse_params
from tests.conftest import ROOT, real_params


def committed_profile_applied(name: str) -> Params:
    """params.yaml with profiles/<name> laid over it, as `fmnist profile` would write it."""
    source = f"profiles/{name}"
    return parse_params(apply_profile(real_params(), read_yaml(ROOT / source), source))


def test_mappings_merge_and_listed_sections_are_replaced():
    base = {"train": {"epochs": 24, "lr": 0.2}, "members": {"m0": {"seed": 0}, "m1": {"seed": 1}}}
    merged = merge(base, {"train": {"epochs": 2}, "members": {"m0": {"seed": 5}}}, frozenset({"members"}))
    assert merged == {"train": {"epochs": 2, "lr": 0.2}, "members": {"m0": {"seed": 5}}}
    assert base["train"]["epochs"] == 24  # the input is not modified


def test_the_ci_profile_yields_valid_small_params():
    params = committed_profile_applied("ci.yaml")
    assert params.preprocess.train_subset == 3000 and params.train.epochs == 2
    assert list(params.members) == ["m0", "m1"] and params.train.lr == real_params()["train"]["lr"]


def test_the_gpu_profile_yields_valid_params_for_a_wide_resnet_on_cuda():
    params = committed_profile_applied("gpu.yaml")
    assert params.train.net == "wrn-16-8" and params.train.device == "cuda" and params.train.compile
    assert params.preprocess.val_fraction == 0.05 and params.preprocess.n_splits == real_params()["preprocess"]["n_splits"]
    assert list(params.members) == list(real_params()["members"])  # the ensemble stays as it is


def test_the_gpu_fast_profile_is_the_fast_net_on_cuda_in_large_uncompiled_batches():
    params = committed_profile_applied("gpu-fast.yaml")
    assert (params.train.net, params.train.device, params.train.batch_size, params.train.epochs) == \
        ("fast_whiten", "cuda", 1024, 24)
    assert not params.train.compile and params.train.processes == 1
    assert list(params.members) == list(real_params()["members"])


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_lays_profiles_then_settings_over_params_in_memory_only(monkeypatch):
    bench = _bench_module()
    monkeypatch.chdir(ROOT)
    before = (ROOT / "params.yaml").read_bytes()
    params = bench.bench_params([ROOT / "profiles" / "gpu-fast.yaml"],
                                [bench.setting("train.batch_size=512"), bench.setting("train.lr=0.3")])
    assert (params.train.net, params.train.batch_size, params.train.lr, params.train.epochs) == \
        ("fast_whiten", 512, 0.3, 24)
    assert (ROOT / "params.yaml").read_bytes() == before


def test_the_bench_precision_and_batch_flags_reach_the_members_it_trains(monkeypatch):
    bench = _bench_module()
    monkeypatch.chdir(ROOT)
    params = bench.bench_params([], [bench.setting("train.lr=0.3"), *bench.flag_settings("fp32", 128)])
    assert (params.train.precision, params.train.batch_size, params.train.lr) == ("fp32", 128, 0.3)
    default = bench.bench_params([], bench.flag_settings(None, None))
    assert (default.train.precision, default.train.batch_size) == (real_params()["train"]["precision"],
                                                                   real_params()["train"]["batch_size"])


@pytest.mark.fault
def test_a_bench_setting_with_a_typo_or_no_value_fails_naming_it(monkeypatch):
    bench = _bench_module()
    monkeypatch.chdir(ROOT)
    with pytest.raises(ParamsError, match=r"train.batchsize: unknown key"):
        bench.bench_params([], [bench.setting("train.batchsize=5")])
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE.*'train.lr'"):
        bench.setting("train.lr")


def test_the_cpu_long_profile_is_the_measured_recipe_five_members_of_44_epochs_and_nothing_else():
    default = parse_params(real_params())
    params = committed_profile_applied("cpu-long.yaml")
    assert params.train.epochs == 44 and params.train.net == "fast"  # the net its figures were measured with
    assert {name: (m.seed, m.split) for name, m in params.members.items()} == {f"m{i}": (i, i) for i in range(5)}
    assert params.train.model_copy(update={"epochs": default.train.epochs, "net": default.train.net}) == default.train
    assert params.model_copy(update={"train": default.train, "members": default.members}) == default


@pytest.mark.fault
def test_a_profile_with_a_typo_fails_naming_the_key():
    with pytest.raises(ParamsError, match=r"params.yaml with p.yaml: 1 invalid.*\n  train.epoch: unknown key"):
        apply_profile(real_params(), {"train": {"epoch": 2}}, "p.yaml")
    with pytest.raises(ParamsError, match="`replace` must be a list of dotted keys"):
        apply_profile(real_params(), {"replace": "members"}, "p.yaml")


def test_the_cpu_fast_profile_changes_only_the_net_and_the_epochs():
    default = parse_params(real_params())
    params = committed_profile_applied("cpu-fast.yaml")
    assert (params.train.net, params.train.epochs) == ("fast_pool", 22)
    assert params.train.model_copy(update={"epochs": default.train.epochs, "net": default.train.net}) == default.train
    assert params.model_copy(update={"train": default.train}) == default


CI_PROFILE_KEYS = {"train_subset", "epochs", "processes", "threads", "samples", "m0", "m1", "m2"}


def test_applying_a_profile_changes_its_values_and_keeps_every_comment_of_params_yaml(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    profile.run(argparse.Namespace(params=params_file, profile=ROOT / "profiles" / "ci.yaml"))
    before, after = (ROOT / "params.yaml").read_text().splitlines(), params_file.read_text().splitlines()
    comments = [line.split("#", 1)[1] for line in before if "#" in line]
    assert comments == [line.split("#", 1)[1] for line in after if "#" in line]
    # What was written is what the profile means (apply_profile), and only the lines holding its values changed.
    assert read_yaml(params_file) == apply_profile(real_params(), read_yaml(ROOT / "profiles/ci.yaml"), "ci.yaml")
    changed = [line[2:] for line in difflib.ndiff(before, after) if line[:2] in ("- ", "+ ")]
    assert changed and all(line.lstrip().split(":")[0] in CI_PROFILE_KEYS for line in changed), changed
    assert f"{params_file}: applied" in capsys.readouterr().out


def test_the_bench_epoch_is_a_splits_fit_images_or_with_fit_on_all_every_training_image(tmp_path):
    bench = _bench_module()
    params = parse_params(real_params())
    (tmp_path / "train").mkdir()
    is_val = np.zeros((5, 50), dtype=bool)
    is_val[0, :10] = True
    np.save(tmp_path / "train/is_val.npy", is_val)
    assert bench.epoch_images(tmp_path, params) == 40
    assert bench.epoch_images(tmp_path, params, "all") == 50
    assert bench.epoch_images(tmp_path / "absent", params, "all") == params.dataset.train_count
