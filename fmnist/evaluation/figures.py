"""The evaluation pictures, as PNG files that render offline (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np

from fmnist.files import atomic_path

DPI = 110


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Counts in each cell, colour by share of the true class, so off-diagonal confusions stand out."""
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    _save(fig, path)


def per_class_bars(scores: dict[str, np.ndarray], classes: list[str], path: Path, title: str) -> None:
    """Precision, recall and F1 per class, side by side, zoomed to where the classes differ."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(scores)
    for k, (name, values) in enumerate(scores.items()):
        ax.bar(np.arange(len(classes)) + (k - (len(scores) - 1) / 2) * width, values, width, label=name)
    low = min(float(np.min(v)) for v in scores.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=len(scores), loc="lower right")
    ax.set_title(title)
    _save(fig, path)


def reliability_diagram(curves: dict[str, tuple[float, dict[str, np.ndarray]]], path: Path) -> None:
    """Accuracy per confidence bin against the bin's mean confidence, for each named set of probabilities
    (label -> fmnist.evaluation.calibration.calibration's result); the first is drawn as bars and its bins counted below.
    Points under the diagonal are overconfident, above it underconfident."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for i, (label, (ece, bins)) in enumerate(curves.items()):
        counts = bins["counts"]
        edges = np.linspace(0, 1, len(counts) + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        filled = counts > 0
        if i == 0:
            ax.bar(centers[filled], bins["accuracy"][filled], width=1 / len(counts), edgecolor="black",
                   alpha=0.6, color="C0", label=f"{label} (ECE {100 * ece:.2f}%)")
            hist.bar(centers, counts, width=1 / len(counts), color="C0", alpha=0.6, label=label)
        else:
            ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", color=f"C{i + 2}",
                    label=f"{label} (ECE {100 * ece:.2f}%)")
            hist.step(edges, np.r_[counts, counts[-1]], where="post", color=f"C{i + 2}", label=label)
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability: accuracy at each confidence (test)")
    ax.legend(loc="upper left")
    hist.set_yscale("log")
    hist.set_xlabel("confidence")
    hist.set_ylabel("images")
    _save(fig, path)


def image_grid(images: np.ndarray, captions: list[str], columns: int, path: Path, title: str) -> None:
    """Images (N, H, W) in a grid with one caption each."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.65 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=6.5)
    fig.suptitle(title)
    _save(fig, path)


def sprite(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int, path: Path) -> None:
    """A row of samples per class, class name on the left, as in the dataset's README."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(0.8 * per_class + 1.2, 0.8 * len(classes)),
                             squeeze=False)
    for row, name in enumerate(classes):
        picks = np.flatnonzero(labels == row)[:per_class]
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(picks):
                ax.imshow(images[picks[col]], cmap="gray_r", vmin=0, vmax=255)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    _save(fig, path)


def embedding(xy: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """A 2-D embedding as a scatter, one colour per class, class names at the class medians."""
    fig, ax = plt.subplots(figsize=(8, 7.5))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        points = xy[labels == index]
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6, color=colours(index % colours.N), label=name,
                   linewidths=0, rasterized=True)
        if len(points):
            centre = np.median(points, axis=0)
            ax.text(centre[0], centre[1], name, fontsize=8, ha="center", va="center", weight="bold",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=4, fontsize=7, loc="best", frameon=False)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def evaluation_pictures(plots: Path, images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                        reliability: dict[str, tuple[float, dict[str, np.ndarray]]], scores: dict[str, np.ndarray],
                        classes: list[str], mistakes: int, title: str) -> list[Path]:
    """Every picture of the evaluate stage, from the ensemble's test probabilities; returns their paths.
    `reliability`: the curves of the reliability diagram (calibrated, and without the members' temperatures)."""
    from sklearn.metrics import confusion_matrix as count_confusions

    predicted = probs.argmax(1)
    paths = {name: plots / f"{name}.png" for name in
             ("confusion_matrix", "per_class", "reliability", "confident_mistakes")}
    confusion_matrix(count_confusions(labels, predicted, labels=range(len(classes))), classes,
                     paths["confusion_matrix"], f"{title}: confusion matrix (test)")
    per_class_bars(scores, classes, paths["per_class"], f"{title}: per-class scores (test)")
    reliability_diagram(reliability, paths["reliability"])
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:mistakes]
    captions = [f"{classes[predicted[i]]} {100 * probs[i].max():.0f}%\n(is {classes[labels[i]]})" for i in worst]
    image_grid(images[worst], captions, 6, paths["confident_mistakes"],
               f"{title}: most confident mistakes (predicted, confidence; true class)")
    return list(paths.values())
