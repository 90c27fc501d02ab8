"""The real pipeline on the real data, in a temporary git+DVC copy of this repo."""
import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import (ROOT, S3_CREDENTIALS, bucket_keys, create_bucket, postgres_rows, real_params,
                            s3_checking_keys, subprocess_env)

pytestmark = pytest.mark.e2e

DEBIAN_DATA = Path(real_params()["dataset"]["mirrors"][0]["location"])
if not DEBIAN_DATA.is_dir():
    pytest.skip(f"{DEBIAN_DATA} missing: install the Debian package dataset-fashion-mnist", allow_module_level=True)


def sh(repo: Path, *cmd: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command in a test repo; `env` adds to (or, with None values, removes from) its environment."""
    environment = {**subprocess_env(), **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    done = subprocess.run(cmd, cwd=repo, env=environment, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{output}")
    return output


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """This working tree (tracked and untracked-not-ignored files) as a fresh git repo, one commit."""
    repo = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "dvc.lock")):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, check=True)
    return repo


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def all_runs(repo: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fashion-mnist")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def runs(repo: Path) -> list:
    """Stage runs, oldest first."""
    return [r for r in all_runs(repo) if r.data.tags["stage"] != "pipeline"]


def pipelines(repo: Path) -> list:
    """Pipeline (parent) runs, oldest first."""
    return [r for r in all_runs(repo) if r.data.tags["stage"] == "pipeline"]


def children(repo: Path, parent) -> list[str]:
    return [r.info.run_name for r in runs(repo) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_repro_runs_the_data_stages_and_logs_one_run_each(repo):
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["download", "verify", "preprocess"]
    verify = yaml.safe_load((repo / "metrics/verify.json").read_text())
    assert verify["train_count"] == 60000 and verify["sha256_checked"] == 4
    metrics = yaml.safe_load((repo / "metrics/preprocess.json").read_text())
    assert (metrics["val_count"], metrics["fit_count"]) == (12000, 48000)
    assert metrics["pixel_mean"] == pytest.approx(0.2860, abs=1e-4)
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    logged = runs(repo)
    assert [r.info.run_name for r in logged] == ["download", "verify", "preprocess"]
    for run in logged:
        assert run.info.status == "FINISHED"
        assert run.data.tags["stage"] == run.info.run_name and run.data.tags["git_commit"] == head
        assert len(run.data.tags["params_hash"]) == 16
    (pipeline,) = pipelines(repo)  # one `dvc repro`, one parent row holding the three stages
    assert children(repo, pipeline) == ["download", "verify", "preprocess"]
    assert pipeline.info.status == "FINISHED" and pipeline.data.tags["git_commit"] == head
    assert {pipeline.data.tags[f"lineage.{r.info.run_name}"] for r in logged} == {f"ran {r.info.run_id}" for r in logged}
    assert pipeline.data.metrics["preprocess/fit_count"] == 48000 and pipeline.data.params["preprocess.seed"] == "42"
    assert pipeline.inputs.dataset_inputs[0].dataset.name == "fashion-mnist"


@pytest.mark.fault
def test_second_repro_reruns_nothing(repo):
    output = sh(repo, "dvc", "repro", "preprocess")
    assert ran(output) == [] and "up to date" in output
    assert len(all_runs(repo)) == 4


def test_changing_a_preprocess_param_reruns_preprocess_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["seed"] = 43
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(repo, "dvc", "repro", "preprocess")) == ["preprocess"]
    first, second = pipelines(repo)
    assert children(repo, second) == ["preprocess"]
    # the stages DVC skipped point at the runs of the first pipeline that produced what this one reused
    produced = {r.info.run_name: r.info.run_id for r in runs(repo) if r.data.tags["mlflow.parentRunId"]
                == first.info.run_id}
    assert second.data.tags["lineage.download"] == f"cached {produced['download']}"
    assert second.data.tags["lineage.verify"] == f"cached {produced['verify']}"
    assert second.data.tags["lineage.preprocess"].startswith("ran ")
    assert second.data.tags["dvc_outs_digest"] != first.data.tags["dvc_outs_digest"]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "seed 43")


@pytest.mark.fault
def test_bad_param_fails_before_any_work(repo):
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(original.replace("val_fraction: 0.2", "val_fraction: 1.2"))
    try:
        output = sh(repo, "dvc", "repro", "preprocess", check=False)
    finally:
        params_file.write_text(original)
    assert "preprocess.val_fraction: Input should be less than 1 (got 1.2)" in output
    assert "Traceback" not in output


def wait_for_queue(repo: Path, timeout_s: float = 400) -> str:
    """`dvc queue status` once nothing is queued or running (or at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = sh(repo, "dvc", "queue", "status")
        if ("Queued" not in status and "Running" not in status) or time.monotonic() > deadline:
            return status
        time.sleep(2)


def test_queued_sweep_runs_two_at_once_into_the_root_store(repo):
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
        # dvc exp show and MLflow agree on the numbers
        assert pipeline.data.metrics["preprocess/fit_count"] == exp_fit_counts[name]
    assert {swept[n].data.metrics["preprocess/fit_count"] for n in swept} == {1600, 3200}


def small_profile(repo: Path) -> None:
    """profiles/ci.yaml: a stratified 3,000-image subset, 2 epochs, 2 members; the whole pipeline in minutes."""
    sh(repo, "python", "-m", "stages.profile", "profiles/ci.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["preprocess"]["train_subset"] == 3000 and list(params["members"]) == ["m0", "m1"]


def test_a_member_trains_in_a_small_profile(repo, monkeypatch):
    small_profile(repo)
    assert ran(sh(repo, "dvc", "repro", "train@m0")) == ["preprocess", "train@m0"]
    import torch

    state = torch.load(repo / "models/members/m0.pt", weights_only=True)
    assert state["net"] == "fast" and state["member"] == "m0" and len(state["classes"]) == 10
    metrics = yaml.safe_load((repo / "metrics/train/m0.json").read_text())
    assert 1 <= metrics["best_epoch"] <= 2 and metrics["val_accuracy"] > 0.5
    history = (repo / "metrics/history/m0.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy") and len(history) == 3
    run = [r for r in runs(repo) if r.info.run_name == "train@m0"][-1]
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert run.data.tags["device"] == "cpu" and run.data.tags["member"] == "m0"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    model_info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert model_info.signature is not None


def test_ensemble_and_evaluate_end_the_pipeline(repo):
    stages = ran(sh(repo, "dvc", "repro"))
    assert sorted(stages) == ["baselines", "ensemble", "evaluate", "train@m1", "visualize"]
    assert stages.index("train@m1") < stages.index("ensemble") < stages.index("evaluate")
    report = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.5 < report["ensemble_accuracy"] <= 1 and 0.5 < report["members_accuracy_mean"] <= 1
    assert set(report["per_class_f1"]) == set(real_params()["dataset"]["classes"])
    for name in ("confusion_matrix", "per_class", "reliability", "confident_mistakes"):
        assert (repo / "plots" / f"{name}.png").stat().st_size > 5000
    for name in ("sprite", "pixels_pca", "pixels_tsne", "features_pca", "features_tsne"):
        assert (repo / "plots/visualize" / f"{name}.png").stat().st_size > 5000
    baselines = json.loads((repo / "metrics/baselines.json").read_text())
    assert len(baselines["configurations"]) == len(real_params()["baselines"]["profiles"]["quick"])
    assert 0.7 < baselines["best_accuracy"] < 1  # 2,400 images: the MLP or random forest, about 83%
    ensemble = json.loads((repo / "metrics/ensemble.json").read_text())
    assert ensemble["members"] == 2
    evaluate = [r for r in runs(repo) if r.info.run_name == "evaluate"][-1]
    assert evaluate.data.params["train.net"] == "fast"  # the whole pipeline's params, for comparing runs
    assert evaluate.data.metrics["ensemble_accuracy"] == pytest.approx(report["ensemble_accuracy"])
    pipeline = pipelines(repo)[-1]  # the row to compare in `mlflow ui`: complete lineage and metrics
    assert children(repo, pipeline) == stages
    lineage = {k.removeprefix("lineage."): v.split()[0] for k, v in pipeline.data.tags.items()
               if k.startswith("lineage.")}
    assert lineage == {"download": "cached", "verify": "cached", "preprocess": "cached", "train/m0": "cached",
                       "train/m1": "ran", "ensemble": "ran", "evaluate": "ran", "baselines": "ran",
                       "visualize": "ran"}
    assert pipeline.data.metrics["evaluate/ensemble_accuracy"] == pytest.approx(report["ensemble_accuracy"])
    assert pipeline.data.metrics["train/m0/val_accuracy"] > 0.5


def test_registered_model_and_predict_command_agree_on_a_png(repo, tmp_path):
    import numpy as np
    from PIL import Image

    from stages.predict import convert_like_fashion_mnist

    test_image = np.load(repo / "data/processed/test/images.npy")[0]
    photo = Image.fromarray(255 - test_image).resize((140, 140), Image.NEAREST)  # dark product on white
    photo.save(tmp_path / "item.png")
    printed = sh(repo, "python", "-m", "stages.predict", "models/ensemble.pt", str(tmp_path / "item.png"))
    line = next(line for line in printed.splitlines() if line.startswith(str(tmp_path / "item.png")))
    predict_class = line.split(": ", 1)[1].split(", ")[0].rsplit(" ", 1)[0]  # "Ankle boot 97.1%, ..."
    pixels = convert_like_fashion_mnist(Image.open(tmp_path / "item.png")).tolist()
    (tmp_path / "input.json").write_text(json.dumps({"inputs": [pixels]}))
    env_uri = f"sqlite:///{repo / 'mlflow.db'}"
    served = sh(repo, "env", f"MLFLOW_TRACKING_URI={env_uri}", "mlflow", "models", "predict", "-m",
                "models:/fashion-mnist-ensemble@champion", "-i", str(tmp_path / "input.json"), "-t", "json",
                "--env-manager", "local")
    rows = json.loads(served[served.index("{"):served.rindex("}") + 1])["predictions"]
    assert rows[0]["class"] == predict_class
    from_registry = sh(repo, "python", "-m", "stages.predict", "models:/fashion-mnist-ensemble@champion",
                       str(tmp_path / "item.png"))
    assert line in from_registry.splitlines()
    evaluate = [r for r in runs(repo) if r.info.run_name == "evaluate"][-1]
    assert evaluate.data.tags["champion"].startswith("fashion-mnist-ensemble version ")


def cached_outputs(repo: Path) -> dict[str, str]:
    """{path: md5} that dvc.lock records for every output DVC caches (data, models); metrics and plots are
    `cache: false` and may carry timings."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        cached = {out.def_path for stage in dvc_repo.index.stages for out in stage.outs if out.use_cache}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for entry in lock.values() for out in entry.get("outs", [])
            if out["path"] in cached}


def test_a_forced_rerun_writes_identical_bytes_for_every_cached_output(repo):
    small_profile(repo)
    sh(repo, "dvc", "repro")  # what the earlier tests left (stage by stage), or the whole profile when run alone
    outputs = [cached_outputs(repo)]
    assert sorted(ran(sh(repo, "dvc", "repro", "-f"))) == [  # every stage of the CI profile, from scratch
        "baselines", "download", "ensemble", "evaluate", "preprocess", "train@m0", "train@m1", "verify", "visualize"]
    outputs.append(cached_outputs(repo))
    assert set(outputs[0]) == {"data/raw", "data/processed/train", "data/processed/test", "models/members/m0.pt",
                               "models/members/m1.pt", "models/ensemble.pt"}
    changed = {path: (md5, outputs[1][path]) for path, md5 in outputs[0].items() if outputs[1][path] != md5}
    assert not changed, f"same commit, same params, different bytes: {changed}"


@pytest.fixture(scope="module")
def s3_remote(s3_endpoint) -> str:
    """The session's S3 server with an empty bucket 'team', its credentials in this module's environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in S3_CREDENTIALS.items():
            patch.setenv(key, value)
        create_bucket(s3_endpoint, "team")
        yield s3_endpoint


def set_epochs(repo: Path, epochs: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_teammate_pulls_results_and_the_run_cache_instead_of_retraining(repo, s3_remote, tmp_path):
    small_profile(repo)
    sh(repo, "dvc", "repro")  # the whole CI profile, as earlier tests left it or from scratch
    sh(repo, "dvc", "remote", "add", "-d", "team", "s3://team/dvc")
    sh(repo, "dvc", "remote", "modify", "team", "endpointurl", s3_remote)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "CI profile, team remote")
    sh(repo, "python", "-m", "stages.share", "push")

    teammate = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(repo), str(teammate)], check=True)
    sh(teammate, "python", "-m", "stages.share", "pull")
    assert "up to date" in sh(teammate, "dvc", "status")
    assert "✅ Every output `dvc.lock` names was pulled from `team`" in sh(teammate, ".github/check-artifacts.sh")
    assert ran(sh(teammate, "dvc", "repro")) == []
    predict = ("python", "-m", "stages.predict", "models/ensemble.pt", "data/raw/t10k-images-idx3-ubyte.gz",
               "--limit", "50")
    predictions = sh(teammate, *predict)
    assert predictions == sh(repo, *predict) and predictions.count("\n") == 50

    set_epochs(teammate, 1)  # a change reruns exactly the stages that read train
    assert sorted(ran(sh(teammate, "dvc", "repro"))) == ["ensemble", "evaluate", "train@m0", "train@m1",
                                                          "visualize"]
    set_epochs(teammate, 2)  # back to what clone A ran: DVC restores it from the pulled run-cache
    restored = sh(teammate, "dvc", "repro")
    assert ran(restored) == [], restored
    assert "Stage 'train@m0' is cached - skipping run" in restored
    assert cached_outputs(teammate) == cached_outputs(repo)


@pytest.fixture(scope="module")
def team_server(postgres, s3_remote) -> str:
    """One MLflow server for the team: runs in PostgreSQL, artifacts proxied to the S3 bucket 'team-mlflow'."""
    from stages import mlflow_server

    create_bucket(s3_remote, "team-mlflow")
    with mlflow_server.local_server(postgres, artifacts_destination="s3://team-mlflow/artifacts",
                                    env={**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_remote}) as base:
        yield base


def test_a_team_shares_one_mlflow_server_on_postgresql_and_one_remote(repo, s3_remote, team_server, postgres,
                                                                      tmp_path):
    # MLflow clients hold no S3 keys: the server proxies artifacts. DVC's push and pull use them.
    tracked = {"MLFLOW_TRACKING_URI": team_server, **{key: None for key in S3_CREDENTIALS}}
    client = mlflow.MlflowClient(team_server)
    # Clone A runs the whole CI profile against the team server, then pushes. Forced: the stages whose outputs are
    # all in git (metrics, plots) would otherwise be skipped, with no run in this server to point at.
    clone_a = tmp_path / "a"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone_a)], check=True)
    stages = ran(sh(clone_a, "dvc", "repro", "-f", env=tracked))
    assert sorted(stages) == ["baselines", "download", "ensemble", "evaluate", "preprocess", "train@m0", "train@m1",
                              "verify", "visualize"]
    assert cached_outputs(clone_a) == cached_outputs(repo)  # the tracking store does not shape a single byte
    sh(clone_a, "git", "add", "-A")
    sh(clone_a, "git", "-c", "user.name=a", "-c", "user.email=a@t", "commit", "-qm", "results", "--allow-empty")
    sh(clone_a, "python", "-m", "stages.share", "push")
    experiment = client.get_experiment_by_name("fashion-mnist")
    (pipeline_a,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    made_by_a = {r.info.run_name: r for r in client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{pipeline_a.info.run_id}'")}
    assert sorted(made_by_a) == sorted(stages)
    assert {r.info.status for r in made_by_a.values()} == {"FINISHED"} and pipeline_a.info.status == "FINISHED"
    assert {k: v.split()[0] for k, v in pipeline_a.data.tags.items() if k.startswith("lineage.")} == {
        "lineage.download": "ran", "lineage.verify": "ran", "lineage.preprocess": "ran", "lineage.train/m0": "ran",
        "lineage.train/m1": "ran", "lineage.ensemble": "ran", "lineage.evaluate": "ran", "lineage.baselines": "ran",
        "lineage.visualize": "ran"}
    stored = dict(postgres_rows(postgres, "select r.run_uuid, r.status from runs r join experiments e on "
                                          "r.experiment_id = e.experiment_id where e.name = 'fashion-mnist'"))
    assert {r.info.run_id for r in made_by_a.values()} | {pipeline_a.info.run_id} <= set(stored)  # in PostgreSQL
    keys = bucket_keys(s3_remote, "team-mlflow")
    evaluate_id = made_by_a["evaluate"].info.run_id
    assert any(evaluate_id in k and k.endswith("evaluation/confusion_matrix.png") for k in keys), keys[:20]
    assert sum(k.endswith("/MLmodel") for k in keys) == 3, keys  # two members and the ensemble (logged models)

    # Clone B, fresh: pulls instead of training, then sweeps two experiments at once into the same server.
    clone_b = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(clone_a), str(clone_b)], check=True)
    sh(clone_b, "python", "-m", "stages.share", "pull")
    assert ran(sh(clone_b, "dvc", "repro", env=tracked)) == []
    for mistakes in (16, 25):
        sh(clone_b, "dvc", "exp", "run", "--queue", "-n", f"mistakes-{mistakes}", "-S", f"evaluate.mistakes={mistakes}")
    sh(clone_b, "dvc", "queue", "start", "-j", "2", env=tracked)
    status = wait_for_queue(clone_b)
    assert status.count("Success") == 2, status
    swept = {r.data.tags["dvc_exp_name"]: r for r in client.search_runs(
        [experiment.experiment_id], "tags.stage = 'pipeline' and tags.dvc_exp_name LIKE 'mistakes-%'")}
    assert sorted(swept) == ["mistakes-16", "mistakes-25"]  # no run lost to the concurrency
    for pipeline in swept.values():
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{pipeline.info.run_id}'")
        assert [(r.info.run_name, r.info.status) for r in children] == [("evaluate", "FINISHED")]
        assert pipeline.info.status == "FINISHED"
        # B's rows point what it reused at the runs A made, in the shared server
        for stage in ("download", "verify", "preprocess", "train@m0", "train@m1", "ensemble", "baselines"):
            key = "lineage." + stage.replace("@", "/")
            assert pipeline.data.tags[key] == f"cached {made_by_a[stage].info.run_id}", key
        assert pipeline.data.metrics["evaluate/ensemble_accuracy"] == pytest.approx(
            pipeline_a.data.metrics["evaluate/ensemble_accuracy"])
    counts = {table: postgres_rows(postgres, f"select count(*) from {table} t join runs r on t.run_uuid = r.run_uuid "
                                             "join experiments e on r.experiment_id = e.experiment_id "
                                             "where e.name = 'fashion-mnist'")[0][0]
              for table in ("runs", "params", "metrics", "latest_metrics", "tags")}
    print(f"team server, PostgreSQL rows for experiment fashion-mnist after clone A's pipeline and B's sweep: {counts}")
    assert counts["runs"] == len(client.search_runs([experiment.experiment_id], max_results=1000))
    assert postgres_rows(postgres, "select count(*) from runs where status != 'FINISHED' and experiment_id = %s",
                         int(experiment.experiment_id)) == [(0,)]

    # The champion, served from the team server by MLflow's own CLI, without S3 keys: it agrees with evaluate.
    import numpy as np

    images = np.load(clone_b / "data/processed/test/images.npy")[:5]
    (tmp_path / "input.json").write_text(json.dumps({"inputs": images.tolist()}))
    served = sh(clone_b, "mlflow", "models", "predict", "-m", "models:/fashion-mnist-ensemble@champion",
                "-i", str(tmp_path / "input.json"), "-t", "json", "--env-manager", "local", env=tracked)
    classes = [row["class"] for row in json.loads(served[served.index("{"):served.rindex("}") + 1])["predictions"]]
    rows = (clone_b / "metrics/evaluate/predictions.csv").read_text().splitlines()[1:6]  # actual,predicted
    expected = [line.split(",")[1] for line in rows]
    assert classes == expected
    assert len(client.search_model_versions("name = 'fashion-mnist-ensemble'")) == 3  # A's and the sweep's two


