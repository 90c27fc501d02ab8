"""evaluate stage, the only consumer of the test images: every member and the ensemble, reported the way
published Fashion-MNIST results are (members' mean and spread next to the ensemble), per-class scores,
confusion matrix, calibration, and the pictures that go with them."""
from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from stages import figures, tracking
from stages.calibration import calibration
from stages.common import StageError, atomic_path, run_main, write_json
from stages.config import load_params
from stages.device import pick_device, set_threads
from stages.ensemble import MIN_PROBABILITY, Ensemble, combine

log = logging.getLogger("stages.evaluate")


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (floored: a hard vote can give 0)."""
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], MIN_PROBABILITY)).mean())


def per_class_scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support for every class, in class order."""
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(n_classes),
                                                                     zero_division=0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def score(member_probs: np.ndarray, ensemble_probs: np.ndarray, labels: np.ndarray, member_names: list[str],
          classes: list[str], f1: np.ndarray, bins: int) -> dict:
    """Headline numbers, flat so `dvc metrics diff` reads well, plus the ensemble's per-class F1."""
    member_acc = np.array([accuracy(p, labels) for p in member_probs])
    member_loss = np.array([log_loss(p, labels) for p in member_probs])
    ensemble_acc = accuracy(ensemble_probs, labels)
    ece, _ = calibration(ensemble_probs, labels, bins)
    report = {
        "ensemble_accuracy": ensemble_acc,
        "ensemble_log_loss": log_loss(ensemble_probs, labels),
        "ensemble_ece": ece,
        "members_accuracy_mean": float(member_acc.mean()),
        # Sample std (ddof=1), as "mean +/- std of 5 models" is usually reported; 0 for a single member.
        "members_accuracy_std": float(member_acc.std(ddof=1)) if len(member_acc) > 1 else 0.0,
        "members_log_loss_mean": float(member_loss.mean()),
        "best_member_accuracy": float(member_acc.max()),
        "ensemble_gain_over_best_member": float(ensemble_acc - member_acc.max()),
        "ensemble_gain_over_members_mean": float(ensemble_acc - member_acc.mean()),
    }
    for name, acc, loss in zip(member_names, member_acc, member_loss):
        report[f"member_{name}_accuracy"] = float(acc)
        report[f"member_{name}_log_loss"] = float(loss)
    report = {k: round(v, 6) for k, v in report.items()}
    report["per_class_f1"] = {name: round(float(v), 6) for name, v in zip(classes, f1)}
    return report


def check_compatible(ensemble: Ensemble, model_path: Path, classes: list[str], image_shape: list[int],
                     images: np.ndarray) -> None:
    """Refuse to score a model trained for other classes or image sizes than the dataset's."""
    if ensemble.classes != classes:
        raise StageError(f"{model_path}: model classes {ensemble.classes} do not match dataset.classes {classes}; "
                         "retrain (dvc repro) after changing the dataset")
    if list(ensemble.image_shape) != list(image_shape) or images.shape[1:] != tuple(image_shape):
        raise StageError(f"{model_path}: model expects images of {list(ensemble.image_shape)}, dataset has "
                         f"{list(images.shape[1:])} (dataset.image_shape {image_shape})")


