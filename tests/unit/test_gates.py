"""The regression gate and the report's arrows: which way is better for a metric, and by how much it may move."""
from fmnist.cli.report import arrow
from fmnist.evaluation.gates import regressions
from fmnist.params import Gate


def test_gate_tolerates_noise_and_knows_which_way_is_better():
    rows = [{"path": "m.json", "metric": "ensemble_accuracy", "old": 0.94, "new": 0.938, "diff": -0.002},
            {"path": "m.json", "metric": "ensemble_log_loss", "old": 0.25, "new": 0.2, "diff": -0.05}]
    gates = [Gate(metric="ensemble_accuracy", max_worsening=0.003), Gate(metric="ensemble_log_loss",
                                                                         max_worsening=0.0)]
    assert regressions(rows, gates) == []
    assert arrow(rows[0]) == "▼ worse" and arrow(rows[1]) == "▼ better"