@pytest.mark.fault
def test_a_remote_that_is_down_or_refuses_fails_naming_it_and_changes_nothing(repo, s3_remote, tmp_path):
    teammate = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(repo), str(teammate)], check=True)
    before = sorted(p.name for p in teammate.iterdir())
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "endpointurl", "http://127.0.0.1:9")
    down = sh(teammate, "python", "-m", "stages.share", "pull", check=False)
    assert "pull from DVC remote s3://team/dvc (endpoint http://127.0.0.1:9) failed" in down
    assert "To fix: start the server" in down and "Traceback" not in down
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "endpointurl", s3_remote)
    with s3_checking_keys(s3_remote):
        denied = sh(teammate, "python", "-m", "stages.share", "pull", check=False)
    assert "pull from DVC remote s3://team/dvc" in denied and "Forbidden" in denied, denied
    assert "To fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in denied and "Traceback" not in denied
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "url", "s3://no-such-bucket/dvc")
    missing = sh(teammate, "python", "-m", "stages.share", "pull", check=False)
    assert "pull from DVC remote s3://no-such-bucket/dvc" in missing and "To fix:" in missing, missing
    sh(teammate, "dvc", "remote", "modify", "--local", "team", "url", "s3://team/nothing-pushed-here")
    report = sh(teammate, ".github/check-artifacts.sh", check=False)  # the PR report's artifact check
    assert "❌" in report and "have no pushed" in report, report
    assert "outputs this commit's dvc.lock names are missing there: " in report and "models/ensemble.pt" in report
    assert sorted(p.name for p in teammate.iterdir()) == before
    assert not (teammate / "models/ensemble.pt").exists() and not (teammate / "data/raw").exists()


