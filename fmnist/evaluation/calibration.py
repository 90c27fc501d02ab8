"""Temperature scaling and expected calibration error: how far stated confidence is from observed accuracy, and
the one-parameter fix that divides a net's logits by a temperature fitted on held-out data. The ensemble stage fits
one per member on that member's own validation split, never on the test set."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from fmnist.evaluation.scores import accuracy
from fmnist.model.ensemble import MIRRORED, PLAIN, Ensemble, member_logits, tempered_probabilities

# Fitted in log space inside these bounds: a temperature outside them means broken logits, not miscalibration.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def negative_log_likelihood(views: list[np.ndarray], labels: np.ndarray, temperature: float,
                            weights: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of `labels` under the views' tempered probabilities: the log-loss, computed
    from logits so that confident, wrong predictions do not underflow (what fit_temperature minimizes)."""
    if len(views) == 1:  # log_softmax directly: no underflow for confident, wrong predictions
        return float(-log_softmax(np.asarray(views[0], dtype=np.float64) / temperature, axis=1)
                     [np.arange(len(labels)), labels].mean())
    probs = tempered_probabilities(views, temperature, weights)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(probs, np.finfo(np.float64).tiny)).mean())


def fit_temperature(views: list[np.ndarray], labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The temperature that minimizes the negative log-likelihood of `labels` (Guo et al. 2017). It changes no
    argmax of a single view, so accuracy stays as it was; only the confidence moves."""
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(views, labels, float(np.exp(log_t)), weights),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple[float, dict[str, np.ndarray]]:
    """Expected calibration error over equal-width confidence bins, and the per-bin table behind it."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    bin_accuracy = np.bincount(which, weights=correct, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts / len(labels) * np.abs(bin_accuracy - mean_confidence)))
    return ece, {"confidence": mean_confidence, "accuracy": bin_accuracy, "counts": counts}


def calibrate_on_validation(ensemble: Ensemble, images: np.ndarray, labels: np.ndarray, is_val: np.ndarray,
                            device: torch.device, calibrate: bool, bins: int) -> dict[str, float]:
    """On each member's own validation split (is_val[split], never the test set): fit its temperature (when
    `calibrate`), and measure what the temperature, the flip TTA and the ensemble's own TTA views do to it. Sets
    ensemble.temperatures; returns the figures."""
    rows = []
    used, weights = ensemble.views
    for model, state in zip(ensemble.inference_members, ensemble.states):
        val = is_val[state["split"]]
        logits = {view: member_logits(model, images[val], state["mean"], state["std"], device, mirrored=view[2],
                                      precision=ensemble.precision, shift=view[:2])
                  for view in dict.fromkeys([PLAIN, MIRRORED, *used])}
        views = [logits[view] for view in used]
        temperature = fit_temperature(views, labels[val], weights) if calibrate else 1.0
        raw = tempered_probabilities(views, 1.0, weights)
        tempered = tempered_probabilities(views, temperature, weights)
        rows.append({
            "temperature": temperature,
            "accuracy": accuracy(logits[PLAIN], labels[val]),
            "accuracy_flip_tta": accuracy(tempered_probabilities([logits[PLAIN], logits[MIRRORED]], 1.0), labels[val]),
            "accuracy_tta": accuracy(raw, labels[val]),
            "ece_uncalibrated": calibration(raw, labels[val], bins)[0],
            "ece": calibration(tempered, labels[val], bins)[0],
            "log_loss_uncalibrated": negative_log_likelihood(views, labels[val], 1.0, weights),
            "log_loss": negative_log_likelihood(views, labels[val], temperature, weights),
        })
    ensemble.temperatures = np.array([row["temperature"] for row in rows])
    mean = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    return {
        **{f"temperature_{s['member']}": row["temperature"] for s, row in zip(ensemble.states, rows)},
        "temperature_mean": mean["temperature"],
        "member_val_accuracy_mean": mean["accuracy"],
        "member_val_accuracy_mean_flip_tta": mean["accuracy_flip_tta"],
        "flip_tta_gain": mean["accuracy_flip_tta"] - mean["accuracy"],
        "member_val_accuracy_mean_tta": mean["accuracy_tta"],  # the ensemble's own views
        "tta_gain": mean["accuracy_tta"] - mean["accuracy"],
        "member_val_ece_uncalibrated_mean": mean["ece_uncalibrated"],
        "member_val_ece_mean": mean["ece"],
        "member_val_log_loss_uncalibrated_mean": mean["log_loss_uncalibrated"],
        "member_val_log_loss_mean": mean["log_loss"],
    }
