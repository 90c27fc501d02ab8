"""Which MLflow store the stages log to, and the experiment their runs go into."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from fmnist.errors import StageError

# The UI opens an experiment of this kind on its training runs, not on the GenAI traces overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(StageError):
    """The tracking store cannot be reached or written."""


def repo_root() -> Path:
    """The DVC project root: DVC_ROOT when DVC runs the stage, else the nearest parent holding .dvc/."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return here


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store at the DVC root (not the cwd: `dvc exp run --temp/--queue`
    run stages in temporary copies that DVC deletes afterwards)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_id(name: str, uri: str) -> str:
    """Find or create the experiment; local stores keep artifacts beside mlflow.db, not in the cwd."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (repo_root() / "mlartifacts").as_uri() if local else None
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:
        # Another stage (`dvc queue start -j 2`) created it between our lookup and create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialize creating the store, the experiment and a pipeline's parent run between concurrent stages
    (`dvc queue start -j 2`): SQLite's own locking does not cover MLflow creating its schema twice."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield
