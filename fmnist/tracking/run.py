"""A stage's run in MLflow: one run per executed stage, a child of its pipeline's parent run (lineage.py), tagged
so any number can be traced to code and params. Its params are exactly those dvc.yaml lists for the stage. Stages
call stage_run() and the few StageRun methods, never mlflow itself."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.exceptions import MlflowException

from fmnist.params import parse_params
from fmnist.redaction import redact
from fmnist.tracking import lineage, registry
from fmnist.tracking.store import (TrackingError, experiment_id, reached_earlier, refusal, remember_reached,
                                  store_lock, tracking_uri)

log = logging.getLogger("fmnist.tracking")

# MLflow's own defaults retry an unreachable server for minutes; a stage should fail fast and say why.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
# Once a stage's run has started, the server did answer: an outage now is most likely a restart, worth
# waiting out (back-off 0+2+4+8+16+32 s, about a minute) rather than losing minutes of training.
HTTP_MID_RUN = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# A server that answered earlier in this pipeline and stops answering as a stage starts is most likely
# restarting (a deploy, a crash and its supervisor): waited for this long (FMNIST_TRACKING_WAIT_S overrides).
RESTART_WAIT_S = 300
RETRY_EVERY_S = 3


class Terminated(SystemExit):
    """SIGTERM as an exception: the stage unwinds, so its MLflow run ends FAILED instead of staying RUNNING.
    torchrun sends SIGTERM to the other workers when one dies; so do CI cancels, `kill` and container stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)


class _SigtermGuard:
    """SIGTERM raises Terminated once, while the stage works. Once the stage is unwinding (from that exception or
    another: a DDP peer's death reaches rank 0 as gloo's error and torchrun's SIGTERM together), a SIGTERM waits
    until the run's final status is written, then stops the stage; raised in the middle of MLflow's end_run, it
    would leave the run RUNNING for ever."""

    def __init__(self) -> None:
        self.armed = True
        self.deferred: int | None = None

    def handle(self, signum: int, _frame: object) -> None:
        if not self.armed:
            log.warning("%s received while the MLflow run is being closed; stopping once it is",
                        signal.Signals(signum).name)
            self.deferred = signum
            return
        self.armed = False
        log.error("stopped by %s; the MLflow run ends FAILED and no output is left half-written",
                  signal.Signals(signum).name)
        raise Terminated(signum)

    def __enter__(self) -> _SigtermGuard:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.armed = False


@contextlib.contextmanager
def _unwind_on_sigterm() -> Iterator[_SigtermGuard]:
    guard = _SigtermGuard()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard.handle)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)
    if guard.deferred is not None:  # reached only when nothing else is propagating
        raise Terminated(guard.deferred)


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


class StageRun:
    """The few things a stage logs; keeps mlflow out of the stage modules."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in lineage.flatten(metrics).items() if isinstance(v, (int, float))}
        if numeric:
            mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        mlflow.log_dict(dict(data), name)

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any]) -> Iterator[StageRun]:
        """A nested run under this stage's run (one per baseline configuration), with the stage's tags."""
        parent = mlflow.get_run(self.run_id)
        tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
        with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags) as run:
            mlflow.log_params(lineage.flatten(params))
            yield StageRun(run.info.run_id)

    def log_torch_model(self, model: Any, example: Any, step: int = 0) -> None:
        """The model in MLflow's pytorch flavor, with a signature inferred from `example` (a numpy batch): a
        logged model at `step`, to which MLflow links the run's metrics of that step."""
        registry.log_torch_model(model, example, step)

    def log_ensemble_model(self, path: Path, example: Any, metrics: Mapping[str, Any],
                           metadata: Mapping[str, Any] | None = None) -> str:
        """The ensemble file as a new version of the registered model `<dataset.name>-ensemble`; the alias
        `champion` moves to it unless it is worse than the champion beyond params.yaml's `report.gates`.
        Returns what happened to the alias (fmnist.tracking.registry.log_ensemble_model)."""
        params = parse_params(lineage.all_params())
        return registry.log_ensemble_model(path, example, registry.ensemble_name(params.dataset.name),
                                           params.report.gates, metrics, metadata)


