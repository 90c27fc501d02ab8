"""The alias `champion` of a registered model: the first version, then each later version that is at least as
good on every gated metric (report.gates, no tolerance downwards), so a series of slightly worse versions can
never walk it down. The choice is a function of the registered versions alone, and every promoter sets the alias
again until no new version appeared meanwhile, so concurrent evaluates (`dvc queue start -j 2`) end with the
alias on the same, best version whatever the order of their calls. MLflow has no compare-and-set for aliases;
this needs none. An alias moved by hand is moved back by the next promotion."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from fmnist.evaluation.gates import worsening
from fmnist.params import Gate

log = logging.getLogger("fmnist.tracking")
CHAMPION = "champion"
# Where a version keeps the gated metrics it was registered with: comparable even once its run is deleted.
METRIC_TAG = "gated."


@dataclass(frozen=True)
class Candidate:
    version: str
    metrics: Mapping[str, float]


def record_gated_metrics(client: mlflow.MlflowClient, name: str, version: str, metrics: Mapping[str, Any],
                         gates: list[Gate]) -> None:
    for gate in gates:
        if gate.metric in metrics:
            client.set_model_version_tag(name, version, METRIC_TAG + gate.metric, repr(float(metrics[gate.metric])))


def worse_on(new: Mapping[str, float], old: Mapping[str, float], gates: list[Gate]) -> list[str]:
    """The gated metrics on which `new` is worse than `old` at all, as phrases; a metric either lacks is skipped."""
    worse = []
    for gate in gates:
        if gate.metric in new and gate.metric in old:
            diff = new[gate.metric] - old[gate.metric]
            if worsening(gate, diff) > 0:
                worse.append(f"{gate.metric} {old[gate.metric]:.6g} -> {new[gate.metric]:.6g}")
    return worse


def registered(client: mlflow.MlflowClient, name: str) -> list[ModelVersion]:
    """Every registered version of `name`, in version order."""
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def candidates(client: mlflow.MlflowClient, versions: list[ModelVersion]) -> tuple[list[Candidate], list[str]]:
    """Each of `versions` with its gated metrics (from its tags, else, for a version registered before they were
    recorded, from its run); and a line for each version left out."""
    found, left_out = [], []
    for version in versions:
        metrics = tagged_metrics(version)
        if not metrics:
            metrics = live_run_metrics(client, version.run_id)
            if metrics is None:
                left_out.append(f"version {version.version} is left out: it records no metrics and its run "
                                f"{version.run_id} was deleted")
                continue
        found.append(Candidate(str(version.version), metrics))
    return found, left_out


def live_run_metrics(client: mlflow.MlflowClient, run_id: str) -> dict[str, float] | None:
    try:
        run = client.get_run(run_id)
    except MlflowException:  # deleted for good (`mlflow gc`)
        return None
    return None if run.info.lifecycle_stage == "deleted" else run.data.metrics


def tagged_metrics(version: ModelVersion) -> dict[str, float]:
    return {key.removeprefix(METRIC_TAG): float(value) for key, value in (version.tags or {}).items()
            if key.startswith(METRIC_TAG)}


def choose(found: list[Candidate], gates: list[Gate]) -> Candidate | None:
    champion = None
    for candidate in found:
        if champion is None or not worse_on(candidate.metrics, champion.metrics, gates):
            champion = candidate
    return champion


def current(client: mlflow.MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:  # no champion yet, or its version was deleted
        return None


def promote(client: mlflow.MlflowClient, name: str, version: str, gates: list[Gate]) -> str:
    """Set `champion` to the best registered version (see the module's docstring) and say what happened to
    `version`: the first champion, the champion replacing another, or not the champion, and why."""
    before = current(client, name)
    while True:
        versions = registered(client, name)
        found, left_out = candidates(client, versions)
        best = choose(found, gates)
        if best is not None:
            client.set_registered_model_alias(name, CHAMPION, best.version)
        seen = [v.version for v in versions]
        if [v.version for v in registered(client, name)] == seen:  # none registered meanwhile: it saw them all
            break
    for line in left_out:
        log.warning("%s %s", name, line)
    mine = next((c for c in found if c.version == version), None)
    if best is None or mine is None:
        return f"{name} version {version} is not the champion: its metrics cannot be read"
    if best.version != version:
        reasons = worse_on(mine.metrics, best.metrics, gates) or ["registered earlier with the same metrics"]
        return f"{name} version {version} is not the champion; version {best.version} is: " + "; ".join(reasons)
    if before is None:
        first = len(found) == 1
        return f"{name} version {version} is the {'first champion' if first else 'champion (none was set)'}"
    if before == version:
        return f"{name} version {version} is the champion"
    held = next((c for c in found if c.version == before), None)
    if held is None:
        return f"{name} version {version} is the champion, replacing version {before}, which cannot be compared " \
               "(deleted, or its metrics with it)"
    compared = ", ".join(f"{g.metric} {held.metrics[g.metric]:.6g} -> {mine.metrics[g.metric]:.6g}" for g in gates
                         if g.metric in held.metrics and g.metric in mine.metrics) or "no gated metric"
    return f"{name} version {version} is the champion, replacing version {before} ({compared})"
