"""scikit-learn baselines: classifiers on the flattened pixels scaled to [0, 1], configured as the official
Fashion-MNIST benchmark does (classifier + parameter grid), trained on the whole training set and scored on the
test set, compared with the benchmark's published accuracy."""
from __future__ import annotations

import contextlib
import importlib
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score
from sklearn.model_selection import ParameterGrid

from fmnist.errors import StageError
from fmnist.evaluation.classifiers import SKLEARN_CLASSIFIERS
from fmnist.params import Classifier


def expand(entries: list[Classifier]) -> list[tuple[str, dict[str, Any]]]:
    """Every (classifier, params) combination of every grid: entries in order, each grid in ParameterGrid's
    order (parameter names sorted, the last one varying fastest)."""
    return [(entry.classifier, params) for entry in entries for params in ParameterGrid(entry.grid)]


def label(classifier: str, params: dict[str, Any]) -> str:
    """'SVC C=10 kernel=rbf': the benchmark's way of naming a configuration."""
    return " ".join([classifier, *(f"{k}={_value(v)}" for k, v in sorted(params.items()))])


def _value(value: Any) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, (list, tuple)) else str(value)


def build(classifier: str, params: dict[str, Any], seed: int, n_jobs: int = -1) -> Any:
    """The estimator; seeded where it has randomness, on `n_jobs` cores where it can use several; a bad parameter
    names the configuration."""
    if classifier == "LogisticRegression" and params.get("multi_class") == "ovr":
        # scikit-learn 1.8 removed multi_class; the benchmark's one-vs-rest liblinear fit (the 2017 default) is
        # rebuilt around it, so the published configuration runs as published and keeps its published name.
        from sklearn.multiclass import OneVsRestClassifier

        inner = {"solver": "liblinear", **{k: v for k, v in params.items() if k != "multi_class"}}
        return OneVsRestClassifier(build(classifier, inner, seed, n_jobs), n_jobs=n_jobs)
    cls = getattr(importlib.import_module(SKLEARN_CLASSIFIERS[classifier]), classifier)
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PassiveAggressiveClassifier: deprecated, kept as published
        accepted = cls().get_params()
        unknown = set(params) - set(accepted)
        if unknown:
            raise StageError(f"baselines: {label(classifier, params)}: {classifier} has no parameter(s) "
                             f"{', '.join(sorted(unknown))}; it takes {', '.join(sorted(accepted))}")
        # Seeded where there is randomness; every core where it can use them (not a result-changing setting).
        extra = {k: v for k, v in (("random_state", seed), ("n_jobs", n_jobs)) if k in accepted and k not in params}
        return cls(**params, **extra)


def fit_and_score(estimator: Any, name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray) -> dict[str, float]:
    """Test accuracy and wall-clock seconds of fit and predict."""
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Convergence warnings are the benchmark's settings at work; the accuracy says what they cost.
            warnings.simplefilter("ignore")
            estimator.fit(x_train, y_train)
    except (ValueError, TypeError) as exc:
        raise StageError(f"baselines: {name}: scikit-learn rejected the configuration: {exc}") from None
    fitted = time.perf_counter()
    predicted = estimator.predict(x_test)
    return {"accuracy": float(accuracy_score(y_test, predicted)), "fit_seconds": fitted - started,
            "predict_seconds": time.perf_counter() - fitted}


def run_configuration(classifier: str, params: dict[str, Any], repeats: int, seed: int, reference: list[dict],
                      x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      n_jobs: int = -1) -> dict:
    """One configuration fitted `repeats` times (seeds seed, seed+1, ...): its mean test accuracy and spread, the
    published accuracy for it, and the mean seconds of fit and predict."""
    name = label(classifier, params)
    scores = [fit_and_score(build(classifier, params, seed + r, n_jobs), name, x_train, y_train, x_test, y_test)
              for r in range(repeats)]
    accuracies = [s["accuracy"] for s in scores]
    return {"configuration": name, "classifier": classifier, "accuracy": float(np.mean(accuracies)),
            "accuracy_std": float(np.std(accuracies, ddof=1)) if len(scores) > 1 else 0.0,
            "published": published(reference, classifier, params),
            "fit_seconds": float(np.mean([s["fit_seconds"] for s in scores])),
            "predict_seconds": float(np.mean([s["predict_seconds"] for s in scores]))}


def _single_core(i: int, *args: Any) -> tuple[int, dict]:
    """run_configuration on one core (one job, one BLAS/OpenMP thread): the unit run_all spreads over the cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), _subnormals_flushed():
        return i, run_configuration(*args, n_jobs=1)


@contextlib.contextmanager
def _subnormals_flushed() -> Iterator[None]:
    """Subnormal floats flushed to zero in this thread, where the fits run. Late in an MLP's training, Adam's
    moments and thousands of weights fall below float32's smallest normal (1.2e-38), and each operation on them
    takes a microcode assist on Intel cores: MLPClassifier's fit took 430 s on an Intel Xeon host against 86 on a
    Zen 4, and 96 s with them flushed, every accuracy of the quick profile unchanged (docs/results.md). The
    thread's own mode comes back afterwards: joblib may run a task in its caller's thread."""
    import torch  # its set_flush_denormal sets the x86 FTZ/DAZ (or AArch64 FZ) bits, which numpy cannot reach

    was_flushing = float(np.float32(1e-20) * np.float32(1e-20)) == 0.0  # 1e-40, subnormal unless flushed
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def run_all(configurations: list[tuple[str, dict[str, Any]]], repeats: int, seed: int, reference: list[dict],
            x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
            on_result: Callable[[int, dict], None] = lambda i, result: None) -> list[dict]:
    """Every configuration, one per core at a time, in worker processes: most fits use one core well and two
    poorly (an MLP's small matrices, a tree), so running two at once beats running each on both cores. Started
    last-listed first (the profiles list them fastest first), so no long fit starts last. `on_result(i, result)`
    as each one finishes; the results in the configurations' order. The arrays reach the workers memory-mapped
    (joblib), not copied per configuration."""
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=-1, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs")
    results: dict[int, dict] = {}
    for i, result in parallel(delayed(_single_core)(i, *configurations[i], repeats, seed, reference, x_train,
                                                    y_train, x_test, y_test)
                              for i in reversed(range(len(configurations)))):
        results[i] = result
        on_result(i, result)
    return [results[i] for i in range(len(configurations))]


def features(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H*W) float32 in [0, 1], as the official benchmark feeds its classifiers."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def load_reference(path: Path, dataset: str) -> tuple[list[dict], str]:
    """The published accuracies for `dataset` (a column of the reference file), and where they come from."""
    try:
        reference = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"{path}: cannot read the published baselines: {exc}") from None
    column = reference.get("columns", {}).get(dataset)
    if column is None:
        return [], f"no published figures for dataset {dataset!r} in {path}"
    return ([{"classifier": r["classifier"], "params": r["params"], "accuracy": r[column]}
             for r in reference["rows"] if r.get(column) is not None], reference["source"])


def published(reference: list[dict], classifier: str, params: dict[str, Any]) -> float | None:
    for row in reference:
        if row["classifier"] == classifier and row["params"] == params:
            return row["accuracy"]
    return None


def summarize(results: list[dict]) -> tuple[dict, pd.DataFrame]:
    """metrics/baselines.json (best, and one entry per configuration) and the comparison table."""
    table = pd.DataFrame(results)
    table["difference"] = table["accuracy"] - table["published"]
    best = table.loc[table["accuracy"].idxmax()]
    columns = ("accuracy", "accuracy_std", "published", "difference", "fit_seconds", "predict_seconds")
    configurations = {
        row["configuration"]: {k: round(float(row[k]), 2 if k.endswith("seconds") else 6)
                               for k in columns if pd.notna(row[k])}
        for row in table.to_dict("records")}
    return {"best_accuracy": round(float(best["accuracy"]), 6), "best": best["configuration"],
            "configurations": configurations}, table


def markdown(table: pd.DataFrame, source: str) -> str:
    lines = ["| configuration | ours | published | difference | fit s | predict s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in table.itertuples():
        pub = "—" if pd.isna(row.published) else f"{100 * row.published:.1f}%"
        diff = "—" if pd.isna(row.difference) else f"{100 * row.difference:+.1f}"
        lines.append(f"| {row.configuration} | {100 * row.accuracy:.2f}% | {pub} | {diff} | "
                     f"{row.fit_seconds:.1f} | {row.predict_seconds:.1f} |")
    return "\n".join(lines) + f"\n\nPublished: {source}\n"
