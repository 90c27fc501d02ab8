"""A stage's MLflow run in a real local store: params exactly as dvc.yaml lists them, tags, the pipeline's parent
run, failures, and the models a stage registers."""
import os
import signal
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import fluent

from fmnist.digest import digest
from fmnist.tracking import lineage, registry
from fmnist.tracking.run import HTTP_DEFAULTS, Terminated, stage_run
from fmnist.tracking.store import TrackingError, tracking_uri


def store(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def test_local_store_is_anchored_at_dvc_root_not_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking_uri() == "http://team:5000"


def test_flatten_nests_and_indexes():
    flat = lineage.flatten({"a": {"b": 1, "c": [1, 2]}, "m": [{"x": 1}, {"x": 2}], "s": "v"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "m.0.x": 1, "m.1.x": 2, "s": "v"}


def test_params_hash_ignores_key_order_but_not_values():
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_a_stage_run_records_exactly_the_params_dvc_yaml_lists_for_it(project, params_with, monkeypatch):
    root = project(params_with())
    monkeypatch.setenv("DVC_EXP_NAME", "exp-one")
    with stage_run("verify") as run:
        run.log_metrics({"train": {"count": 5}})
    logged = store(root).get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "verify"
    dataset, verify = params_with()["dataset"], params_with()["verify"]  # verify lists both sections
    assert logged.data.params == {k: str(v) for k, v in lineage.flatten({"dataset": dataset, "verify": verify}).items()}
    assert logged.data.params["dataset.files.train_labels.name"] == "train-labels-idx1-ubyte.gz"
    assert logged.data.metrics == {"train.count": 5.0}
    assert logged.data.tags["stage"] == "verify" and logged.data.tags["dvc_exp_name"] == "exp-one"
    assert logged.data.tags["params_hash"] == digest({"dataset": dataset, "verify": verify})
    assert logged.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    assert store(root).get_experiment(logged.info.experiment_id).name == "tiny"  # dataset.name


def test_the_ensemble_stage_run_records_the_evaluate_key_that_shapes_its_metrics(project):
    project()
    with stage_run("ensemble") as run:
        pass
    params = mlflow.get_run(run.run_id).data.params
    assert params["evaluate.ece_bins"] == "15" and "evaluate.mistakes" not in params  # exactly dvc.yaml's keys
    assert params["members.m0.seed"] == "0" and params["train.threads"] == "0" and "train.epochs" not in params


def test_a_stage_definition_reads_params_and_outs_as_dvc_shows_them(project):
    import dvc.api

    root = project()
    (root / "extra.yaml").write_text(yaml.safe_dump({"train": {"note": "other file"}, "solo": {"k": 1}}))
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    pipeline["stages"]["ensemble"]["params"] += [{"extra.yaml": ["train.note", "solo"]}]
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    for stage in ("train@m1", "ensemble", "baselines"):
        assert lineage.stage_definition(stage).params == dvc.api.params_show(stages=[stage])
    # a key two params files share is prefixed with its file, as params_show does; a key of one file is not
    assert {"params.yaml:train", "extra.yaml:train", "solo"} <= set(lineage.stage_definition("ensemble").params)
    assert lineage.stage_definition("train@m1").outputs == ["models/members/m1.pt", "metrics/train/m1.json",
                                                            "metrics/history/m1.csv"]


@pytest.mark.fault
def test_a_stage_dvc_yaml_does_not_define_fails_naming_it(project):
    project()
    with pytest.raises(TrackingError, match=r"params dvc.yaml lists for stage 'nonesuch'.*not found"):
        with stage_run("nonesuch"):
            pass


def test_a_channels_last_member_logs_quietly_and_loads_back_with_the_same_outputs(project):
    import warnings

    import numpy as np
    import torch

    from fmnist.model import nets

    project()
    torch.manual_seed(0)
    model = nets.build("fast", 3, (28, 28)).to(memory_format=torch.channels_last).eval()  # as training leaves it
    example = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with stage_run("train@m0") as run, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run.log_torch_model(model, example)
    assert not [w for w in seen if "complete tensor" in str(w.message)]
    assert not model.features[2][0].weight.is_contiguous(), "the caller's model keeps its layout"
    loaded = mlflow.pytorch.load_model(f"runs:/{run.run_id}/model")
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(example)), model(torch.from_numpy(example)))


