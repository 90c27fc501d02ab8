"""evaluate stage, the only consumer of the test images: every member and the ensemble, reported the way
published Fashion-MNIST results are (members' mean and spread next to the ensemble), per-class scores,
confusion matrix, calibration, and the pictures that go with them; registers the ensemble in MLflow."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fmnist.data.arrays import load_images
from fmnist.device import pick_device, set_threads
from fmnist.evaluation.calibration import calibration
from fmnist.evaluation.compatibility import check_compatible
from fmnist.evaluation.figures import evaluation_pictures
from fmnist.evaluation.scores import accuracy, log_loss, per_class_scores, score, write_tables
from fmnist.files import write_json
from fmnist.model.ensemble import MIRRORED, PLAIN, Ensemble, combine
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="preprocess's test directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--tables", type=Path, required=True, help="directory for predictions/per-class CSVs")
    parser.add_argument("--plots", type=Path, required=True, help="directory for the PNGs")
    args = parser.parse_args()
    params = load_params()
    cfg, bins = params.evaluate, params.evaluate.ece_bins
    set_threads(params.train.threads)
    device = pick_device(params.train.device)
    images, labels = load_images(args.data)
    ensemble = Ensemble.load(args.model)
    classes = list(params.dataset.classes)
    check_compatible(ensemble, args.model, classes, params.dataset.image_shape, images)
    with stage_run("evaluate") as run:
        # Logits of every view once: the ensemble's own TTA views are the headline, the other flip setting (without
        # translation) measures flip TTA, and the same logits without the temperatures show what calibration did.
        views, weights = ensemble.views
        other = [PLAIN] if ensemble.tta_flip else [PLAIN, MIRRORED]
        logits = ensemble.view_logits(images, list(dict.fromkeys([*views, *other])), device)
        member_probs = ensemble.member_probabilities([logits[v] for v in views], weights)
        ensemble_probs = combine(member_probs, ensemble.method, ensemble.weights)
        uncalibrated = combine(ensemble.member_probabilities([logits[v] for v in views], weights, calibrated=False),
                               ensemble.method, ensemble.weights)
        names = [state["member"] for state in ensemble.states]
        scores = per_class_scores(labels, ensemble_probs.argmax(1), len(classes))
        calibrated_bins = calibration(ensemble_probs, labels, bins)
        uncalibrated_bins = calibration(uncalibrated, labels, bins)
        report = score(member_probs, ensemble_probs, labels, names, classes, scores["f1"], calibrated_bins[0])
        report["ensemble_accuracy_other_tta"] = round(accuracy(combine(
            ensemble.member_probabilities([logits[v] for v in other]), ensemble.method, ensemble.weights), labels), 6)
        report["ensemble_ece_uncalibrated"] = round(uncalibrated_bins[0], 6)
        report["ensemble_log_loss_uncalibrated"] = round(log_loss(uncalibrated, labels), 6)
        write_json(args.metrics, report)
        write_tables(args.tables, labels, ensemble_probs.argmax(1), classes, scores)
        pictures = evaluation_pictures(
            args.plots, images, labels, ensemble_probs,
            {"calibrated": calibrated_bins, "without temperature": uncalibrated_bins},
            {name: scores[name] for name in ("precision", "recall", "f1")}, classes, cfg.mistakes,
            f"{len(names)}-member {ensemble.method} ensemble")
        log.info("ensemble %.2f%% | members %.2f +/- %.2f%% | gain over best member %+.2f points",
                 100 * report["ensemble_accuracy"], 100 * report["members_accuracy_mean"],
                 100 * report["members_accuracy_std"], 100 * report["ensemble_gain_over_best_member"])
        log.info("ensemble ECE %.2f%% (%.2f%% without temperatures), log-loss %.4f (%.4f)",
                 100 * report["ensemble_ece"], 100 * report["ensemble_ece_uncalibrated"],
                 report["ensemble_log_loss"], report["ensemble_log_loss_uncalibrated"])
        run.log_metrics(report)
        for path in [*pictures, args.tables / "per_class.csv", args.metrics]:
            run.log_artifact(path, folder="evaluation")
        run.log_ensemble_model(args.model, images[:2], metrics=report, metadata={
            "method": ensemble.method, "tta_flip": ensemble.tta_flip, "tta_translate": ensemble.tta_translate,
            "precision": ensemble.precision,
            "temperatures": {n: round(float(t), 6) for n, t in zip(names, ensemble.temperatures)}})


if __name__ == "__main__":
    run_main(main)
