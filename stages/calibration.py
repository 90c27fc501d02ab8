"""Temperature scaling and expected calibration error: how far stated confidence is from observed accuracy, and
the one-parameter fix that divides a net's logits by a temperature fitted on held-out data."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# Fitted in log space inside these bounds: a temperature outside them means broken logits, not miscalibration.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def tempered_probabilities(views: list[np.ndarray], temperature: float) -> np.ndarray:
    """Class probabilities (N, C) from the logits of one or more views of the same images (e.g. the images and
    their mirror images), each divided by `temperature`, softmaxed, then averaged: how a member predicts."""
    return np.mean([softmax(np.asarray(z, dtype=np.float64) / temperature, axis=1) for z in views], axis=0)


def negative_log_likelihood(views: list[np.ndarray], labels: np.ndarray, temperature: float) -> float:
    if len(views) == 1:  # log_softmax directly: no underflow for confident, wrong predictions
        return float(-log_softmax(np.asarray(views[0], dtype=np.float64) / temperature, axis=1)
                     [np.arange(len(labels)), labels].mean())
    probs = tempered_probabilities(views, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(probs, np.finfo(np.float64).tiny)).mean())


def fit_temperature(views: list[np.ndarray], labels: np.ndarray) -> float:
    """The temperature that minimizes the negative log-likelihood of `labels` (Guo et al. 2017). It changes no
    argmax of a single view, so accuracy stays as it was; only the confidence moves."""
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(views, labels, float(np.exp(log_t))),
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
