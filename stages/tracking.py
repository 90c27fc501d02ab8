"""A stage's run in MLflow: one run per executed stage, a child of its pipeline's parent run (lineage.py), tagged
so any number can be traced to code and params. Stages call stage_run() and the few StageRun methods, never
mlflow itself."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import requests
from mlflow.exceptions import MlflowException

from stages import lineage
from stages.common import StageError, flatten, repo_root
from stages.config import Gate
from stages.report import regressions

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first use of one SQLite store is then unguarded
    fcntl = None

log = logging.getLogger("stages.tracking")

# MLflow's own defaults retry an unreachable server for minutes; a stage should fail fast and say why.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
# Once a stage's run has started, the server did answer: an outage now is most likely a restart, worth
# waiting out (back-off 0+2+4+8+16+32 s, about a minute) rather than losing minutes of training.
HTTP_MID_RUN = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingError(StageError):
    """The tracking store cannot be reached or written."""


class Terminated(SystemExit):
    """SIGTERM as an exception: the stage unwinds, so its MLflow run ends FAILED instead of staying RUNNING.
    torchrun sends SIGTERM to the other workers when one dies; so do CI cancels, `kill` and container stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


@contextlib.contextmanager
def _unwind_on_sigterm() -> Iterator[None]:
    def terminate(signum: int, _frame: object) -> None:
        log.error("stopped by %s; the MLflow run ends FAILED and no output is left half-written",
                  signal.Signals(signum).name)
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _environment(values: Mapping[str, str], keep: set[str]) -> Iterator[None]:
    """`values` in os.environ (where MLflow reads its HTTP settings) for the block, except the keys in `keep`, the
    user's own settings; what was there before comes back afterwards, so nothing leaks into a later stage run."""
    before = {key: os.environ.get(key) for key in values if key not in keep}
    os.environ.update({key: values[key] for key in before})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store at the DVC root (not the cwd: `dvc exp run --temp/--queue`
    run stages in temporary copies that DVC deletes afterwards)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(name: str, uri: str) -> str:
    """Find or create the experiment; local stores keep artifacts beside mlflow.db, not in the cwd."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = (repo_root() / "mlartifacts").as_uri() if local else None
    try:
        # The kind makes the UI open on the training runs, not on the GenAI traces overview.
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:
        # Another stage (`dvc queue start -j 2`) created it between our lookup and create.
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# The lock setup installed from: the source of every pin a logged model records.
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"
# What the served ensemble imports: stages.ensemble_pyfunc and the stages modules it pulls in.
SERVING_PACKAGES = ("mlflow", "numpy", "pandas", "pillow", "pydantic", "pyyaml", "torch", "tqdm")


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

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any]) -> Iterator[StageRun]:
        """A nested run under this stage's run (one per baseline configuration), with the stage's tags."""
        parent = mlflow.get_run(self.run_id)
        tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
        with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags) as run:
            mlflow.log_params(flatten(params))
            yield StageRun(run.info.run_id)

    def log_torch_model(self, model: Any, example: Any) -> None:
        """The model in MLflow's pytorch flavor, with a signature inferred from `example` (a numpy batch)."""
        import copy

        import mlflow.pytorch
        import torch

        # MLflow saves it with torch.export, which warns on every channels-last weight ("No complete tensor
        # found in the group"): saved right, but noise in every training log. A contiguous copy saves quietly.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        mlflow.pytorch.log_model(
            model, name="model", signature=mlflow.models.infer_signature(example, output), input_example=example,
            # Explicit: skips MLflow's slow requirement inference, and pins the torch that trained it.
            pip_requirements=locked_requirements(("torch",)),
        )

    def log_ensemble_model(self, path: Path, example: Any, name: str, gates: list[Gate],
                           metrics: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
        """The ensemble file as a new version of the registered pyfunc model `name`, taking uint8 images
        (N, H, W), logged as code (stages/ensemble_pyfunc.py, run on load) so that loading it unpickles nothing;
        the stages package travels with it, so `mlflow models predict` needs no checkout of this repo. The
        alias `champion` moves to it unless `metrics` are worse than the champion's beyond the `gates`.
        `metadata` goes into the MLmodel file, where the UI shows it beside the version.
        Returns the sentence saying what happened to the alias (also the run's tag `champion`)."""
        import numpy as np

        stages_dir = Path(__file__).parent
        info = mlflow.pyfunc.log_model(
            name="ensemble", python_model=str(stages_dir / "ensemble_pyfunc.py"), artifacts={"ensemble": str(path)},
            code_paths=[str(stages_dir)], input_example=np.ascontiguousarray(example, dtype=np.uint8),
            registered_model_name=name, pip_requirements=locked_requirements(SERVING_PACKAGES),
            metadata=dict(metadata or {}),
        )
        verdict = promote(mlflow.MlflowClient(), name, str(info.registered_model_version), metrics, gates)
        mlflow.set_tag("champion", verdict)
        log.info("%s", verdict)
        return verdict

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


CHAMPION = "champion"


def promote(client: mlflow.MlflowClient, name: str, version: str, metrics: Mapping[str, Any],
            gates: list[Gate]) -> str:
    """Move the alias `champion` of `name` to `version` when its metrics are at least as good as the current
    champion's within the regression gate's tolerances (report.gates); say why it moved or not."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        champion = None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return f"{name} version {version} is the first champion"
    held = client.get_run(champion.run_id).data.metrics
    rows = [{"path": f"champion v{champion.version}", "metric": gate.metric, "old": held[gate.metric],
             "new": float(metrics[gate.metric]), "diff": float(metrics[gate.metric]) - held[gate.metric]}
            for gate in gates if gate.metric in held and gate.metric in metrics]
    worse = regressions(rows, gates)
    if worse:
        return f"{name} version {version} is not the champion; version {champion.version} stays: " + "; ".join(worse)
    client.set_registered_model_alias(name, CHAMPION, version)
    compared = ", ".join(f"{r['metric']} {r['old']:.6g} -> {r['new']:.6g}" for r in rows) or "no gated metric"
    return f"{name} version {version} is the champion, replacing version {champion.version} ({compared})"


def registered_ensemble_file(uri: str) -> Path:
    """The ensemble.pt of a registered model version (`models:/fashion-mnist-ensemble@champion`), downloaded."""
    try:
        local = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/artifacts/ensemble.pt",
                                                    tracking_uri=tracking_uri())
    except Exception as exc:  # MLflow raises many types for one cause
        raise TrackingError(f"cannot fetch {uri} from the tracking store {tracking_uri()}: {exc}\n"
                            "Run `dvc repro` (evaluate registers the model), or point MLFLOW_TRACKING_URI at "
                            "the store that has it") from None
    return Path(local)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialize creating the store, the experiment and a pipeline's parent run between concurrent stages
    (`dvc queue start -j 2`): SQLite's own locking does not cover MLflow creating its schema twice."""
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str) -> Iterator[StageRun]:
    """One MLflow run for one stage execution, a child of its pipeline's parent run: params flattened, tags set,
    FAILED if the stage raises; at the end, the parent's lineage and metrics are brought up to date."""
    chosen_by_user = {key for key in (*HTTP_DEFAULTS, *HTTP_MID_RUN) if key in os.environ}
    with _environment(HTTP_DEFAULTS, keep=chosen_by_user):
        yield from _tracked(stage, params, experiment, chosen_by_user)


