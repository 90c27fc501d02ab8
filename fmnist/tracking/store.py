"""Which MLflow store the stages log to, and the experiment their runs go into."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from fmnist.errors import StageError
from fmnist.redaction import redact

# The UI opens an experiment of this kind on its training runs, not on the GenAI traces overview.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(StageError):
    """The tracking store cannot be reached or written."""


# How a client authenticates to a server run with `--app-name basic-auth` (docs/team-server.md).
CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def error_code(exc: BaseException) -> str | None:
    """MLflow's error code of `exc` (UNAUTHENTICATED, PERMISSION_DENIED, ...), None for other exceptions."""
    return getattr(exc, "error_code", None) if isinstance(exc, MlflowException) else None


def refusal(exc: BaseException, uri: str) -> str | None:
    """What to do when the server refused the request for who made it (401/403), else None: those are not
    outages, so no retry or wait can help."""
    code = error_code(exc)
    if code == "UNAUTHENTICATED":
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        problem = f"refused the credentials of user {who!r}" if who else "requires an account"
        return (f"MLflow tracking server {redact(uri)} {problem}: set {CREDENTIAL_VARIABLES} to your account's "
                "(never credentials in the URI); the server's admin creates accounts (docs/team-server.md)")
    if code == "PERMISSION_DENIED":
        who = os.environ.get("MLFLOW_TRACKING_USERNAME", "this account")
        return (f"MLflow tracking server {redact(uri)} does not let {who} do this ({_request_of(exc)}): viewers "
                "log nothing, teammates log runs but register no model; ask the server's admin for the role you "
                "need (`fmnist access grant USER ROLE`, docs/team-server.md)")
    return None


def _request_of(exc: BaseException) -> str:
    """'runs/create' from MLflow's 'API request to endpoint /api/2.0/mlflow/runs/create failed ...'."""
    found = re.search(r"/api/[\d.]+/mlflow/(\S+)", str(exc))
    return found[1] if found else "permission denied"


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


def _reached_marker() -> Path:
    return repo_root() / ".dvc" / "tmp" / "fmnist-tracking-reached"


def _reached_id(uri: str, pipeline_key: str) -> str:
    return hashlib.sha256(f"{pipeline_key} {uri}".encode()).hexdigest()  # no URI in clear: it may hold a secret


def remember_reached(uri: str, pipeline_key: str) -> None:
    """Note that this pipeline execution opened its parent run in `uri`: from now on an outage is a restart to
    wait out (reached_earlier), not a wrong URI to fail on at once."""
    marker = _reached_marker()
    if marker.parent.parent.is_dir():  # inside a DVC project (.dvc/); elsewhere there is no pipeline to resume
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(_reached_id(uri, pipeline_key))


def reached_earlier(uri: str, pipeline_key: str) -> bool:
    try:
        return _reached_marker().read_text() == _reached_id(uri, pipeline_key)
    except OSError:
        return False
