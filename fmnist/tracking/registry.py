"""Models in MLflow: a member in the pytorch flavor, the ensemble as a registered pyfunc logged as code, and the
alias `champion` (champion.py)."""
from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from fmnist.params import Gate
from fmnist.redaction import redact
from fmnist.tracking.champion import promote, record_gated_metrics
from fmnist.tracking.store import TrackingError, error_code, tracking_uri

log = logging.getLogger("fmnist.tracking")

PACKAGE = Path(__file__).resolve().parents[1]
# The lock setup installed from: the source of every pin a logged model records.
LOCK_FILE = PACKAGE.parent / "requirements.lock"
# The served ensemble's code: fmnist.serving runs it, fmnist.model is all it imports (tests/unit/test_structure.py).
SERVED_PACKAGES = ("model", "serving")
# What that code imports from outside this project.
SERVING_PACKAGES = ("mlflow", "numpy", "pandas", "pillow", "scipy", "torch")


def ensemble_name(dataset: str) -> str:
    """The registered model of a dataset's ensemble: `fashion-mnist-ensemble`."""
    return f"{dataset}-ensemble"


def lock_pins(lock: Path = LOCK_FILE) -> dict[str, str]:
    """{normalized name: 'name==version'} for every package requirements.lock pins."""
    from packaging.utils import canonicalize_name

    try:
        lines = lock.read_text().splitlines()
    except OSError as exc:
        raise TrackingError(f"{lock}: cannot read the lock that pins the model's requirements "
                            f"({exc.strerror}); restore it from git or run `make lock`") from None
    pins = map(re.compile(r"^([A-Za-z0-9][\w.-]*)==(\S+)").match, lines)
    return {canonicalize_name(m[1]): m[0] for m in pins if m}


def locked_requirements(names: tuple[str, ...], lock: Path = LOCK_FILE) -> list[str]:
    """'name==version' for each package, as requirements.lock pins it, so a model's environment is the one that
    made it."""
    from packaging.utils import canonicalize_name

    pins = lock_pins(lock)
    missing = [name for name in names if canonicalize_name(name) not in pins]
    if missing:
        raise TrackingError(f"{lock}: no pin for {', '.join(missing)}; add it to pyproject.toml and run `make lock`")
    return [pins[canonicalize_name(name)] for name in names]


def log_torch_model(model: Any, example: Any, step: int = 0) -> None:
    """The model in MLflow's pytorch flavor, with a signature inferred from `example` (a numpy batch), as an
    MLflow 3 logged model at training step `step`: MLflow links to it every metric the run logged at that step."""
    import mlflow.pytorch
    import torch

    # MLflow saves it with torch.export, which warns on every channels-last weight ("No complete tensor
    # found in the group"): saved right, but noise in every training log. A contiguous copy saves quietly.
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(
        model, name="model", step=step, signature=mlflow.models.infer_signature(example, output),
        input_example=example,
        # torch.export's archive: the graph as JSON, the weights as raw bytes; the one pickle in it is the example
        # input, a tensor (tests/integration/test_tracking.py). MLflow's default on Databricks would pickle it all.
        serialization_format="pt2",
        # Explicit: skips MLflow's slow requirement inference, and pins the torch that trained it.
        pip_requirements=locked_requirements(("torch",)),
    )


@contextmanager
def served_code() -> Iterator[Path]:
    """A copy of the fmnist package holding only the served code (its __init__, model/ and serving/), for the
    registered model's code_paths: MLflow puts its parent on sys.path, so `import fmnist.model` finds it."""
    with tempfile.TemporaryDirectory() as staging:
        package = Path(staging) / PACKAGE.name
        package.mkdir()
        shutil.copy2(PACKAGE / "__init__.py", package / "__init__.py")
        for name in SERVED_PACKAGES:
            shutil.copytree(PACKAGE / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
        yield package


def log_ensemble_model(path: Path, example: Any, name: str, gates: list[Gate], metrics: Mapping[str, Any],
                       metadata: Mapping[str, Any] | None = None) -> str:
    """The ensemble file as a new version of the registered pyfunc model `name`, taking uint8 images (N, H, W).
    Logged as code: MLflow stores fmnist/serving/pyfunc.py and runs it on load, with fmnist.model beside it, so
    `mlflow models predict` needs no checkout of this repo; the weights load with torch.load(weights_only=True).
    The version records the gated `metrics`; the alias `champion` moves to it when it is at least as good as the
    champion on each of them (champion.py).
    `metadata` goes into the MLmodel file, where the UI shows it beside the version.
    Returns the sentence saying what happened to the alias (also the run's tag `champion`)."""
    import numpy as np

    with served_code() as package:
        info = mlflow.pyfunc.log_model(
            name="ensemble", python_model=str(package / "serving" / "pyfunc.py"), artifacts={"ensemble": str(path)},
            code_paths=[str(package)], input_example=np.ascontiguousarray(example, dtype=np.uint8),
            pip_requirements=locked_requirements(SERVING_PACKAGES), metadata=dict(metadata or {}),
        )
    try:
        version = str(mlflow.register_model(info.model_uri, name).version)
    except MlflowException as exc:
        if error_code(exc) != "PERMISSION_DENIED":
            raise
        # A teammate's account logs runs and models; only CI's registers versions and moves the alias.
        verdict = (f"{name}: not registered, {os.environ.get('MLFLOW_TRACKING_USERNAME', 'this account')} may not "
                   f"register versions on {redact(tracking_uri())} (CI registers); the model is logged in this run")
        mlflow.set_tag("champion", verdict)
        log.warning("%s", verdict)
        return verdict
    client = mlflow.MlflowClient()
    record_gated_metrics(client, name, version, metrics, gates)
    verdict = promote(client, name, version, gates)
    mlflow.set_tag("champion", verdict)
    log.info("%s", verdict)
    return verdict


def registered_ensemble_file(uri: str) -> Path:
    """The ensemble.pt of a registered model version (`models:/fashion-mnist-ensemble@champion`), downloaded."""
    try:
        local = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/artifacts/ensemble.pt",
                                                    tracking_uri=tracking_uri())
    except Exception as exc:  # MLflow raises many types for one cause
        raise TrackingError(f"cannot fetch {uri} from the tracking store {redact(tracking_uri())}: "
                            f"{redact(str(exc))}\n"
                            "Run `dvc repro` (evaluate registers the model), or point MLFLOW_TRACKING_URI at "
                            "the store that has it") from None
    return Path(local)
