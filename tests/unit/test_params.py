import pytest
import yaml

from fmnist.data.checks import dataset_files
from fmnist.params import ParamsError, load_params, parse_params
from tests.conftest import ROOT, real_params


def test_the_repo_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.dataset.name == "fashion-mnist"
    assert len(params.dataset.classes) == 10
    assert [spec.name for _, spec in dataset_files(params.dataset.files)] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz"]


def error_for(mutate) -> str:
    params = real_params()
    mutate(params)
    with pytest.raises(ParamsError) as caught:
        parse_params(params)
    return str(caught.value)


@pytest.mark.fault
def test_unknown_key_is_named():
    message = error_for(lambda p: p["preprocess"].update(n_split=3))
    assert "preprocess.n_split: unknown key" in message


@pytest.mark.fault
def test_unknown_section_is_named():
    assert "trian: unknown key" in error_for(lambda p: p.update(trian={}))


@pytest.mark.fault
def test_wrong_type_is_named_with_the_value():
    message = error_for(lambda p: p["preprocess"].update(n_splits="five"))
    assert "preprocess.n_splits: Input should be a valid integer (got 'five')" in message


@pytest.mark.fault
def test_bool_is_not_an_integer():
    assert "preprocess.seed: Input should be a valid integer (got True)" in error_for(
        lambda p: p["preprocess"].update(seed=True))


@pytest.mark.parametrize("key, value, expected", [
    ("val_fraction", 1.5, "preprocess.val_fraction: Input should be less than 1 (got 1.5)"),
    ("val_fraction", 0, "preprocess.val_fraction: Input should be greater than 0 (got 0)"),
    ("n_splits", 0, "preprocess.n_splits: Input should be greater than or equal to 1 (got 0)"),
    ("normalization", "minmax", "preprocess.normalization: Input should be 'none', 'global' or 'per_pixel'"),
])
@pytest.mark.fault
def test_out_of_range_values_are_named(key, value, expected):
    assert expected in error_for(lambda p: p["preprocess"].update({key: value}))


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", -3, "train.epochs: Input should be greater than or equal to 1 (got -3)"),
    ("net", "resnet50", ("train.net: Value error, unknown net 'resnet50'; choose one of cmasch, fast, "
                         "fast_whiten, fast_whiten2, fast_pool, wrn or wrn-<depth>-<width>")),
    ("net", "wrn-17-4", "train.net: Value error, net 'wrn-17-4': a Wide ResNet's depth must be 6n+4"),
    ("device", "tpu", "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
    ("lr", "fast", "train.lr: Input should be a valid number (got 'fast')"),
])
@pytest.mark.fault
def test_bad_training_values_are_named(key, value, expected):
    assert expected in error_for(lambda p: p["train"].update({key: value}))


@pytest.mark.fault
def test_missing_section_is_named():
    assert "verify: missing" in error_for(lambda p: p.pop("verify"))


@pytest.mark.fault
def test_bad_checksum_format_is_named():
    message = error_for(lambda p: p["dataset"]["files"]["train_images"].update(sha256="abc"))
    assert "dataset.files.train_images.sha256" in message


@pytest.mark.fault
def test_duplicate_class_names_are_refused():
    message = error_for(lambda p: p["dataset"]["classes"].__setitem__(1, "T-shirt/top"))
    assert "dataset.classes" in message and "repeated: ['T-shirt/top']" in message


@pytest.mark.fault
def test_every_problem_is_reported_at_once():
    def break_two(p):
        p["download"]["retries"] = 0
        p["verify"]["max_class_imbalance"] = 0.5
    message = error_for(break_two)
    assert "2 invalid value(s)" in message
    assert "download.retries" in message and "verify.max_class_imbalance" in message


@pytest.mark.fault
def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("preprocess:\n  seed: [1, 2\n")
    with pytest.raises(ParamsError, match=rf"(?s){path}: not valid YAML: .*line 3"):
        load_params(path)


@pytest.mark.fault
def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: cannot read params file: No such file"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.fault
def test_a_list_instead_of_a_mapping_is_refused():
    with pytest.raises(ParamsError, match="expected a mapping of sections, got list"):
        parse_params([1, 2])


def test_the_mnist_example_is_a_valid_params_change():
    params = real_params()
    params.update(yaml.safe_load((ROOT / "examples/mnist.yaml").read_text()))
    parsed = parse_params(params)
    assert parsed.dataset.name == "mnist" and parsed.dataset.classes[0] == "0"
