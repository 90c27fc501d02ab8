"""Lineage: what ties a stage's MLflow run to the code, params and pipeline that made it. The tags of a run
(commit, params digest, DVC experiment), which `dvc repro` launched it, which outputs DVC records for it, and the
pipeline's parent run that names, for every stage, the run that produced what it holds.

fmnist.tracking.run opens the stage runs and calls this module for their params, tags and parent.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, RunTag

from fmnist.digest import digest
from fmnist.tracking.store import TrackingError, repo_root

LOCK_FILE = "dvc.lock"

# libyaml's safe loader where PyYAML was built with it: the same documents, parsed 7x faster (dvc.lock, read at
# every stage run's end: 7 ms against 53 in pure Python)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}, as MLflow params and metrics are named; lists of mappings are indexed,
    other lists kept as JSON."""
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


def _process(pid: int) -> tuple[int, str, list[str]] | None:
    """(parent pid, start time in clock ticks, argv) of a Linux process, or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the fields after it do not.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], [a.decode(errors="replace") for a in argv if a]


def _is_dvc(argv: list[str]) -> bool:
    """`dvc ...`, `python .../bin/dvc ...` or `python -m dvc ...`."""
    names = [Path(a).name for a in argv[:3]]
    return bool(names) and ("dvc" == names[0] or names[0].startswith("python") and "dvc" in names[1:3])


def launching_dvc() -> str | None:
    """'pid:start' of the nearest `dvc` ancestor process: one id per `dvc repro` / queued experiment, shared by
    all the stages it runs (DVC itself exports no such id). None when not run by DVC or not on Linux."""
    pid = os.getppid()
    for _ in range(12):
        info = _process(pid)
        if info is None or pid <= 1:
            return None
        parent, started, argv = info
        if _is_dvc(argv):
            return f"{pid}:{started}"
        pid = parent
    return None


def pipeline_key() -> str:
    """Same for every stage of one pipeline execution, different for the next one (or for a stage run by hand).
    Not the commit or params: a commit made while `dvc repro` runs must not split its pipeline in two."""
    return digest({"invocation": launching_dvc() or f"manual:{os.getpid()}",
                   "experiment": os.environ.get("DVC_EXP_NAME", "")})


def lock_outputs(lock_path: str | Path = LOCK_FILE) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock (metrics and plots included: DVC lists them as outs)."""
    path = Path(lock_path)
    return lock_text_outputs(path.read_text()) if path.is_file() else {}


def lock_text_outputs(text: str) -> dict[str, dict[str, str]]:
    """lock_outputs of a dvc.lock's text (one read from git, say)."""
    lock = yaml.load(text, Loader=_SAFE_LOADER) or {}
    return {stage: {out["path"]: out["md5"] for out in entry.get("outs", []) if "md5" in out}
            for stage, entry in (lock.get("stages") or {}).items()}


def output_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    """DVC's own md5 of each output (a directory gets DVC's '<md5>.dir' tree hash), as dvc.lock will record it."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    odb = HashFileDB(MemoryFileSystem(), "/lineage")  # dry run: hashes only, nothing stored
    hashes = {}
    for path in paths:
        if Path(path).exists():
            _, _, obj = build(odb, str(path), LocalFileSystem(), "md5", dry_run=True)
            hashes[Path(path).as_posix()] = obj.hash_info.value
    return hashes


@dataclass(frozen=True)
class StageDefinition:
    """What dvc.yaml says of one stage: the params it lists, with their values, and its outs."""
    params: dict[str, Any]
    outputs: list[str]


def stage_definition(stage: str) -> StageDefinition:
    """The params dvc.yaml lists for `stage` (e.g. 'train@m0'), with their values, shaped as
    `dvc.api.params_show(stages=[stage])` gives them: what the stage's run records and its params hash digests, so
    MLflow and DVC agree on what a stage depends on. And the outs it declares (metrics and plots included).
    One read of the project for both: params_show opens it once more, through DVC's revision machinery, and costs
    about a second per stage run."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:  # the working directory's project: in `dvc exp run --temp` that is the experiment's copy, not DVC_ROOT
        with Repo() as repo:
            (found,) = repo.stage.collect(stage)
            by_file = {dep.def_path: dep.read_params(flatten=False) for dep in found.params}
            outputs = [out.def_path for out in found.outs]
    except (DvcException, ValueError) as exc:
        raise TrackingError(f"cannot read the params dvc.yaml lists for stage {stage!r} in {Path.cwd()}: {exc}. "
                            "Run the stage from the DVC project (dvc repro), with the stage defined in dvc.yaml"
                            ) from None
    # As params_show merges files: a top-level key that two params files share is prefixed with its file's path.
    counts = Counter(key for values in by_file.values() for key in values)
    params = {(key if counts[key] == 1 else f"{path}:{key}"): value
              for path, values in by_file.items() for key, value in values.items()}
    return StageDefinition(params, outputs)


def outputs_digest(outputs: dict[str, dict[str, str]]) -> str:
    """One digest of every stage's recorded outputs: the data-identity part of dvc.lock."""
    canonical = "\n".join(f"{stage} {path} {md5}" for stage in sorted(outputs)
                          for path, md5 in sorted(outputs[stage].items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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


def run_key(stage: str) -> str:
    """Stage names such as train@m0 as MLflow metric/tag keys, which allow no '@'."""
    return stage.replace("@", "/")


def all_params() -> dict[str, Any]:
    """The whole params.yaml of the working directory's project, decoded ({} where there is none)."""
    path = Path("params.yaml")
    return (yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}) if path.is_file() else {}


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


def pipeline_parent(client: mlflow.MlflowClient, experiment_id: str, key: str) -> str:
    """The parent run of the pipeline execution this stage belongs to: found by its key, else created with the
    whole params.yaml, the dataset and the code version."""
    params = all_params()
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


def update_pipeline(client: mlflow.MlflowClient, experiment_id: str, parent_id: str, stage: str, run_id: str,
                    produced: dict[str, str], status: str) -> None:
    """Bring the parent's lineage up to date: this stage's run, the producing run of every stage DVC skipped,
    the digest of all recorded outputs, and every metrics file's numbers, so the pipeline row is complete."""
    outputs = {**lock_outputs(), stage: produced}
    existing = client.get_run(parent_id).data.tags
    tags = {f"lineage.{run_key(stage)}": f"{'ran' if status == 'FINISHED' else 'failed'} {run_id}",
            "dvc_outs_digest": outputs_digest(outputs)}
    for other, outs in outputs.items():
        key = f"lineage.{run_key(other)}"
        if other != stage and not existing.get(key, "").startswith(("ran ", "failed ")):
            tags[key] = _producer(client, experiment_id, other, outs)
    metrics = {}
    for path in _metrics_files(outputs):
        name = run_key(path.relative_to("metrics").with_suffix("").as_posix())
        values = flatten(json.loads(path.read_text()))
        metrics.update({_METRIC_NAME.sub("_", f"{name}/{k}"): float(v) for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for start in range(0, max(len(entries), 1), 1000):
        client.log_batch(parent_id, metrics=entries[start:start + 1000],
                         tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [])
    client.set_terminated(parent_id, status=status)
