"""The baselines stage on a tiny synthetic dataset: grids expand, each configuration is a row and an MLflow run."""
import json
import sys

import mlflow
import numpy as np
import pytest
import yaml

from stages import baselines
from stages.common import StageError
from stages.config import Classifier, ParamsError, parse_params

TINY_GRID = [{"classifier": "GaussianNB"},
             {"classifier": "DecisionTreeClassifier", "grid": {"max_depth": [2, 4], "criterion": ["gini"]}}]


def write_split(directory, n, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.integers(0, 60, (n, 8, 8)) + labels[:, None, None] * 80).astype(np.uint8)  # separable classes
    directory.mkdir(parents=True)
    np.save(directory / "images.npy", images)
    np.save(directory / "labels.npy", labels.astype(np.uint8))


def test_grid_expands_to_every_combination_in_order():
    entries = [Classifier(classifier="SVC", grid={"C": [1, 10], "kernel": ["rbf", "poly"]}),
               Classifier(classifier="GaussianNB")]
    expanded = baselines.expand(entries)
    assert expanded == [("SVC", {"C": 1, "kernel": "rbf"}), ("SVC", {"C": 1, "kernel": "poly"}),
                        ("SVC", {"C": 10, "kernel": "rbf"}), ("SVC", {"C": 10, "kernel": "poly"}), ("GaussianNB", {})]
    assert baselines.label("MLPClassifier", {"hidden_layer_sizes": [100, 10], "activation": "relu"}) == \
        "MLPClassifier activation=relu hidden_layer_sizes=[100,10]"


@pytest.mark.fault
def test_unknown_classifier_fails_listing_the_allowed_names(params_with):
    params = params_with()
    params["baselines"]["profiles"]["quick"].append({"classifier": "XGBoost"})
    with pytest.raises(ParamsError) as error:
        parse_params(params)
    message = str(error.value)
    assert "baselines.profiles.quick.8.classifier" in message and "unknown classifier 'XGBoost'" in message
    assert "allowed: DecisionTreeClassifier, ExtraTreeClassifier, GaussianNB" in message


@pytest.mark.fault
def test_unknown_profile_fails_listing_the_profiles(params_with):
    params = params_with()
    params["baselines"]["profile"] = "medium"
    with pytest.raises(ParamsError, match="baselines.profile is 'medium'; defined profiles: quick, full"):
        parse_params(params)


@pytest.mark.fault
def test_grid_values_must_be_lists(params_with):
    params = params_with()
    params["baselines"]["profiles"]["full"][0]["grid"]["max_depth"] = 10
    with pytest.raises(ParamsError, match=r"baselines.profiles.full.0.grid.max_depth: Input should be a valid list"):
        parse_params(params)


@pytest.mark.fault
def test_unknown_sklearn_parameter_names_the_configuration():
    with pytest.raises(StageError, match=r"SVC C=1 gamma_typo=2: SVC has no parameter\(s\) gamma_typo; it takes C,"):
        baselines.build("SVC", {"C": 1, "gamma_typo": 2}, seed=0)


def test_published_figure_matches_on_classifier_and_params(tmp_path):
    reference, source = baselines.load_reference(baselines_reference(), "fashion-mnist")
    assert "arXiv:1708.07747" in source
    assert baselines.published(reference, "SVC", {"C": 10, "kernel": "rbf"}) == 0.897
    assert baselines.published(reference, "SVC", {"C": 10, "kernel": "linear"}) is None
    assert baselines.load_reference(baselines_reference(), "kmnist")[0] == []


def baselines_reference():
    from tests.conftest import ROOT

    return ROOT / "reference" / "sklearn_benchmark.yaml"


def test_stage_writes_one_row_and_one_mlflow_run_per_configuration(params_with, tmp_path, monkeypatch):
    params = params_with()
    params["baselines"].update(profile="tiny", repeats=2, profiles={"tiny": TINY_GRID})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_split(tmp_path / "train", 120, seed=1)
    write_split(tmp_path / "test", 60, seed=2)
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump({
        "source": "a test", "columns": {"tiny": "tiny"},
        "rows": [{"classifier": "GaussianNB", "params": {}, "tiny": 0.5}]}))
    monkeypatch.setattr(sys, "argv", ["baselines", "--train", "train", "--test", "test", "--reference",
                                      "reference.yaml", "--metrics", "baselines.json", "--table", "baselines.csv"])
    baselines.main()
    metrics = json.loads((tmp_path / "baselines.json").read_text())
    rows = metrics["configurations"]
    assert list(rows) == ["GaussianNB", "DecisionTreeClassifier criterion=gini max_depth=2",
                          "DecisionTreeClassifier criterion=gini max_depth=4"]
    assert rows["GaussianNB"]["accuracy"] == 1.0 and rows["GaussianNB"]["published"] == 0.5
    assert rows["GaussianNB"]["difference"] == pytest.approx(0.5)
    assert "published" not in rows["DecisionTreeClassifier criterion=gini max_depth=2"]
    assert metrics["best_accuracy"] == max(r["accuracy"] for r in rows.values())
    assert (tmp_path / "baselines.csv").read_text().count("\n") == 4  # header + 3 rows
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = store.search_runs([store.get_experiment_by_name("tiny").experiment_id])
    stage_run = next(r for r in runs if r.info.run_name == "baselines")
    configurations = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage_run.info.run_id]
    assert sorted(r.info.run_name for r in configurations) == sorted(rows)
    for run in configurations:
        assert run.data.metrics["accuracy"] == pytest.approx(rows[run.info.run_name]["accuracy"])
        assert run.data.tags["stage"] == "baselines" and run.data.tags["git_commit"]
    tree = next(r for r in configurations if r.info.run_name.endswith("max_depth=4"))
    assert tree.data.params == {"classifier": "DecisionTreeClassifier", "criterion": "gini", "max_depth": "4"}


def test_summary_keeps_published_figures_exact_and_rounds_seconds():
    metrics, table = baselines.summarize([
        {"configuration": "A", "classifier": "A", "accuracy": 0.8412, "accuracy_std": 0.0, "published": 0.841,
         "fit_seconds": 52.0782, "predict_seconds": 0.1684},
        {"configuration": "B", "classifier": "B", "accuracy": 0.9, "accuracy_std": 0.01, "published": None,
         "fit_seconds": 1.0, "predict_seconds": 2.0}])
    assert metrics["configurations"]["A"] == {"accuracy": 0.8412, "accuracy_std": 0.0, "published": 0.841,
                                              "difference": 0.0002, "fit_seconds": 52.08, "predict_seconds": 0.17}
    assert "published" not in metrics["configurations"]["B"] and metrics["best"] == "B"
    assert len(table) == 2
