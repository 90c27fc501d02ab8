"""ensemble stage: combine the trained members into one model file, by soft, weighted-soft or hard voting,
with optional flip test-time augmentation and a temperature per member. On each member's own validation split it
fits that temperature and measures whether the flip TTA helps. Also the Ensemble class that evaluate, predict and
the MLflow model use."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages import nets, tracking
from stages.calibration import calibration, fit_temperature, negative_log_likelihood, tempered_probabilities
from stages.checkpoint import load_member, save_checkpoint
from stages.common import StageError, run_main, write_json
from stages.config import EnsembleConfig, load_params
from stages.device import pick_device, set_threads

log = logging.getLogger("stages.ensemble")
# Hard votes give some classes probability 0; log-loss needs a floor.
MIN_PROBABILITY = 1e-7


def combine(probs: np.ndarray, method: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Members' class probabilities (M, N, C) -> ensemble probabilities (N, C).
    soft: mean; weighted: weighted mean; hard: share of the members' votes (ties keep their share)."""
    if method == "soft":
        return probs.mean(axis=0)
    if method == "weighted":
        w = np.asarray(weights, dtype=np.float64)
        return np.tensordot(w / w.sum(), probs, axes=1)
    if method == "hard":
        votes = np.eye(probs.shape[2])[probs.argmax(axis=2)]  # (M, N, C) one-hot
        return votes.mean(axis=0)
    raise ValueError(f"unknown ensemble method {method!r}; choose soft, weighted or hard")


def member_weights(val_accuracies: list[float], method: str) -> np.ndarray:
    """Voting weights: validation accuracy for `weighted`, equal otherwise."""
    accuracies = np.asarray(val_accuracies, dtype=np.float64)
    return accuracies / accuracies.sum() if method == "weighted" else np.full(len(accuracies), 1 / len(accuracies))


# Batches that stay in cache: with channels-last weights (Ensemble.__post_init__), 12,000 images took 2.3 s
# instead of 5.7 s at 2,048 contiguous (fp32, 2 cores), with the same probabilities up to 1e-6.
INFERENCE_BATCH = 512


def input_batches(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                  batch_size: int = INFERENCE_BATCH) -> Iterator[torch.Tensor]:
    """uint8 images (N, H, W) as normalized, channels-last (B, 1, H, W) batches on `device`, in order."""
    norm = nets.Normalizer(mean.to(device), std.to(device), channels_last=True)
    for start in range(0, len(images), batch_size):
        yield norm(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device).unsqueeze(1))


@torch.no_grad()
def member_logits(model: nn.Module, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                  device: torch.device, mirrored: bool = False) -> np.ndarray:
    """Logits of one member, as nets.for_inference returns it, for uint8 images (N, H, W), or for their mirror
    images."""
    model = model.to(device)
    out = [model(x.flip(-1) if mirrored else x).float().cpu().numpy() for x in input_batches(images, mean, std, device)]
    return np.concatenate(out).astype(np.float64)


