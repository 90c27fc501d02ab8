"""MLflow, and only here: one run per executed stage, tagged so any number can be traced to code and params."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import yaml
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from stages import lineage
from stages.common import StageError, digest, repo_root

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first use of one SQLite store is then unguarded
    fcntl = None

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
        # late: stages.ensemble imports this module
        from stages.ensemble import Ensemble

        self.ensemble = Ensemble.load(context.artifacts["ensemble"])

    def __getstate__(self) -> dict:
        # log_model pickles this object after load_context ran for the signature: without this, the members'
        # weights would be stored twice (pickle and ensemble.pt); load_context reloads them from the artifact.
        return {k: v for k, v in self.__dict__.items() if k != "ensemble"}

    def predict(self, context, model_input, params=None):
        from stages.predict import as_images, prediction_frame  # late, as above

        images = as_images(model_input, tuple(self.ensemble.image_shape))
        return prediction_frame(self.ensemble.predict_proba(images), self.ensemble.classes)


@contextlib.contextmanager
def local_server(store_uri: str, startup_s: float = 90) -> Iterator[str]:
    """`mlflow server` for `store_uri` on 127.0.0.1 (never all interfaces) and a free port, for as long as the
    block runs; yields its base URL once /health answers, and stops it and its workers afterwards."""
    import signal
    import socket
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", store_uri, "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_s
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    reason = (process.stderr.read().decode()[-2000:] if process.poll() is not None
                              else f"no answer in {startup_s:g} s")
                    raise TrackingError(f"mlflow server for {store_uri} did not start: {reason}") from None
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


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


def _run_key(stage: str) -> str:
    """Stage names such as train@m0 as MLflow metric/tag keys, which allow no '@'."""
    return stage.replace("@", "/")


def _all_params() -> dict[str, Any]:
    path = Path("params.yaml")
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _dataset_input(params: Mapping[str, Any]) -> Any:
    """The dataset as an MLflow input: its digest is that of the decoded files' SHA-256s (what verify checks),
    so two runs on the same bytes show the same dataset whatever mirror served them."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    dataset = params.get("dataset") or {}
    files = dataset.get("files") or {}
    mirrors = [m.get("location", "") for m in dataset.get("mirrors") or []]
    source = next((m for m in mirrors if m.startswith(("http://", "https://"))), None) or (
        (repo_root() / "data" / "raw").as_uri())
    return MetaDataset(HTTPDatasetSource(source), name=dataset.get("name", "dataset"),
                       digest=digest({k: v.get("sha256") for k, v in files.items()}))


def _pipeline_parent(client: mlflow.MlflowClient, experiment_id: str, key: str) -> str:
    """The parent run of the pipeline execution this stage belongs to: found by its key, else created with the
    whole params.yaml, the dataset and the code version."""
    params = _all_params()
    found = client.search_runs([experiment_id], f"tags.pipeline_key = '{key}' and tags.stage = 'pipeline'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**run_tags("pipeline", params), "pipeline_key": key}
    name = os.environ.get("DVC_EXP_NAME") or "pipeline"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as parent:
        flat = flatten(params)
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(list(flat.items())[start:start + 100]))
        mlflow.log_input(_dataset_input(params), context="train+test")
    return parent.info.run_id


# What MLflow accepts in a metric name; metrics files may hold others (baselines' 'SVC C=10 kernel=rbf').
_METRIC_NAME = re.compile(r"[^/\w.\- :]")


def _metrics_files(outputs: dict[str, dict[str, str]]) -> list[Path]:
    return sorted({Path(path) for outs in outputs.values() for path in outs
                   if path.startswith("metrics/") and path.endswith(".json") and Path(path).is_file()})


def _producer(client: mlflow.MlflowClient, experiment_id: str, stage: str, outs: Mapping[str, str]) -> str:
    """'cached <run id>' of the run that wrote the outputs dvc.lock records for a stage DVC did not rerun."""
    for path, md5 in outs.items():
        hits = client.search_runs([experiment_id], f"tags.stage = '{stage}' and tags.dvc_outs LIKE '%{path}={md5}%'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
        if hits:
            return f"cached {hits[0].info.run_id}"
    return "cached (no run in this store wrote its outputs)"


def _update_pipeline(client: mlflow.MlflowClient, experiment_id: str, parent_id: str, stage: str, run_id: str,
                     produced: dict[str, str], status: str) -> None:
    """Bring the parent's lineage up to date: this stage's run, the producing run of every stage DVC skipped,
    the digest of all recorded outputs, and every metrics file's numbers, so the pipeline row is complete."""
    outputs = {**lineage.lock_outputs(), stage: produced}
    existing = client.get_run(parent_id).data.tags
    tags = {f"lineage.{_run_key(stage)}": f"{'ran' if status == 'FINISHED' else 'failed'} {run_id}",
            "dvc_outs_digest": lineage.outputs_digest(outputs)}
    for other, outs in outputs.items():
        key = f"lineage.{_run_key(other)}"
        if other != stage and not existing.get(key, "").startswith(("ran ", "failed ")):
            tags[key] = _producer(client, experiment_id, other, outs)
    metrics = {}
    for path in _metrics_files(outputs):
        name = _run_key(path.relative_to("metrics").with_suffix("").as_posix())
        values = flatten(json.loads(path.read_text()))
        metrics.update({_METRIC_NAME.sub("_", f"{name}/{k}"): float(v) for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for start in range(0, max(len(entries), 1), 1000):
        client.log_batch(parent_id, metrics=entries[start:start + 1000],
                         tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [])
    client.set_terminated(parent_id, status=status)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str) -> Iterator[StageRun]:
    """One MLflow run for one stage execution, a child of its pipeline's parent run: params flattened, tags set,
    FAILED if the stage raises; at the end, the parent's lineage and metrics are brought up to date."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
    try:
        with _store_lock(uri):
            client = mlflow.MlflowClient(uri)  # opening a new SQLite store creates its schema: inside the lock
            experiment_id = _experiment_id(experiment, uri)
            key = lineage.pipeline_key()
            parent_id = _pipeline_parent(client, experiment_id, key)
            client.update_run(parent_id, status="RUNNING")
        run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent_id,
                               tags={**run_tags(stage, params), "pipeline_key": key})
    except Exception as exc:  # MLflow raises many types (requests, sqlalchemy, its own) for one cause
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable: {type(exc).__name__}: {exc}\n"
            "Start the server or fix MLFLOW_TRACKING_URI; unset it to use the local store <repo>/mlflow.db."
        ) from None
    status = "FAILED"
    produced: dict[str, str] = {}
    try:
        with run:
            mlflow.log_params(flatten(params))
            log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, uri)
            yield StageRun(run.info.run_id)
            # The md5s dvc.lock will record for this stage's outputs: how a later pipeline that skips this
            # stage finds this run as the producer of what it reuses.
            produced = lineage.output_hashes(lineage.stage_outputs(stage))
            mlflow.set_tag("dvc_outs", " ".join(f"{path}={md5}" for path, md5 in produced.items()))
            status = "FINISHED"
    finally:
        with _store_lock(uri):
            _update_pipeline(client, experiment_id, parent_id, stage, run.info.run_id, produced, status)
