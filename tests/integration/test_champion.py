"""The alias `champion` on a real SQLite registry: it never walks down, concurrent promotions end on the best
version, and a version whose run was deleted has a defined outcome."""
import threading

import mlflow
import pytest

from fmnist.params import Gate
from fmnist.tracking.champion import promote, record_gated_metrics

GATES = [Gate(metric="ensemble_accuracy", max_worsening=0.003, better="higher"), Gate(metric="ensemble_log_loss", max_worsening=0.01, better="lower")]
NAME = "tiny-ensemble"


@pytest.fixture
def registry(tmp_path):
    """`register(accuracy, loss, tagged=True)`: a run with those metrics and a version of NAME from it, with the
    gated metrics recorded on the version (as evaluate does) unless `tagged` is false (versions registered before
    they were). Returns (client, register)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("champion", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model(NAME)

    def register(accuracy: float, loss: float, tagged: bool = True) -> str:
        run = client.create_run(experiment)
        metrics = {"ensemble_accuracy": accuracy, "ensemble_log_loss": loss}
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        version = str(client.create_model_version(NAME, f"runs:/{run.info.run_id}/m", run.info.run_id).version)
        if tagged:
            record_gated_metrics(client, NAME, version, metrics, GATES)
        return version

    return client, register


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_the_champion_moves_only_to_a_version_at_least_as_good_on_every_gated_metric(registry):
    client, register = registry
    verdicts = [promote(client, NAME, register(accuracy, loss), GATES) for accuracy, loss in (
        (0.940, 0.30), (0.945, 0.29), (0.943, 0.29), (0.942, 0.29), (0.945, 0.29), (0.950, 0.31))]
    assert verdicts[0] == "tiny-ensemble version 1 is the first champion"
    assert verdicts[1] == ("tiny-ensemble version 2 is the champion, replacing version 1 "
                           "(ensemble_accuracy 0.94 -> 0.945, ensemble_log_loss 0.3 -> 0.29)")
    # 0.2 and 0.3 points worse: within the PR gate's tolerance, yet a walk down; the alias stays
    assert verdicts[2] == ("tiny-ensemble version 3 is not the champion; version 2 is: "
                           "ensemble_accuracy 0.945 -> 0.943")
    assert verdicts[3].startswith("tiny-ensemble version 4 is not the champion; version 2 is")
    assert verdicts[4].startswith("tiny-ensemble version 5 is the champion, replacing version 2")  # as good
    assert verdicts[5] == ("tiny-ensemble version 6 is not the champion; version 5 is: "
                           "ensemble_log_loss 0.29 -> 0.31")  # better on one metric, worse on another
    assert champion(client) == "5"


def test_two_racing_promotions_end_on_the_better_version(registry):
    client, register = registry
    promote(client, NAME, register(0.940, 0.30), GATES)
    # The worse of two new versions reads the registry first and writes the alias last: the lost update that a
    # read-compare-set promotion gets. The better one registers and promotes in between.
    worse = register(0.941, 0.30)
    about_to_set, better_done = threading.Event(), threading.Event()
    slow = mlflow.MlflowClient(client.tracking_uri)
    set_alias = slow.set_registered_model_alias

    def delayed_set(*args):
        if not about_to_set.is_set():
            about_to_set.set()
            assert better_done.wait(60)
        return set_alias(*args)

    slow.set_registered_model_alias = delayed_set
    verdicts = {}
    racer = threading.Thread(target=lambda: verdicts.update(worse=promote(slow, NAME, worse, GATES)))
    racer.start()
    assert about_to_set.wait(60)
    better = register(0.950, 0.25)
    verdicts["better"] = promote(client, NAME, better, GATES)
    better_done.set()
    racer.join(60)
    assert champion(client) == better == "3"
    assert verdicts["better"].startswith("tiny-ensemble version 3 is the champion")
    assert verdicts["worse"].startswith("tiny-ensemble version 2 is not the champion; version 3 is")


def test_a_champion_whose_run_was_deleted_is_still_compared_by_what_its_version_recorded(registry):
    client, register = registry
    promote(client, NAME, register(0.950, 0.25), GATES)
    client.delete_run(client.get_model_version(NAME, "1").run_id)
    assert promote(client, NAME, register(0.940, 0.30), GATES).startswith(
        "tiny-ensemble version 2 is not the champion; version 1 is")
    assert champion(client) == "1"


def test_a_version_with_neither_metrics_nor_run_is_left_out_saying_so(registry, caplog):
    client, register = registry
    old = register(0.950, 0.25, tagged=False)  # registered before versions recorded their metrics
    assert promote(client, NAME, old, GATES) == "tiny-ensemble version 1 is the first champion"
    client.delete_run(client.get_model_version(NAME, old).run_id)
    verdict = promote(client, NAME, register(0.940, 0.30), GATES)
    assert verdict == ("tiny-ensemble version 2 is the champion, replacing version 1, which cannot be compared "
                       "(deleted, or its metrics with it)")
    assert "version 1 is left out: it records no metrics and its run" in caplog.text
    assert champion(client) == "2"