@dataclass
class Ensemble:
    """Members plus how to combine them: everything needed to go from uint8 images to class probabilities."""
    members: list[nn.Module]
    states: list[dict]
    method: str
    weights: np.ndarray
    tta_flip: bool
    classes: list[str]
    image_shape: tuple[int, int]
    # one per member, dividing its logits; 1 leaves a member as trained
    temperatures: np.ndarray | None = None
    # the members with BatchNorm folded: built once, not on every call (a served model answers many small ones)
    inference_members: list[nn.Module] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperatures is None:
            self.temperatures = np.ones(len(self.members))
        # the layout input_batches delivers: several times faster than contiguous weights on a CPU
        for model in self.members:
            model.eval().to(memory_format=torch.channels_last)
        self.inference_members = [nets.for_inference(model) for model in self.members]

    def member_logits(self, images: np.ndarray, device: torch.device | str = "cpu",
                      mirrored: bool = False) -> np.ndarray:
        """(M, N, C) logits of every member for the images, or for their mirror images."""
        return np.stack([member_logits(m, images, s["mean"], s["std"], torch.device(device), mirrored)
                         for m, s in zip(self.inference_members, self.states)])

    def member_probabilities(self, plain: np.ndarray, mirrored: np.ndarray | None = None,
                             calibrated: bool = True) -> np.ndarray:
        """(M, N, C) probabilities from member_logits: tempered unless `calibrated` is false, averaged with the
        mirror images' when they are given (flip TTA)."""
        views = [plain] if mirrored is None else [plain, mirrored]
        temperatures = self.temperatures if calibrated else np.ones(len(self.members))
        return np.stack([tempered_probabilities([v[i] for v in views], float(t))
                         for i, t in enumerate(temperatures)])

    def predict_proba(self, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
        """(N, C) ensemble probabilities for uint8 images (N, H, W), with flip TTA when the ensemble uses it."""
        mirrored = self.member_logits(images, device, mirrored=True) if self.tta_flip else None
        return combine(self.member_probabilities(self.member_logits(images, device), mirrored),
                       self.method, self.weights)

    def save(self, path: Path) -> None:
        """One self-contained file of tensors and plain values: loads with weights_only=True."""
        save_checkpoint(path, {"members": self.states, "method": self.method,
                               "weights": torch.from_numpy(self.weights), "tta_flip": self.tta_flip,
                               "classes": self.classes, "image_shape": list(self.image_shape),
                               "temperatures": torch.from_numpy(np.asarray(self.temperatures, dtype=np.float64))})

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        state = torch.load(path, map_location="cpu", weights_only=True)
        members = []
        for member in state["members"]:
            model = nets.build(member["net"], len(member["classes"]), tuple(member["image_shape"]))
            model.load_state_dict(member["state_dict"])
            members.append(model.eval())
        # Files from before temperature scaling (registered versions in a team's store) have no temperatures.
        temperatures = state["temperatures"].numpy() if "temperatures" in state else None
        return cls(members, state["members"], state["method"], state["weights"].numpy(), state["tta_flip"],
                   state["classes"], tuple(state["image_shape"]), temperatures)


def build_ensemble(member_paths: list[Path], cfg: EnsembleConfig) -> Ensemble:
    """Load the members and check they agree on classes and image size."""
    loaded = [load_member(path) for path in member_paths]
    first = loaded[0][1]
    for path, (_, state) in zip(member_paths, loaded):
        if state["classes"] != first["classes"] or state["image_shape"] != first["image_shape"]:
            raise StageError(f"{path}: classes/image size {state['classes']} {state['image_shape']} differ from "
                             f"{member_paths[0]}: {first['classes']} {first['image_shape']}; retrain the members")
    weights = member_weights([state["val_accuracy"] for _, state in loaded], cfg.method)
    return Ensemble([m for m, _ in loaded], [s for _, s in loaded], cfg.method, weights, cfg.tta_flip,
                    first["classes"], tuple(first["image_shape"]))


def calibrate_on_validation(ensemble: Ensemble, data_dir: Path, device: torch.device, calibrate: bool,
                            bins: int) -> dict[str, float]:
    """On each member's own validation split (never the test set): fit its temperature (when `calibrate`), and
    measure what the temperature and the flip TTA do to it. Sets ensemble.temperatures; returns the figures."""
    images, labels = np.load(data_dir / "images.npy"), np.load(data_dir / "labels.npy").astype(np.int64)
    is_val = np.load(data_dir / "is_val.npy")
    rows = []
    for model, state in zip(ensemble.inference_members, ensemble.states):
        val = is_val[state["split"]]
        plain = member_logits(model, images[val], state["mean"], state["std"], device)
        mirrored = member_logits(model, images[val], state["mean"], state["std"], device, mirrored=True)
        views = [plain, mirrored] if ensemble.tta_flip else [plain]
        temperature = fit_temperature(views, labels[val]) if calibrate else 1.0
        flip_tta = tempered_probabilities([plain, mirrored], 1.0)
        raw = flip_tta if ensemble.tta_flip else tempered_probabilities(views, 1.0)
        tempered = tempered_probabilities(views, temperature)
        rows.append({
            "temperature": temperature,
            "accuracy": float((plain.argmax(1) == labels[val]).mean()),
            "accuracy_flip_tta": float((flip_tta.argmax(1) == labels[val]).mean()),
            "ece_uncalibrated": calibration(raw, labels[val], bins)[0],
            "ece": calibration(tempered, labels[val], bins)[0],
            "log_loss_uncalibrated": negative_log_likelihood(views, labels[val], 1.0),
            "log_loss": negative_log_likelihood(views, labels[val], temperature),
        })
    ensemble.temperatures = np.array([row["temperature"] for row in rows])
    mean = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
    return {
        **{f"temperature_{s['member']}": row["temperature"] for s, row in zip(ensemble.states, rows)},
        "temperature_mean": mean["temperature"],
        "member_val_accuracy_mean": mean["accuracy"],
        "member_val_accuracy_mean_flip_tta": mean["accuracy_flip_tta"],
        "flip_tta_gain": mean["accuracy_flip_tta"] - mean["accuracy"],
        "member_val_ece_uncalibrated_mean": mean["ece_uncalibrated"],
        "member_val_ece_mean": mean["ece"],
        "member_val_log_loss_uncalibrated_mean": mean["log_loss_uncalibrated"],
        "member_val_log_loss_mean": mean["log_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True, help="train's <member>.pt files")
    parser.add_argument("--data", type=Path, required=True, help="preprocess's training directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    cfg = params.ensemble
    set_threads(params.train.threads)
    device = pick_device(params.train.device)
    section = {"ensemble": cfg.model_dump(), "members": {k: v.model_dump() for k, v in params.members.items()}}
    with tracking.stage_run("ensemble", section, experiment=params.dataset.name) as run:
        # Members from params, not a glob: a member removed from params may have left its file behind.
        ensemble = build_ensemble([args.models_dir / f"{name}.pt" for name in params.members], cfg)
        measured = calibrate_on_validation(ensemble, args.data, device, cfg.calibrate, params.evaluate.ece_bins)
        ensemble.save(args.out)
        summary = {"members": len(ensemble.members), **dict(zip(
            [f"weight_{s['member']}" for s in ensemble.states], np.round(ensemble.weights, 6).tolist())),
            **{k: round(v, 6) for k, v in measured.items()}}
        log.info("%d members, %s voting%s; flip TTA on validation: %+.2f points", len(ensemble.members),
                 cfg.method, " + flip TTA" if cfg.tta_flip else "", 100 * summary["flip_tta_gain"])
        log.info("temperature %.3f (mean of members): validation ECE %.2f%% -> %.2f%%, log-loss %.4f -> %.4f",
                 measured["temperature_mean"], 100 * measured["member_val_ece_uncalibrated_mean"],
                 100 * measured["member_val_ece_mean"], measured["member_val_log_loss_uncalibrated_mean"],
                 measured["member_val_log_loss_mean"])
        write_json(args.metrics, summary)
        run.log_metrics(summary)


if __name__ == "__main__":
    run_main(main)
