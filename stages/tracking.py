"""MLflow, and only here: one run per executed stage, tagged so any number can be traced to code and params."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.exceptions import MlflowException

from stages.common import StageError, digest, repo_root

log = logging.getLogger("stages.tracking")

# MLflow's own defaults retry an unreachable server for minutes; a stage should fail fast and say why.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


class TrackingError(StageError):
    """The tracking store cannot be reached or written."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store at the DVC root (not the cwd: `dvc exp run --temp/--queue`
    run stages in temporary copies that DVC deletes afterwards)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists of mappings are indexed, other lists kept as JSON."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{i}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def run_tags(stage: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Tags that make a run traceable: stage, code version, params digest, DVC experiment."""
    # Outputs that `dvc repro` itself writes and stages do not make the code dirty.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics",
                  ":!**/.gitignore")
    tags = {
        "stage": stage,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "params_hash": digest(params),
    }
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _experiment_id(name: str, uri: str) -> str:
    """Find or create the experiment; local stores keep artifacts beside mlflow.db, not in the cwd."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (repo_root() / "mlartifacts").as_uri() if local else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another stage (`dvc queue start -j 2`) created it between our lookup and create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def torch_requirement() -> str:
    """The running torch as a pip pin, without the local build tag (+cpu, +cu124) that PyPI does not serve."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


class StageRun:
    """The few things a stage logs; keeps mlflow out of the stage modules."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
        if numeric:
            mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        mlflow.log_dict(dict(data), name)

    def log_torch_model(self, model: Any, example: Any) -> None:
        """The model in MLflow's pytorch flavor, with a signature inferred from `example` (a numpy batch)."""
        import mlflow.pytorch
        import torch

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        mlflow.pytorch.log_model(
            model, name="model", signature=mlflow.models.infer_signature(example, output), input_example=example,
            # Explicit: skips MLflow's slow requirement inference, and pins the torch that trained it.
            pip_requirements=[torch_requirement()],
        )

    def log_ensemble_model(self, path: Path, example: Any, name: str) -> None:
        """The ensemble file as a registered pyfunc model taking uint8 images (N, H, W); the stages package
        travels with it, so `mlflow models predict` needs no checkout of this repo."""
        import numpy as np

        model = EnsemblePyfunc()
        context = mlflow.pyfunc.PythonModelContext(artifacts={"ensemble": str(path)}, model_config={})
        model.load_context(context)
        example = np.ascontiguousarray(example, dtype=np.uint8)
        signature = mlflow.models.infer_signature(example, model.predict(context, example))
        mlflow.pyfunc.log_model(
            name="ensemble", python_model=model, artifacts={"ensemble": str(path)},
            code_paths=[str(Path(__file__).parent)], signature=signature, input_example=example,
            registered_model_name=name,
            pip_requirements=[torch_requirement(), f"numpy=={np.__version__}",
                              "pandas", "pillow", "pydantic>=2", "pyyaml", "tqdm", "mlflow"],
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


class EnsemblePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow's view of models/ensemble.pt: images in, a DataFrame of class and probabilities out."""

    # The signature comes from an input example; without this MLflow warns that predict() has no type hints.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from stages.ensemble import Ensemble  # late: stages.ensemble imports this module

        self.ensemble = Ensemble.load(context.artifacts["ensemble"])

    def predict(self, context, model_input, params=None):
        from stages.predict import as_images, prediction_frame  # late, as above

        images = as_images(model_input, tuple(self.ensemble.image_shape))
        return prediction_frame(self.ensemble.predict_proba(images), self.ensemble.classes)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str) -> Iterator[StageRun]:
    """One MLflow run for one stage execution: params flattened, tags set; FAILED if the stage raises."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
    try:
        experiment_id = _experiment_id(experiment, uri)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=run_tags(stage, params))
    except Exception as exc:  # MLflow raises many types (requests, sqlalchemy, its own) for one cause
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable: {type(exc).__name__}: {exc}\n"
            "Start the server or fix MLFLOW_TRACKING_URI; unset it to use the local store <repo>/mlflow.db."
        ) from None
    with run:
        mlflow.log_params(flatten(params))
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, uri)
        yield StageRun(run.info.run_id)