def _tracked(stage: str, params: Mapping[str, Any], experiment: str, chosen_by_user: set[str]) -> Iterator[StageRun]:
    """stage_run's body, under the fail-fast HTTP defaults."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
    try:
        with _store_lock(uri):
            client = mlflow.MlflowClient(uri)  # opening a new SQLite store creates its schema: inside the lock
            experiment_id = _experiment_id(experiment, uri)
            key = lineage.pipeline_key()
            parent_id = lineage.pipeline_parent(client, experiment_id, key)
            client.update_run(parent_id, status="RUNNING")
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent_id,
                               tags={**lineage.run_tags(stage, params), "pipeline_key": key})
    except Exception as exc:  # MLflow raises many types (requests, sqlalchemy, its own) for one cause
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable: {type(exc).__name__}: {exc}\n"
            "Start the server or fix MLFLOW_TRACKING_URI; unset it to use the local store <repo>/mlflow.db."
        ) from None
    status = "FAILED"
    produced: dict[str, str] = {}

    def record_in_pipeline() -> None:
        with _store_lock(uri):
            lineage.update_pipeline(client, experiment_id, parent_id, stage, run.info.run_id, produced, status)

    try:
        with _environment(HTTP_MID_RUN, keep=chosen_by_user):
            with _unwind_on_sigterm(), run:
                mlflow.log_params(flatten(params))
                log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, uri)
                yield StageRun(run.info.run_id)
                # The md5s dvc.lock will record for this stage's outputs: how a later pipeline that skips this
                # stage finds this run as the producer of what it reuses.
                produced = lineage.output_hashes(lineage.stage_outputs(stage))
                mlflow.set_tag("dvc_outs", " ".join(f"{path}={md5}" for path, md5 in produced.items()))
                status = "FINISHED"
            record_in_pipeline()
    except BaseException as exc:
        if status == "FAILED":  # record the failure in the pipeline row, if the store allows it
            with contextlib.suppress(Exception):
                record_in_pipeline()
        if isinstance(exc, (MlflowException, requests.RequestException)):
            raise TrackingError(
                f"MLflow tracking store {uri} failed during stage {stage} (run {run.info.run_id}): {exc}\n"
                "What was logged before is kept there. The stage fails so that DVC records none of its outputs: "
                "once the store answers again, `dvc repro` reruns it."
            ) from None
        raise
