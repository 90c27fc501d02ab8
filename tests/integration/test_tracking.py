import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from stages import tracking
from stages.common import digest, flatten


def test_local_store_is_anchored_at_dvc_root_not_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking.tracking_uri() == "http://team:5000"


def test_flatten_nests_and_indexes():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "m": [{"x": 1}, {"x": 2}], "s": "v"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "m.0.x": 1, "m.1.x": 2, "s": "v"}


def test_params_hash_ignores_key_order_but_not_values():
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_stage_run_logs_params_metrics_and_tags(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-one")
    with tracking.stage_run("verify", {"verify": {"max_class_imbalance": 1.0}}, experiment="tiny") as run:
        run.log_metrics({"train": {"count": 5}})
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = store.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "verify"
    assert logged.data.params == {"verify.max_class_imbalance": "1.0"}
    assert logged.data.metrics == {"train.count": 5.0}
    assert logged.data.tags["stage"] == "verify" and logged.data.tags["dvc_exp_name"] == "exp-one"
    assert len(logged.data.tags["params_hash"]) == 16
    assert logged.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_a_channels_last_member_logs_quietly_and_loads_back_with_the_same_outputs(monkeypatch, tmp_path):
    import warnings

    import numpy as np
    import torch

    from stages import nets

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    torch.manual_seed(0)
    model = nets.build("fast", 3, (28, 28)).to(memory_format=torch.channels_last).eval()  # as training leaves it
    example = np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32)
    with tracking.stage_run("train", {}, experiment="tiny") as run, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run.log_torch_model(model, example)
    assert not [w for w in seen if "complete tensor" in str(w.message)]
    assert not model.features[2][0].weight.is_contiguous(), "the caller's model keeps its layout"
    loaded = mlflow.pytorch.load_model(f"runs:/{run.run_id}/model")
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.from_numpy(example)), model(torch.from_numpy(example)))


