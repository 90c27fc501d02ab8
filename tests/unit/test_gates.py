"""Which way is better for a metric, declared once in params' report section and read by the report's verdicts and
the regression gate alike; and the report's sections, headline first."""
import pytest

from fmnist.evaluation.gates import regressions
from fmnist.params import Gate, ParamsError, Report, parse_params
from fmnist.report import sections
from tests.conftest import real_params


@pytest.fixture
def report() -> Report:
    return parse_params(real_params()).report


def row(metric, old, new, path="metrics/evaluate.json"):
    return {"path": path, "metric": metric, "old": old, "new": new,
            "diff": None if old is None or new is None else new - old}


def test_directions_are_declared_not_guessed_from_a_name(report):
    assert report.direction("ensemble_accuracy") == "higher" and report.direction("per_class_f1.Coat") == "higher"
    assert report.direction("ensemble_log_loss") == "lower" and report.direction("ensemble_ece") == "lower"
    for neither in ("members_accuracy_std", "temperature_m1", "weight_m0", "members", "epochs", "best_epoch"):
        assert report.direction(neither) is None, neither
    assert report.timing("train_seconds") == "lower" and report.timing("images_per_second") == "higher"
    assert report.timing("ensemble_accuracy") is False


def test_a_temperature_or_a_count_gets_no_verdict_and_a_falling_std_is_not_worse(report):
    assert sections.verdict(report.direction("temperature_m1"), row("temperature_m1", 0.61, 0.62)) == ""
    assert sections.verdict(report.direction("members"), row("members", 5, 3)) == ""
    assert sections.verdict(report.direction("members_accuracy_std"), row("members_accuracy_std", 0.0014, 0.0007)) \
        == ""
    assert sections.verdict(report.direction("ensemble_log_loss"), row("ensemble_log_loss", 0.16, 0.15)) \
        == "▼ better"
    assert sections.verdict(report.direction("ensemble_accuracy"), row("ensemble_accuracy", 0.95, 0.94)) \
        == "▼ worse"


def test_timings_are_flagged_only_beyond_their_tolerance(report):
    tolerance = report.timings.tolerance
    assert sections.timing_verdict("lower", row("train_seconds", 100.0, 120.0), tolerance) == "within ±25%"
    assert sections.timing_verdict("lower", row("train_seconds", 100.0, 160.0), tolerance) == "⚠️ +60%, worse"
    assert sections.timing_verdict("higher", row("images_per_second", 4000.0, 2000.0), tolerance) \
        == "⚠️ -50%, worse"
    assert sections.timing_verdict("lower", row("train_seconds", 100.0, 50.0), tolerance) == "⚠️ -50%, better"


def test_the_gate_reads_the_declared_direction_and_tolerates_noise(report):
    rows = [row("ensemble_accuracy", 0.94, 0.938), row("ensemble_log_loss", 0.25, 0.2),
            row("members_accuracy_mean", 0.94, 0.93)]
    assert regressions(rows, report.gates) == [
        "metrics/evaluate.json: members_accuracy_mean got worse by 0.01 (0.94 -> 0.93), more than the allowed 0.003"]


@pytest.mark.fault
def test_a_gate_on_a_metric_without_a_direction_is_refused_naming_it():
    params = real_params()
    params["report"]["gates"].append({"metric": "temperature_m0", "max_worsening": 0.1})
    with pytest.raises(ParamsError, match=r"report.gates: temperature_m0 has no direction in report.directions"):
        parse_params(params)
    with pytest.raises(ValueError, match="has no direction"):
        regressions([row("x", 1, 2)], [Gate(metric="x", max_worsening=0)])


def test_the_report_opens_with_the_verdict_then_the_headline_then_the_params(report):
    rows = [row("ensemble_accuracy", 0.943, 0.9491), row("members_accuracy_mean", 0.9413, 0.9451),
            row("members_accuracy_std", 0.0014, 0.0007), row("ensemble_log_loss", 0.1622, 0.1575),
            row("ensemble_ece", 0.0056, 0.0069), row("temperature_m0", 0.606, 0.604, "metrics/ensemble.json"),
            row("train_seconds", 700.0, 720.0, "metrics/train/m0.json")]
    params = {"params.yaml": {"train.epochs": {"old": 22, "new": 38}}}
    doc = sections.document("t", ("base", "head"), rows, params, report, report.gates, [], "`base`", [], [])
    verdict, table, heading, bullets, *collapsed = doc.blocks
    assert verdict.markdown.startswith("**✅ Gate passed** (tolerances from `base`): `ensemble_accuracy` +0.61 pts")
    assert [r[0] for r in table.rows] == ["`ensemble_accuracy`", "`members_accuracy_mean` ± std",
                                         "`ensemble_log_loss`", "`ensemble_ece`"]
    assert table.rows[1][1:4] == ["94.13% ± 0.14", "94.51% ± 0.07", "+0.38 pts"]
    assert heading.markdown == "**Params**: 1 changed" and bullets.items == ["`train.epochs`: 22 → 38"]
    assert [d.summary for d in collapsed] == ["Members: 1 changed", "Timings and throughput (host-dependent): 0 of 1 "
                                              "changed by more than ±25%"]
    assert not any(d.open for d in collapsed)
