"""The real pipeline on the real data in the CI profile: what one `dvc repro` leaves (outputs, MLflow runs and
their lineage), what reruns when something changes, sweeps, the registered model, and a kill mid-training."""
import hashlib
import json
import os
import signal
import subprocess
import time

import mlflow
import pytest
import torch
import yaml

from tests.conftest import real_params, subprocess_env
from tests.e2e.repos import (all_runs, cached_outputs, children, client, pipelines, ran, runs, set_param, sh,
                             wait_for_queue)

STAGES = ["download", "verify", "preprocess", "train@m0", "train@m1", "ensemble", "evaluate", "baselines",
          "visualize_data", "visualize"]


def test_one_repro_logs_every_stage_as_a_child_of_one_pipeline_run(repo):
    verify = json.loads((repo / "metrics/verify.json").read_text())
    assert verify["train_count"] == 60000 and verify["sha256_checked"] == 4  # the real data, checked
    preprocess = json.loads((repo / "metrics/preprocess.json").read_text())
    assert (preprocess["train_count"], preprocess["val_count"], preprocess["fit_count"]) == (3000, 600, 2400)
    head = sh(repo, "git", "rev-parse", "HEAD~1").strip()  # the commit the pipeline ran on
    logged = runs(repo)
    assert sorted(r.info.run_name for r in logged) == sorted(STAGES)
    for run in logged:
        assert run.info.status == "FINISHED"
        assert run.data.tags["git_commit"] == head and len(run.data.tags["params_hash"]) == 16
    (pipeline,) = pipelines(repo)  # one `dvc repro`, one parent row holding every stage
    assert sorted(children(repo, pipeline)) == sorted(STAGES) and pipeline.info.status == "FINISHED"
    assert {pipeline.data.tags[f"lineage.{r.info.run_name.replace('@', '/')}"] for r in logged} == {
        f"ran {r.info.run_id}" for r in logged}
    assert pipeline.data.params["preprocess.seed"] == "42" and pipeline.data.params["train.epochs"] == "2"
    assert pipeline.inputs.dataset_inputs[0].dataset.name == "fashion-mnist"
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert pipeline.data.metrics["evaluate/ensemble_accuracy"] == pytest.approx(report["ensemble_accuracy"])
    assert pipeline.data.metrics["preprocess/fit_count"] == 2400