# What torch's restricted (weights_only) unpickler admits for a tensor: the only pickle a member's model may hold.
TENSOR_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"}


def pickles_in(name: str, data: bytes) -> dict[str, set[str]]:
    """{record: the globals its pickle stream names} for every pickle in `data`, opening zip archives (a .pt2 archive,
    the torch.save files inside it) whatever their names: judged by content, not by file name."""
    import io
    import pickletools
    import zipfile

    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {found: names for member in archive.namelist()
                    for found, names in pickles_in(f"{name}!{member}", archive.read(member)).items()}
    if data[:1] != b"\x80":  # every pickle protocol >= 2 stream opens with PROTO
        return {}
    names, strings = set(), []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            names.add(argument)
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            names.add(" ".join(strings[-2:]))
    return {name: names}


def test_a_member_model_holds_no_pickle_but_a_tensor_and_its_loader_refuses_anything_else(project, tmp_path,
                                                                                         monkeypatch):
    import io
    import json
    import zipfile

    import numpy as np
    import torch
    from mlflow.exceptions import MlflowException

    from fmnist.model import nets

    project()
    torch.manual_seed(0)
    model = nets.build("fast", 3, (28, 28)).eval()
    example = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with stage_run("train@m0") as run:
        run.log_torch_model(model, example)
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/model", dst_path=str(tmp_path / "m")))
    found = {}
    for path in local.rglob("*"):
        if path.is_file():
            found.update(pickles_in(path.relative_to(local).as_posix(), path.read_bytes()))
    # One pickle: the example input torch.export keeps, a tensor. Weights are raw bytes, the graph is JSON.
    assert list(found) == ["data/model.pt2!model/data/sample_inputs/model.pt!archive/data.pkl"], found
    assert set().union(*found.values()) <= TENSOR_GLOBALS, found
    with zipfile.ZipFile(local / "data" / "model.pt2") as archive:
        weights = json.loads(archive.read("model/data/weights/model_weights_config.json"))["config"]
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    assert weights and not [key for key, entry in weights.items() if entry["use_pickle"]]

    # The loader as docs/mlflow.md says to run it: MLflow checks every record before torch.export.load, which
    # would otherwise fall back to unpickling anything (weights_only=False) when the restricted unpickler refuses.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with torch.no_grad():
        torch.testing.assert_close(mlflow.pytorch.load_model(str(local))(torch.from_numpy(example)),
                                   model(torch.from_numpy(example)))
    crafted = io.BytesIO()
    torch.save({"x": Path("/")}, crafted)  # any object that is not a tensor: a PosixPath here, harmless
    records["model/data/sample_inputs/model.pt"] = crafted.getvalue()
    with zipfile.ZipFile(local / "data" / "model.pt2", "w") as archive:
        for record, data in records.items():
            archive.writestr(record, data)
    with pytest.raises(MlflowException, match=r"record 'model/data/sample_inputs/model.pt'.* not a pickle-free"):
        mlflow.pytorch.load_model(str(local))


@pytest.mark.fault
def test_failing_stage_leaves_a_failed_run_and_a_failed_pipeline(project):
    root = project()
    with pytest.raises(RuntimeError), stage_run("train@m0") as run:
        raise RuntimeError("boom")
    child = store(root).get_run(run.run_id)
    parent = store(root).get_run(child.data.tags["mlflow.parentRunId"])
    assert child.info.status == "FAILED" and parent.info.status == "FAILED"
    assert parent.data.tags["lineage.train/m0"] == f"failed {run.run_id}"