def state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.fault
def test_sigkill_mid_training_leaves_nothing_to_cache_and_the_rerun_resumes_to_identical_weights(repo):
    import os
    import signal

    import torch

    set_epochs(repo, 6)  # long enough to be killed mid-run
    resume = repo / "models/.resume/m0.pt"
    killed = subprocess.Popen(["dvc", "repro", "train@m0"], cwd=repo, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not resume.exists():  # the first epoch's checkpoint: training is under way
        assert killed.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage, with no chance to clean up
    killed.wait()
    assert not (repo / "models/members/m0.pt").exists()
    assert [p.name for p in (repo / "models/members").iterdir() if p.name.endswith(".tmp")] == []  # no temp file
    assert "train@m0" in sh(repo, "dvc", "status", "train@m0")  # DVC sees the stage as not done
    resumed = sh(repo, "dvc", "repro", "train@m0")
    assert "resuming from" in resumed and not resume.exists()
    after_kill = state_dict(repo / "models/members/m0.pt")
    metrics_after_kill = json.loads((repo / "metrics/train/m0.json").read_text())
    assert ran(sh(repo, "dvc", "repro", "-f", "-s", "train@m0")) == ["train@m0"]  # uninterrupted, from scratch
    uninterrupted = state_dict(repo / "models/members/m0.pt")
    assert all(torch.equal(after_kill[k], uninterrupted[k]) for k in uninterrupted)
    metrics = json.loads((repo / "metrics/train/m0.json").read_text())
    for key in ("best_epoch", "val_loss", "val_accuracy"):  # `dvc repro -f` on the CPU reproduces the metrics
        assert metrics[key] == metrics_after_kill[key], key