@pytest.mark.fault
def test_failing_stage_leaves_a_failed_run_and_a_failed_pipeline(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(RuntimeError), tracking.stage_run("train", {}, experiment="tiny") as run:
        raise RuntimeError("boom")
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = store.get_run(run.run_id)
    parent = store.get_run(child.data.tags["mlflow.parentRunId"])
    assert child.info.status == "FAILED" and parent.info.status == "FAILED"
    assert parent.data.tags["lineage.train"] == f"failed {run.run_id}"


@pytest.mark.fault
def test_sigterm_ends_the_run_failed_instead_of_leaving_it_running(monkeypatch, tmp_path):
    # torchrun stops the surviving workers with SIGTERM; Python's default would die without ending the run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(tracking.Terminated) as stopped, tracking.stage_run("train", {}, experiment="tiny") as run:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lives only as long as the run
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = store.get_run(run.run_id)
    assert child.info.status == "FAILED"
    assert store.get_run(child.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


def test_stages_of_one_execution_share_a_parent_holding_params_dataset_and_metrics(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "dataset:\n  name: tiny\n  files: {train_images: {name: a.gz, sha256: abc}}\n"
        "preprocess: {seed: 3}\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "verify.json").write_text('{"train_count": 5, "ok": true}')
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  verify:\n    outs:\n    - path: metrics/verify.json\n      md5: feed\n")
    with tracking.stage_run("train@m0", {}, experiment="tiny") as first:
        pass
    with tracking.stage_run("train@m1", {}, experiment="tiny") as second:
        pass
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = {store.get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in (first, second)}
    assert len(parents) == 1  # one process, no DVC: one pipeline execution
    parent = store.get_run(parents.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "pipeline"
    assert parent.data.params["preprocess.seed"] == "3"
    assert parent.data.tags["lineage.train/m0"] == f"ran {first.run_id}"
    assert parent.data.tags["lineage.train/m1"] == f"ran {second.run_id}"
    # verify did not run here and no run in the store wrote its recorded output
    assert parent.data.tags["lineage.verify"] == "cached (no run in this store wrote its outputs)"
    assert parent.data.metrics == {"verify/train_count": 5.0}
    (dataset,) = parent.inputs.dataset_inputs
    assert dataset.dataset.name == "tiny" and dataset.dataset.digest == digest({"train_images": "abc"})


@pytest.mark.fault
def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    for name in tracking.HTTP_DEFAULTS:  # the stage's own bounds, not a test's
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=r"(?s)http://127.0.0.1:9 is not usable.*MLFLOW_TRACKING_URI"):
        with tracking.stage_run("verify", {}, experiment="tiny"):
            pass
    assert time.monotonic() - started < 30
    assert not set(tracking.HTTP_DEFAULTS) & set(os.environ)  # scoped to the run: a later one sees no user setting


def test_the_ensemble_is_logged_as_code_and_loads_without_unpickling(monkeypatch, tmp_path):
    import warnings

    import numpy as np
    import yaml

    from tests.conftest import tiny_ensemble

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    ensemble = tiny_ensemble()
    ensemble.temperatures = np.array([0.7])  # the served model applies the fitted temperatures
    ensemble.save(tmp_path / "ensemble.pt")
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    with tracking.stage_run("evaluate", {}, experiment="tiny") as run, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        verdict = run.log_ensemble_model(tmp_path / "ensemble.pt", images[:2], name="tiny-ensemble", gates=[],
                                         metrics={}, metadata={"temperatures": {"m0": 0.7}})
    assert not [w for w in seen if "pickle" in str(w.message).lower()], [str(w.message) for w in seen]
    local = mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/ensemble", dst_path=str(tmp_path / "model"))
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files  # nothing cloudpickled
    mlmodel = yaml.safe_load((Path(local) / "MLmodel").read_text())
    assert mlmodel["metadata"]["temperatures"] == {"m0": 0.7}
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("ensemble_pyfunc.py")
    requirements = (Path(local) / "requirements.txt").read_text().split()
    assert set(requirements) >= set(tracking.locked_requirements(tracking.SERVING_PACKAGES))
    assert verdict == "tiny-ensemble version 1 is the first champion"
    loaded = mlflow.pyfunc.load_model("models:/tiny-ensemble@champion")
    frame = loaded.predict(images)
    np.testing.assert_allclose(frame[ensemble.classes].to_numpy(), ensemble.predict_proba(images), rtol=1e-6)
    assert list(frame["class"]) == [ensemble.classes[i] for i in ensemble.predict_proba(images).argmax(1)]


@pytest.mark.fault
def test_a_lock_without_a_pin_names_the_package_and_the_fix(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.0.0 \\\n    --hash=sha256:00\n")
    assert tracking.locked_requirements(("numpy",), lock) == ["numpy==2.0.0"]
    with pytest.raises(tracking.TrackingError, match=r"requirements.lock: no pin for torch.*make lock"):
        tracking.locked_requirements(("numpy", "torch"), lock)
    with pytest.raises(tracking.TrackingError, match=r"missing.lock: cannot read"):
        tracking.locked_requirements(("numpy",), tmp_path / "missing.lock")


def test_champion_moves_only_to_a_version_at_least_as_good_within_the_gates(monkeypatch, tmp_path):
    from stages.config import Gate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    gates = [Gate(metric="ensemble_accuracy", max_worsening=0.003), Gate(metric="ensemble_log_loss",
                                                                         max_worsening=0.01)]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    verdicts = []
    for accuracy, loss in ((0.940, 0.30), (0.945, 0.29), (0.943, 0.295), (0.930, 0.29), (0.944, 0.32)):
        metrics = {"ensemble_accuracy": accuracy, "ensemble_log_loss": loss}
        with tracking.stage_run("evaluate", {}, experiment="tiny") as run:
            run.log_metrics(metrics)
        if not client.search_registered_models():
            client.create_registered_model("tiny-ensemble")
        version = client.create_model_version("tiny-ensemble", f"runs:/{run.run_id}/ensemble", run.run_id).version
        verdicts.append(tracking.promote(client, "tiny-ensemble", version, metrics, gates))
    assert verdicts[0] == "tiny-ensemble version 1 is the first champion"
    assert verdicts[1].startswith("tiny-ensemble version 2 is the champion, replacing version 1")
    assert verdicts[2].startswith("tiny-ensemble version 3 is the champion")  # 0.2 points worse: within 0.3
    assert "version 2 stays" not in verdicts[2]
    assert verdicts[3].startswith("tiny-ensemble version 4 is not the champion; version 3 stays")
    assert "ensemble_accuracy got worse by 0.013" in verdicts[3]
    assert "ensemble_log_loss got worse by 0.025" in verdicts[4]
    assert str(client.get_model_version_by_alias("tiny-ensemble", "champion").version) == "3"


@pytest.mark.fault
def test_a_registered_model_that_is_not_there_names_the_uri_and_the_store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(tracking.TrackingError, match=r"cannot fetch models:/nothing@champion from the tracking "
                                                     r"store sqlite:///(?s:.*)mlflow.db(?s:.*)dvc repro"):
        tracking.registered_ensemble_file("models:/nothing@champion")