def test_each_stage_run_records_exactly_the_params_dvc_yaml_lists_for_it(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    by_name = {r.info.run_name: r for r in runs(repo)}
    evaluate = by_name["evaluate"].data.params
    assert evaluate["evaluate.ece_bins"] == "15" and "train.net" not in evaluate  # not the whole params.yaml
    assert {key.split(".")[0] for key in evaluate} == {k.split(".")[0] for k in stages["evaluate"]["params"]}
    train = by_name["train@m1"].data.params
    assert train["members.m1.seed"] == "1" and "members.m0.seed" not in train and train["train.epochs"] == "2"
    assert "preprocess.seed" not in train


def test_the_outputs_are_what_the_ci_profile_makes(repo):
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.5 < report["ensemble_accuracy"] <= 1 and 0.5 < report["members_accuracy_mean"] <= 1
    assert set(report["per_class_f1"]) == set(real_params()["dataset"]["classes"])
    for name in ("confusion_matrix", "per_class", "reliability", "confident_mistakes"):
        assert (repo / "plots" / f"{name}.png").stat().st_size > 5000
    for name in ("visualize_data/sprite", "visualize_data/pixels_pca", "visualize_data/pixels_tsne",
                 "visualize/features_pca", "visualize/features_tsne"):
        assert (repo / "plots" / f"{name}.png").stat().st_size > 5000
    baselines = json.loads((repo / "metrics/baselines.json").read_text())
    assert len(baselines["configurations"]) == len(real_params()["baselines"]["profiles"]["quick"])
    assert 0.7 < baselines["best_accuracy"] < 1  # 2,400 images: the MLP or random forest, about 83%
    assert json.loads((repo / "metrics/ensemble.json").read_text())["members"] == 2
    state = torch.load(repo / "models/members/m0.pt", weights_only=True)
    assert state["net"] == real_params()["train"]["net"] and state["member"] == "m0" and len(state["classes"]) == 10
    train = json.loads((repo / "metrics/train/m0.json").read_text())
    assert 1 <= train["best_epoch"] <= 2 and train["val_accuracy"] > 0.5
    history = (repo / "metrics/history/m0.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy") and len(history) == 3
    member_run = next(r for r in runs(repo) if r.info.run_name == "train@m0")
    assert [m.step for m in client(repo).get_metric_history(member_run.info.run_id, "val_accuracy")] == [1, 2]
    assert member_run.data.tags["device"] == "cpu" and member_run.data.tags["processes"] == "1"


@pytest.mark.fault
def test_a_second_repro_reruns_nothing(repo):
    before = len(all_runs(repo))
    output = sh(repo, "dvc", "repro")
    assert ran(output) == [] and "up to date" in output
    assert len(all_runs(repo)) == before


def test_changing_a_preprocess_param_reruns_preprocess_and_points_at_the_runs_it_reused(repo):
    set_param(repo, "preprocess", "seed", 43)
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["preprocess"]
    first, second = pipelines(repo)
    assert children(repo, second) == ["preprocess"]
    # the stages DVC skipped point at the runs of the first pipeline that produced what this one reused
    produced = {r.info.run_name: r.info.run_id for r in runs(repo)
                if r.data.tags["mlflow.parentRunId"] == first.info.run_id}
    assert second.data.tags["lineage.download"] == f"cached {produced['download']}"
    assert second.data.tags["lineage.verify"] == f"cached {produced['verify']}"
    assert second.data.tags["lineage.preprocess"].startswith("ran ")
    assert second.data.tags["dvc_outs_digest"] != first.data.tags["dvc_outs_digest"]


def test_a_new_validation_split_reruns_what_trains_on_it_and_not_the_baselines(repo):
    set_param(repo, "preprocess", "val_fraction", 0.25)
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["preprocess"]
    # the baselines read the training images and labels, which a split leaves as they were
    assert sorted(json.loads(sh(repo, "dvc", "status", "--json"))) == ["ensemble", "train@m0", "train@m1"]


@pytest.mark.fault
def test_a_bad_param_fails_before_any_work(repo):
    params_file = repo / "params.yaml"
    params_file.write_text(params_file.read_text().replace("val_fraction: 0.2", "val_fraction: 1.2"))
    output = sh(repo, "dvc", "repro", "preprocess", check=False)
    assert "preprocess.val_fraction: Input should be less than 1 (got 1.2)" in output
    assert "Traceback" not in output and ran(output) == ["preprocess"]
    assert len(pipelines(repo)) == 1  # it failed before opening a run


def test_a_schema_edit_reruns_nothing_and_a_nets_edit_reruns_exactly_what_runs_a_net(repo):
    assert "Data and pipelines are up to date." in sh(repo, "dvc", "status")
    with open(repo / "fmnist/params.py", "a") as schema:
        schema.write("# a comment: validation only, it shapes no output\n")
    assert "Data and pipelines are up to date." in sh(repo, "dvc", "status")
    with open(repo / "fmnist/model/nets.py", "a") as nets:
        nets.write("# a comment in the nets module\n")
    changed = json.loads(sh(repo, "dvc", "status", "--json"))
    assert sorted(changed) == ["ensemble", "evaluate", "train@m0", "train@m1", "visualize"]
    for stage, reasons in changed.items():
        assert {"changed deps": {"fmnist/model/nets.py": "modified"}} in reasons, stage


def test_a_queued_sweep_runs_two_at_once_into_the_root_store(repo):
    for subset in (2000, 4000):
        sh(repo, "dvc", "exp", "run", "--queue", "-n", f"subset-{subset}", "-S", f"preprocess.train_subset={subset}",
           "preprocess")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, status
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    exp_fit_counts = {}
    for experiment in (e for baseline in shown for e in baseline["experiments"] or []):
        for revision in experiment["revs"]:
            data = revision["data"]
            exp_fit_counts[revision["name"]] = data["metrics"]["metrics/preprocess.json"]["data"]["fit_count"]
    swept = {r.data.tags["dvc_exp_name"]: r for r in pipelines(repo) if "dvc_exp_name" in r.data.tags}
    assert sorted(swept) == ["subset-2000", "subset-4000"]
    for name, pipeline in swept.items():
        assert children(repo, pipeline) == ["preprocess"]  # data stages restored from DVC's cache
        assert pipeline.data.tags["dvc_exp_baseline_rev"] == head
        assert pipeline.data.tags["lineage.download"].startswith("cached ")
        assert pipeline.data.metrics["preprocess/fit_count"] == exp_fit_counts[name]  # dvc exp show agrees
    assert {swept[n].data.metrics["preprocess/fit_count"] for n in swept} == {1600, 3200}


def test_the_registered_model_and_the_predict_command_agree_on_a_png(repo, tmp_path):
    import numpy as np
    from PIL import Image

    from fmnist.serving.inputs import convert_like_fashion_mnist

    test_image = np.load(repo / "data/processed/test/images.npy")[0]
    photo = Image.fromarray(255 - test_image).resize((140, 140), Image.NEAREST)  # dark product on white
    photo.save(tmp_path / "item.png")
    printed = sh(repo, "fmnist", "predict", "models/ensemble.pt", str(tmp_path / "item.png"))
    line = next(line for line in printed.splitlines() if line.startswith(str(tmp_path / "item.png")))
    predict_class = line.split(": ", 1)[1].split(", ")[0].rsplit(" ", 1)[0]  # "Ankle boot 97.1%, ..."
    pixels = convert_like_fashion_mnist(Image.open(tmp_path / "item.png")).tolist()
    (tmp_path / "input.json").write_text(json.dumps({"inputs": [pixels]}))
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    served = sh(repo, "mlflow", "models", "predict", "-m", "models:/fashion-mnist-ensemble@champion", "-i",
                str(tmp_path / "input.json"), "-t", "json", "--env-manager", "local", env=store)
    rows = json.loads(served[served.index("{"):served.rindex("}") + 1])["predictions"]
    assert rows[0]["class"] == predict_class
    from_registry = sh(repo, "fmnist", "predict", "models:/fashion-mnist-ensemble@champion",
                       str(tmp_path / "item.png"), env=store)
    assert line in from_registry.splitlines()
    evaluate = next(r for r in runs(repo) if r.info.run_name == "evaluate")
    assert evaluate.data.tags["champion"] == "fashion-mnist-ensemble version 1 is the first champion"
    member = next(r for r in runs(repo) if r.info.run_name == "train@m0")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store["MLFLOW_TRACKING_URI"])
        assert mlflow.models.get_model_info(f"runs:/{member.info.run_id}/model").signature is not None