def write_tables(out_dir: Path, labels: np.ndarray, predicted: np.ndarray, classes: list[str],
                 scores: dict[str, np.ndarray]) -> None:
    """predictions.csv (for DVC's confusion template) and per_class.csv."""
    with atomic_path(out_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(labels, predicted))
    with atomic_path(out_dir / "per_class.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for row in zip(classes, scores["precision"], scores["recall"], scores["f1"], scores["support"]):
            writer.writerow([row[0], *(round(float(v), 6) for v in row[1:4]), int(row[4])])


def draw(plots: Path, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, uncalibrated: np.ndarray,
         scores: dict, classes: list[str], cfg, title: str) -> list[Path]:
    """Every evaluation picture; returns their paths. `uncalibrated`: the probabilities without the members'
    temperatures, drawn beside the calibrated ones in the reliability diagram."""
    predicted = probs.argmax(1)
    paths = {name: plots / f"{name}.png" for name in
             ("confusion_matrix", "per_class", "reliability", "confident_mistakes")}
    figures.confusion_matrix(confusion_matrix(labels, predicted, labels=range(len(classes))), classes,
                             paths["confusion_matrix"], f"{title}: confusion matrix (test)")
    figures.per_class_bars(scores, classes, paths["per_class"], f"{title}: per-class scores (test)")
    figures.reliability_diagram({"calibrated": calibration(probs, labels, cfg.ece_bins),
                                 "without temperature": calibration(uncalibrated, labels, cfg.ece_bins)},
                                paths["reliability"])
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:cfg.mistakes]
    captions = [f"{classes[predicted[i]]} {100 * probs[i].max():.0f}%\n(is {classes[labels[i]]})" for i in worst]
    figures.image_grid(images[worst], captions, 6, paths["confident_mistakes"],
                       f"{title}: most confident mistakes (predicted, confidence; true class)")
    return list(paths.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="preprocess's test directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--tables", type=Path, required=True, help="directory for predictions/per-class CSVs")
    parser.add_argument("--plots", type=Path, required=True, help="directory for the PNGs")
    args = parser.parse_args()
    params = load_params()
    set_threads(params.train.threads)
    device = pick_device(params.train.device)
    images, labels = np.load(args.data / "images.npy"), np.load(args.data / "labels.npy").astype(np.int64)
    ensemble = Ensemble.load(args.model)
    classes = list(params.dataset.classes)
    check_compatible(ensemble, args.model, classes, params.dataset.image_shape, images)
    with tracking.stage_run("evaluate", params.model_dump(), experiment=params.dataset.name) as run:
        # Logits of both views once: the ensemble's own TTA setting is the headline, the other measures flip TTA,
        # and the same logits without the temperatures show what calibration did.
        plain = ensemble.member_logits(images, device)
        mirrored = ensemble.member_logits(images, device, mirrored=True)
        used, other = (mirrored, None) if ensemble.tta_flip else (None, mirrored)
        member_probs = ensemble.member_probabilities(plain, used)
        ensemble_probs = combine(member_probs, ensemble.method, ensemble.weights)
        uncalibrated = combine(ensemble.member_probabilities(plain, used, calibrated=False), ensemble.method,
                               ensemble.weights)
        names = [state["member"] for state in ensemble.states]
        scores = per_class_scores(labels, ensemble_probs.argmax(1), len(classes))
        report = score(member_probs, ensemble_probs, labels, names, classes, scores["f1"], params.evaluate.ece_bins)
        report["ensemble_accuracy_other_tta"] = round(accuracy(combine(
            ensemble.member_probabilities(plain, other), ensemble.method, ensemble.weights), labels), 6)
        report["ensemble_ece_uncalibrated"] = round(calibration(uncalibrated, labels, params.evaluate.ece_bins)[0], 6)
        report["ensemble_log_loss_uncalibrated"] = round(log_loss(uncalibrated, labels), 6)
        write_json(args.metrics, report)
        write_tables(args.tables, labels, ensemble_probs.argmax(1), classes, scores)
        title = f"{len(names)}-member {ensemble.method} ensemble"
        bars = {name: scores[name] for name in ("precision", "recall", "f1")}
        pictures = draw(args.plots, images, labels, ensemble_probs, uncalibrated, bars, classes, params.evaluate,
                        title)
        log.info("ensemble %.2f%% | members %.2f +/- %.2f%% | gain over best member %+.2f points",
                 100 * report["ensemble_accuracy"], 100 * report["members_accuracy_mean"],
                 100 * report["members_accuracy_std"], 100 * report["ensemble_gain_over_best_member"])
        log.info("ensemble ECE %.2f%% (%.2f%% without temperatures), log-loss %.4f (%.4f)",
                 100 * report["ensemble_ece"], 100 * report["ensemble_ece_uncalibrated"],
                 report["ensemble_log_loss"], report["ensemble_log_loss_uncalibrated"])
        run.log_metrics(report)
        for path in [*pictures, args.tables / "per_class.csv", args.metrics]:
            run.log_artifact(path, folder="evaluation")
        run.log_ensemble_model(args.model, images[:2], name=f"{params.dataset.name}-ensemble",
                               gates=params.report.gates, metrics=report, metadata={
                                   "method": ensemble.method, "tta_flip": ensemble.tta_flip,
                                   "temperatures": {n: round(float(t), 6) for n, t in zip(names, ensemble.temperatures)}})


if __name__ == "__main__":
    run_main(main)