@pytest.mark.fault
def test_sigterm_ends_the_run_failed_instead_of_leaving_it_running(project):
    # torchrun stops the surviving workers with SIGTERM; Python's default would die without ending the run
    root = project()
    with pytest.raises(Terminated) as stopped, stage_run("train@m0") as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only as long as the run
    child = store(root).get_run(run.run_id)
    assert child.info.status == "FAILED"
    assert store(root).get_run(child.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


def sigterm_when_the_stage_run_ends(monkeypatch, stage_run_id: list[str]) -> None:
    """SIGTERM delivered while MLflow writes the stage run's final status: what rank 0 of a DDP stage gets when a
    peer dies, gloo's error first and torchrun's SIGTERM a moment later."""
    end_run = fluent.end_run

    def interrupted(*args, **kwargs):
        if mlflow.active_run().info.run_id in stage_run_id:  # not the pipeline's parent run
            os.kill(os.getpid(), signal.SIGTERM)
        return end_run(*args, **kwargs)

    monkeypatch.setattr(fluent, "end_run", interrupted)  # what the run's context manager calls


@pytest.mark.fault
def test_a_sigterm_during_a_failed_runs_closing_cannot_leave_it_running(project, monkeypatch):
    root = project()
    ending: list[str] = []
    sigterm_when_the_stage_run_ends(monkeypatch, ending)
    with pytest.raises(RuntimeError, match="peer died"), stage_run("train@m0") as run:
        ending.append(run.run_id)
        raise RuntimeError("peer died")  # the first failure is the one reported
    child = store(root).get_run(run.run_id)
    assert child.info.status == "FAILED"
    assert store(root).get_run(child.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


@pytest.mark.fault
def test_a_store_that_cannot_take_the_failed_status_does_not_hide_the_stages_error(project, monkeypatch, caplog):
    import sqlite3

    import sqlalchemy.exc

    root = project()
    end_run = fluent.end_run

    def locked(status="FINISHED", *args, **kwargs):
        if status == "FAILED":  # what a DDP rank got when its peer was killed while writing to the SQLite store
            raise sqlalchemy.exc.OperationalError("UPDATE runs SET status=?", ("FAILED",),
                                                  sqlite3.OperationalError("database is locked"))
        return end_run(status, *args, **kwargs)

    monkeypatch.setattr(fluent, "end_run", locked)
    try:
        with pytest.raises(RuntimeError, match="peer died"), stage_run("train@m0") as run:
            raise RuntimeError("peer died")
        left = store(root).get_run(run.run_id).info.status
    finally:
        monkeypatch.undo()
        mlflow.end_run()  # the run the store could not close is still this process's active run
    assert f"MLflow run {run.run_id}: its FAILED status was not recorded (OperationalError" in caplog.text
    assert "database is locked" in caplog.text and left == "RUNNING"


@pytest.mark.fault
def test_a_sigterm_during_a_finished_runs_closing_stops_the_stage_after_it(project, monkeypatch):
    root = project()
    ending: list[str] = []
    sigterm_when_the_stage_run_ends(monkeypatch, ending)
    with pytest.raises(Terminated), stage_run("train@m0") as run:
        ending.append(run.run_id)
    assert store(root).get_run(run.run_id).info.status == "FINISHED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_stages_of_one_execution_share_a_parent_holding_params_dataset_and_metrics(project, params_with):
    params = params_with()
    params["preprocess"]["seed"] = 3
    root = project(params)
    (root / "metrics").mkdir()
    (root / "metrics" / "verify.json").write_text('{"train_count": 5, "ok": true}')
    (root / "dvc.lock").write_text("schema: '2.0'\nstages:\n  verify:\n    cmd: python -m stages.verify\n    outs:\n"
                                   "    - path: metrics/verify.json\n      hash: md5\n      md5: feed\n")
    with stage_run("train@m0") as first:
        pass
    with stage_run("train@m1") as second:
        pass
    parents = {store(root).get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in (first, second)}
    assert len(parents) == 1  # one process, no DVC: one pipeline execution
    parent = store(root).get_run(parents.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "pipeline"
    assert parent.data.params["preprocess.seed"] == "3"
    assert parent.data.tags["lineage.train/m0"] == f"ran {first.run_id}"
    assert parent.data.tags["lineage.train/m1"] == f"ran {second.run_id}"
    # verify did not run here and no run in the store wrote its recorded output
    assert parent.data.tags["lineage.verify"] == "cached (no run in this store wrote its outputs)"
    assert parent.data.metrics == {"verify/train_count": 5.0}
    (dataset,) = parent.inputs.dataset_inputs
    assert dataset.dataset.name == "tiny" and dataset.dataset.digest == digest(
        {role: spec["sha256"] for role, spec in params["dataset"]["files"].items()})


@pytest.mark.fault
def test_unreachable_server_fails_fast_naming_the_uri_without_its_credentials(project, monkeypatch, caplog):
    project()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ci:s3cret@127.0.0.1:9")  # discard port: nothing listens
    for name in HTTP_DEFAULTS:  # the stage's own bounds, not a test's
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"(?s)http://\*\*\*@127.0.0.1:9 is not usable.*MLFLOW_TRACKING_URI") \
            as failed, stage_run("verify"):
        pass
    assert time.monotonic() - started < 30
    assert "s3cret" not in str(failed.value) and "s3cret" not in caplog.text
    assert not set(HTTP_DEFAULTS) & set(os.environ)  # scoped to the run: a later one sees no user setting


def test_the_ensemble_is_logged_as_code_and_loads_without_unpickling(project, params_with, tmp_path):
    import warnings

    import numpy as np
    import yaml

    from fmnist.files import save_torch
    from tests.conftest import tiny_ensemble

    project(params_with())
    ensemble = tiny_ensemble()
    ensemble.temperatures = np.array([0.7])  # the served model applies the fitted temperatures
    save_torch(tmp_path / "ensemble.pt", ensemble.to_state())
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    with stage_run("evaluate") as run, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        verdict = run.log_ensemble_model(tmp_path / "ensemble.pt", images[:2], metrics={},
                                         metadata={"temperatures": {"m0": 0.7}})
    assert not [w for w in seen if "pickle" in str(w.message).lower()], [str(w.message) for w in seen]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/ensemble", dst_path=str(tmp_path / "m")))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    pickled = {}
    for path in local.rglob("*"):
        if path.is_file():
            pickled.update(pickles_in(path.relative_to(local).as_posix(), path.read_bytes()))
    # nothing cloudpickled: the one pickle is the weights file, tensors that load with weights_only=True
    assert list(pickled) == ["artifacts/ensemble.pt!archive/data.pkl"], pickled
    assert {name for name in pickled["artifacts/ensemble.pt!archive/data.pkl"] if "Storage" not in name} <= \
        TENSOR_GLOBALS, pickled
    code = sorted(f for f in files if f.startswith("code/"))
    assert code and all(f.startswith(("code/fmnist/model/", "code/fmnist/serving/")) or f == "code/fmnist/__init__.py"
                        for f in code), code  # the served code only: no stage, tool or tracking module
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["metadata"]["temperatures"] == {"m0": 0.7}
    assert mlmodel["flavors"]["python_function"]["model_code_path"].endswith("pyfunc.py")
    requirements = (local / "requirements.txt").read_text().split()
    assert set(requirements) >= set(registry.locked_requirements(registry.SERVING_PACKAGES))
    assert verdict == "tiny-ensemble version 1 is the first champion"
    loaded = mlflow.pyfunc.load_model("models:/tiny-ensemble@champion")
    frame = loaded.predict(images)
    np.testing.assert_allclose(frame[ensemble.classes].to_numpy(), ensemble.predict_proba(images), rtol=1e-6)
    assert list(frame["class"]) == [ensemble.classes[i] for i in ensemble.predict_proba(images).argmax(1)]


@pytest.mark.fault
def test_a_lock_without_a_pin_names_the_package_and_the_fix(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0.0 \\\n    --hash=sha256:00\n")
    assert registry.locked_requirements(("numpy",), lock) == ["numpy==2.0.0"]
    with pytest.raises(TrackingError, match=r"requirements.lock: no pin for torch.*make lock"):
        registry.locked_requirements(("numpy", "torch"), lock)
    with pytest.raises(TrackingError, match=r"missing.lock: cannot read"):
        registry.locked_requirements(("numpy",), tmp_path / "missing.lock")


@pytest.mark.fault
def test_a_registered_model_that_is_not_there_names_the_uri_and_the_store(project):
    project()
    with pytest.raises(TrackingError, match=r"cannot fetch models:/nothing@champion from the tracking "
                                            r"store sqlite:///(?s:.*)mlflow.db(?s:.*)dvc repro"):
        registry.registered_ensemble_file("models:/nothing@champion")
