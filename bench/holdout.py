"""Ensemble choices on a shared holdout. Each member's validation split is training data for the other members, so
the members' own splits cannot say which ensemble is better. `prepare` holds out a stratified part of preprocess's
training images from every member and splits the rest as preprocess splits its data; members trained on that
directory (stages.train --data, any params) never see the holdout; `score` compares ensembles of them on it, with
flip TTA and the plain mean of probabilities. The test set is not read.

    python bench/holdout.py prepare --out /tmp/holdout                # 12,000 held out, 5 splits of the other 48,000
    python -m stages.train --member m0 --data /tmp/holdout --model /tmp/a/m0.pt ...  # per member, any params
    python bench/holdout.py score --data /tmp/holdout a=/tmp/a/m0.pt,/tmp/a/m1.pt b=...

`score` prints each member's holdout accuracy, each named ensemble's, and for every pair of ensembles the images
only one of them gets right, with a two-sided sign test on those disagreements.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.model_selection import train_test_split

from fmnist.data.arrays import save_arrays
from fmnist.data.splits import make_splits
from fmnist.model.ensemble import Ensemble, combine
from fmnist.params import load_params

HOLDOUT = ("holdout_images.npy", "holdout_labels.npy")


def prepare(source: Path, out: Path, holdout: int, seed: int) -> None:
    cfg = load_params().preprocess
    images, labels = np.load(source / "images.npy"), np.load(source / "labels.npy")
    keep, held = train_test_split(np.arange(len(labels)), test_size=holdout, stratify=labels, random_state=seed)
    keep, held = np.sort(keep), np.sort(held)
    # preprocess's normalization statistics (all training images), so the members see the pipeline's inputs
    save_arrays(out, {"images": images[keep], "labels": labels[keep], "mean": np.load(source / "mean.npy"),
                      "std": np.load(source / "std.npy"),
                      "is_val": make_splits(labels[keep], cfg.n_splits, cfg.val_fraction, cfg.seed),
                      "holdout_images": images[held], "holdout_labels": labels[held]})
    print(f"{out}: {len(keep):,} images in {cfg.n_splits} splits ({cfg.val_fraction:.0%} validation each), "
          f"{len(held):,} held out (seed {seed})")


def member_probabilities(paths: list[Path], images: np.ndarray) -> dict[Path, np.ndarray]:
    """Each member file's (N, C) probabilities with flip TTA, untempered, the way the ensemble stage predicts."""
    states = [torch.load(path, map_location="cpu", weights_only=True) for path in paths]
    ensemble = Ensemble.from_members(states, "soft", tta_flip=True)
    probs = ensemble.member_probabilities([ensemble.member_logits(images),
                                           ensemble.member_logits(images, mirrored=True)], calibrated=False)
    return dict(zip(paths, probs))


def ensemble_spec(text: str) -> tuple[str, list[Path]]:
    name, sep, paths = text.partition("=")
    if not sep or not name or not paths:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=member.pt[,member.pt...]")
    return name, [Path(p) for p in paths.split(",")]


def score(data: Path, ensembles: list[tuple[str, list[Path]]]) -> None:
    images, labels = np.load(data / HOLDOUT[0]), np.load(data / HOLDOUT[1])
    probabilities = member_probabilities(list(dict.fromkeys(p for _, paths in ensembles for p in paths)), images)
    right: dict[str, np.ndarray] = {}
    print(f"holdout: {len(labels):,} images ({data})")
    for name, paths in ensembles:
        members = np.stack([probabilities[p] for p in paths])
        right[name] = combine(members, "soft").argmax(axis=1) == labels
        accuracies = (members.argmax(axis=2) == labels).mean(axis=1)
        print(f"{name:20} ensemble {right[name].mean():.2%} of {len(paths)} members "
              f"({' / '.join(f'{a:.2%}' for a in accuracies)}; mean {accuracies.mean():.2%})")
    names = list(right)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            only_a, only_b = int(np.sum(right[a] & ~right[b])), int(np.sum(right[b] & ~right[a]))
            p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
            print(f"{a} vs {b}: {only_a} images only {a} gets right, {only_b} only {b}; sign test p = {p:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write a training directory with a shared holdout")
    prep.add_argument("--source", type=Path, default=Path("data/processed/train"))
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--holdout", type=int, default=12000)
    prep.add_argument("--seed", type=int, default=123)
    sc = commands.add_parser("score", help="holdout accuracy of members and ensembles")
    sc.add_argument("--data", type=Path, required=True)
    sc.add_argument("ensembles", nargs="+", type=ensemble_spec, help="NAME=member.pt[,member.pt...]")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.source, args.out, args.holdout, args.seed)
    else:
        score(args.data, args.ensembles)


if __name__ == "__main__":
    main()
