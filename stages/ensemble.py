"""ensemble stage: combine the trained members into one model file, by soft, weighted-soft or hard voting, with
optional flip test-time augmentation and a temperature per member. On each member's own validation split it fits
that temperature and measures whether the flip TTA helps."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from fmnist.data.arrays import load_images
from fmnist.device import pick_device, set_threads
from fmnist.evaluation.calibration import calibrate_on_validation
from fmnist.evaluation.compatibility import check_members_agree
from fmnist.files import save_torch, write_json
from fmnist.model.ensemble import Ensemble
from fmnist.params import load_params
from fmnist.runner import run_main
from fmnist.tracking.run import stage_run

log = logging.getLogger("fmnist.ensemble")


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
    with stage_run("ensemble") as run:
        # Members from params, not a glob: a member removed from params may have left its file behind.
        paths = [args.models_dir / f"{name}.pt" for name in params.members]
        states = [torch.load(path, map_location="cpu", weights_only=True) for path in paths]
        check_members_agree(paths, states)
        # The members compute in the precision they were trained in: their best checkpoints were chosen by
        # validation in it, and bf16 is the fast path where training chose it.
        ensemble = Ensemble.from_members(states, cfg.method, cfg.tta_flip, precision=params.train.precision,
                                         tta_translate=cfg.tta_translate)
        images, labels = load_images(args.data)
        measured = calibrate_on_validation(ensemble, images, labels, np.load(args.data / "is_val.npy"), device,
                                           cfg.calibrate, params.evaluate.ece_bins)
        save_torch(args.out, ensemble.to_state())
        summary = {"members": len(ensemble.members), **dict(zip(
            [f"weight_{s['member']}" for s in ensemble.states], np.round(ensemble.weights, 6).tolist())),
            **{k: round(v, 6) for k, v in measured.items()}}
        log.info("%d members, %s voting%s%s; on validation flip TTA %+.2f points, the ensemble's views %+.2f",
                 len(ensemble.members), cfg.method, " + flip TTA" if cfg.tta_flip else "",
                 " + translation TTA" if cfg.tta_translate else "", 100 * summary["flip_tta_gain"],
                 100 * summary["tta_gain"])
        log.info("temperature %.3f (mean of members): validation ECE %.2f%% -> %.2f%%, log-loss %.4f -> %.4f",
                 measured["temperature_mean"], 100 * measured["member_val_ece_uncalibrated_mean"],
                 100 * measured["member_val_ece_mean"], measured["member_val_log_loss_uncalibrated_mean"],
                 measured["member_val_log_loss_mean"])
        write_json(args.metrics, summary)
        run.log_metrics(summary)


if __name__ == "__main__":
    run_main(main)
