"""Scores of members and of the ensemble on labelled images, reported the way published Fashion-MNIST results are:
the members' mean and spread next to the ensemble, per-class precision/recall/F1, log-loss and calibration."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fmnist.files import write_csv

# Hard votes give some classes probability 0; log-loss needs a floor.
MIN_PROBABILITY = 1e-7


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest score (probability or logit) is the label's."""
    return float(np.mean(scores.argmax(axis=1) == labels))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (floored: a hard vote can give 0)."""
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], MIN_PROBABILITY)).mean())


def per_class_scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support for every class, in class order."""
    # Imported here: the ensemble stage needs only `accuracy`, and scikit-learn's import is 0.5-0.9 s of its process.
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(n_classes),
                                                                     zero_division=0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def score(member_probs: np.ndarray, ensemble_probs: np.ndarray, labels: np.ndarray, member_names: list[str],
          classes: list[str], f1: np.ndarray, ece: float) -> dict:
    """Headline numbers, flat so `dvc metrics diff` reads well, plus the ensemble's per-class F1."""
    member_acc = np.array([accuracy(p, labels) for p in member_probs])
    member_loss = np.array([log_loss(p, labels) for p in member_probs])
    ensemble_acc = accuracy(ensemble_probs, labels)
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


def write_tables(out_dir: Path, labels: np.ndarray, predicted: np.ndarray, classes: list[str],
                 scores: dict[str, np.ndarray]) -> None:
    """predictions.csv (for DVC's confusion template) and per_class.csv."""
    write_csv(out_dir / "predictions.csv", ["actual", "predicted"],
              ((classes[a], classes[p]) for a, p in zip(labels, predicted)))
    write_csv(out_dir / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
              ([row[0], *(round(float(v), 6) for v in row[1:4]), int(row[4])]
               for row in zip(classes, scores["precision"], scores["recall"], scores["f1"], scores["support"])))