def experiment_name() -> str:
    """MLFLOW_EXPERIMENT_NAME, else the dataset's name in params.yaml."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or (lineage.all_params().get("dataset") or {}).get("name") \
        or "Default"


def _open_once(stage: str, params: Mapping[str, Any], uri: str, key: str) -> tuple[Any, str, str, Any]:
    with store_lock(uri):
        client = mlflow.MlflowClient(uri)  # opening a new SQLite store creates its schema: inside the lock
        experiment = experiment_id(experiment_name(), uri)
        parent_id = lineage.pipeline_parent(client, experiment, key)
        client.update_run(parent_id, status="RUNNING")
    remember_reached(uri, key)
    run = mlflow.start_run(experiment_id=experiment, run_name=stage, parent_run_id=parent_id,
                           tags={**lineage.run_tags(stage, params), "pipeline_key": key})
    return client, experiment, parent_id, run


def _open(stage: str, params: Mapping[str, Any], uri: str, key: str) -> tuple[Any, str, str, Any]:
    """The stage's run, opened under its pipeline's parent. Fails at once where this pipeline never reached the
    store (a wrong URI, a server not started: seconds, not minutes) or where the server refuses who asks; waits,
    bounded, where it did reach it earlier: the outage of a server restarting between two stages."""
    waited_since = None
    while True:
        try:
            return _open_once(stage, params, uri, key)
        except Exception as exc:  # MLflow raises many types (requests, sqlalchemy, its own) for one cause
            if (why := refusal(exc, uri)) is not None:
                raise TrackingError(why) from None
            cause = f"{type(exc).__name__}: {redact(str(exc))}"
        if not reached_earlier(uri, key):
            raise TrackingError(f"MLflow tracking store {redact(uri)} is not usable: {cause}\n"
                                "Start the server or fix MLFLOW_TRACKING_URI; unset it to use the local store "
                                "<repo>/mlflow.db.")
        limit = float(os.environ.get("FMNIST_TRACKING_WAIT_S", RESTART_WAIT_S))
        now = time.monotonic()
        if waited_since is None:
            waited_since = now
            log.warning("MLflow tracking server %s is not answering; it did earlier in this pipeline, so stage %s "
                        "waits up to %g s for it (a restart?)", redact(uri), stage, limit)
        elif now - waited_since > limit:
            raise TrackingError(f"MLflow tracking store {redact(uri)} did not come back within {limit:g} s "
                                f"(FMNIST_TRACKING_WAIT_S) for stage {stage}: {cause}\nWhat earlier stages logged "
                                "is kept there; once it answers, `dvc repro` runs what is left.")
        time.sleep(RETRY_EVERY_S)


@contextlib.contextmanager
def stage_run(stage: str) -> Iterator[StageRun]:
    """One MLflow run for one execution of the dvc.yaml stage `stage`, a child of its pipeline's parent run:
    the params dvc.yaml lists for it, flattened; tags; FAILED if the stage raises; at the end, the parent's
    lineage and metrics are brought up to date."""
    definition = lineage.stage_definition(stage)
    chosen_by_user = {key for key in (*HTTP_DEFAULTS, *HTTP_MID_RUN) if key in os.environ}
    with _environment(HTTP_DEFAULTS, keep=chosen_by_user):
        yield from _tracked(stage, definition, chosen_by_user)


@contextlib.contextmanager
def _ended(run: Any) -> Iterator[None]:
    """`with run`, except that a store that cannot take the FAILED status does not replace the error that failed
    the stage: it is logged, and the stage's own error goes on (a DDP rank whose peer was killed mid-write to the
    SQLite store gets "database is locked" here, which would hide the one line that says a peer failed)."""
    try:
        yield
    except BaseException:
        try:
            run.__exit__(*sys.exc_info())
        except Exception as exc:  # sqlalchemy, requests, MLflow: many types for one cause
            log.warning("MLflow run %s: its FAILED status was not recorded (%s: %s); it may show as RUNNING",
                        run.info.run_id, type(exc).__name__, (redact(str(exc)).splitlines() or [""])[0][:300])
        raise
    run.__exit__(None, None, None)


def _tracked(stage: str, definition: lineage.StageDefinition, chosen_by_user: set[str]) -> Iterator[StageRun]:
    """stage_run's body, under the fail-fast HTTP defaults."""
    params = definition.params
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    key = lineage.pipeline_key()
    client, experiment, parent_id, run = _open(stage, params, uri, key)
    status = "FAILED"
    produced: dict[str, str] = {}

    def record_in_pipeline() -> None:
        with store_lock(uri):
            lineage.update_pipeline(client, experiment, parent_id, stage, run.info.run_id, produced, status)

    try:
        with _environment(HTTP_MID_RUN, keep=chosen_by_user), _unwind_on_sigterm() as sigterm:
            try:
                with _ended(run), sigterm:  # sigterm's exit disarms it before the run's exit writes its status
                    mlflow.log_params(lineage.flatten(params))
                    log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, redact(uri))
                    yield StageRun(run.info.run_id)
                    # The md5s dvc.lock will record for this stage's outputs: how a later pipeline that skips
                    # this stage finds this run as the producer of what it reuses.
                    produced = lineage.output_hashes(definition.outputs)
                    mlflow.set_tag("dvc_outs", " ".join(f"{path}={md5}" for path, md5 in produced.items()))
                    status = "FINISHED"
                record_in_pipeline()
            except BaseException:
                if status == "FAILED":  # record the failure in the pipeline row, if the store allows it
                    with contextlib.suppress(Exception):
                        record_in_pipeline()
                raise
    except BaseException as exc:
        if (why := refusal(exc, uri)) is not None:
            raise TrackingError(f"{why}\nThe stage fails; what run {run.info.run_id} logged before is kept.") \
                from None
        if isinstance(exc, (MlflowException, requests.RequestException)):
            raise TrackingError(
                f"MLflow tracking store {redact(uri)} failed during stage {stage} (run {run.info.run_id}): "
                f"{redact(str(exc))}\n"
                "What was logged before is kept there. The stage fails so that DVC records none of its outputs: "
                "once the store answers again, `dvc repro` reruns it."
            ) from None
        raise