@pytest.mark.fault
def test_sigkill_mid_training_leaves_nothing_to_cache_and_the_rerun_resumes_to_identical_bytes(repo):
    uninterrupted = cached_outputs(repo)["models/members/m0.pt"]  # the prepared run's, same commit and params
    resume = repo / "models/.resume/m0.pt"
    killed = subprocess.Popen(["dvc", "repro", "-f", "-s", "train@m0"], cwd=repo, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not resume.exists():  # the first epoch's checkpoint: training is under way
        assert killed.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage, with no chance to clean up
    killed.wait()
    # DVC removed the stage's outputs before running it; the stage renames new ones into place only when complete
    assert not (repo / "models/members/m0.pt").exists() and not (repo / "metrics/train/m0.json").exists()
    assert [p.name for p in (repo / "models/members").iterdir() if p.name.endswith(".tmp")] == []  # no temp file
    assert "train@m0" in sh(repo, "dvc", "status", "train@m0")  # DVC sees the stage as not done
    # forced: unforced, DVC would check the prepared run's outputs out of its cache, since nothing changed
    resumed = sh(repo, "dvc", "repro", "-f", "-s", "train@m0")
    assert "resuming from" in resumed and not resume.exists()
    assert hashlib.md5((repo / "models/members/m0.pt").read_bytes()).hexdigest() == uninterrupted
    assert cached_outputs(repo)["models/members/m0.pt"] == uninterrupted
