"""The baselines' parts: grids expand, configurations are checked before any fitting, published figures match."""
import pytest

from fmnist.errors import StageError
from fmnist.evaluation import baselines
from fmnist.params import Classifier, ParamsError, parse_params

def test_grid_expands_to_every_combination_in_order():
    entries = [Classifier(classifier="SVC", grid={"C": [1, 10], "kernel": ["rbf", "poly"]}),
               Classifier(classifier="GaussianNB")]
    expanded = baselines.expand(entries)
    assert expanded == [("SVC", {"C": 1, "kernel": "rbf"}), ("SVC", {"C": 1, "kernel": "poly"}),
                        ("SVC", {"C": 10, "kernel": "rbf"}), ("SVC", {"C": 10, "kernel": "poly"}), ("GaussianNB", {})]
    # ParameterGrid's order: parameter names sorted, the last one varying fastest
    assert baselines.expand([Classifier(classifier="DecisionTreeClassifier",
                                        grid={"splitter": ["best", "random"], "max_depth": [10, 50]})]) == [
        ("DecisionTreeClassifier", {"max_depth": 10, "splitter": "best"}),
        ("DecisionTreeClassifier", {"max_depth": 10, "splitter": "random"}),
        ("DecisionTreeClassifier", {"max_depth": 50, "splitter": "best"}),
        ("DecisionTreeClassifier", {"max_depth": 50, "splitter": "random"})]
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


def test_configurations_on_one_core_each_give_what_they_give_on_all_cores():
    import numpy as np

    from fmnist.evaluation.baselines import run_all, run_configuration

    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    x = (rng.random((300, 20)) + y[:, None] * 0.3).astype(np.float32)
    configurations = [("GaussianNB", {}), ("DecisionTreeClassifier", {"max_depth": 3}),
                      ("LogisticRegression", {"C": 1, "multi_class": "ovr", "penalty": "l2"}),
                      ("RandomForestClassifier", {"n_estimators": 5})]
    finished = []
    results = run_all(configurations, 1, 0, [], x[:200], y[:200], x[200:], y[200:],
                      on_result=lambda i, result: finished.append(i))
    assert sorted(finished) == [0, 1, 2, 3]  # each reported once, as it finished
    assert [r["classifier"] for r in results] == [c for c, _ in configurations]  # in the configurations' order
    for (classifier, grid), result in zip(configurations, results):
        alone = run_configuration(classifier, grid, 1, 0, [], x[:200], y[:200], x[200:], y[200:])
        assert result["accuracy"] == alone["accuracy"] > 0.5, classifier  # chance is 1/3


def test_fits_run_with_subnormal_floats_flushed_to_zero_and_the_thread_gets_its_mode_back(monkeypatch):
    """A subnormal float32 (below 1.2e-38) costs a microcode assist per operation on Intel cores (a 5 times slower
    MLP fit): the fits see such values as zero. joblib may run a fit in its caller's thread, which then keeps the
    mode it had."""
    import numpy as np
    import torch

    def product_of_tiny_numbers(*args, n_jobs=1):
        return float(np.float32(1e-20) * np.float32(1e-20))  # 1e-40: subnormal, unless flushed

    monkeypatch.setattr(baselines, "run_configuration", product_of_tiny_numbers)
    assert product_of_tiny_numbers() > 0  # IEEE subnormals, as every thread starts
    assert baselines._single_core(0) == (0, 0.0)
    assert product_of_tiny_numbers() > 0
    torch.set_flush_denormal(True)  # a caller that flushes on its own keeps doing so
    try:
        assert baselines._single_core(0) == (0, 0.0)
        assert product_of_tiny_numbers() == 0.0
    finally:
        torch.set_flush_denormal(False)
