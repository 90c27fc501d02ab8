"""The pictures a change altered, at both revisions, and the training curves of both drawn on one chart. A revision
is a git revision, or None for the workspace."""
from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

from fmnist.report.document import Figure, Picture

# (title, file): the evaluate stage's pictures a reviewer compares.
PICTURES = (("Confusion matrix (test set)", "plots/confusion_matrix.png"),
            ("Reliability diagram", "plots/reliability.png"),
            ("Per-class scores", "plots/per_class.png"))
HISTORY = "metrics/history"


def at(revision: str | None, path: str) -> bytes | None:
    """The file's bytes at `revision` (None: the workspace), None where it has none."""
    if revision is None:
        file = Path(path)
        return file.read_bytes() if file.is_file() else None
    done = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else None


def histories(revision: str | None) -> dict[str, list[dict]]:
    """{member: rows of its metrics/history/<member>.csv} at `revision`."""
    if revision is None:
        names = sorted(p.name for p in Path(HISTORY).glob("*.csv"))
    else:
        done = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:{HISTORY}"], capture_output=True,
                              text=True, check=False)
        names = sorted(n for n in done.stdout.split() if n.endswith(".csv"))
    found = {}
    for name in names:
        data = at(revision, f"{HISTORY}/{name}")
        if data:
            found[name.removesuffix(".csv")] = list(csv.DictReader(io.StringIO(data.decode())))
    return found


def changed(base: str, head: str | None, folder: Path, labels: tuple[str, str]) -> list[Picture | Figure]:
    """The pictures that differ between the revisions, written under `folder` (base/, head/), and the training
    curves chart where any member's history differs."""
    shown: list[Picture | Figure] = []
    for title, path in PICTURES:
        old, new = at(base, path), at(head, path)
        if old == new:
            continue
        files = []
        for side, data in (("base", old), ("head", new)):
            if data is None:
                files.append(None)
                continue
            file = folder / side / Path(path).name
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
            files.append(file)
        shown.append(Picture(title, *files))
    old, new = histories(base), histories(head)
    if old != new and (old or new):
        chart = folder / "training_curves.png"
        draw_curves(old, new, labels, chart)
        shown.insert(0, Figure("Training curves: validation accuracy and loss per epoch, both revisions", chart))
    return shown


def draw_curves(old: dict[str, list[dict]], new: dict[str, list[dict]], labels: tuple[str, str], file: Path) -> None:
    """Validation accuracy and loss per epoch of every member: the base dashed, the head solid, a colour a member."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted(set(old) | set(new))
    colours = dict(zip(members, plt.get_cmap("tab10").colors, strict=False))
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for (revision, label, style) in ((old, labels[0], "--"), (new, labels[1], "-")):
        for member, rows in revision.items():
            for axis, column in zip(axes, ("val_accuracy", "val_loss"), strict=True):
                validated = [r for r in rows if r.get(column)]  # an epoch without validation has an empty cell
                if validated:
                    axis.plot([int(r["epoch"]) for r in validated], [float(r[column]) for r in validated], style,
                              color=colours[member], marker=".", label=f"{member}, {label}")
    for axis, name in zip(axes, ("validation accuracy", "validation loss"), strict=True):
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(file, dpi=110)
    plt.close(figure)
