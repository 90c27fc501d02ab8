"""train stage (`train@<member>`): one ensemble member on its own seed and train/validation split, keeping the
checkpoint with the best validation loss. Resumable: a checkpoint each epoch, so a killed run continues where it
stopped and ends with the same weights as an uninterrupted one. On one process, or data-parallel on
train.processes (DDP under torchrun), with the same outputs for a given process count."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from fmnist.errors import StageError
from fmnist.params import Member, Params, load_params
from fmnist.runner import run_main
from fmnist.training.launch import relaunch, under_torchrun

log = logging.getLogger("fmnist.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", required=True)
    parser.add_argument("--data", type=Path, required=True, help="preprocess's training directory")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--resume", type=Path, required=True, help="per-epoch checkpoint, kept until success")
    args = parser.parse_args()
    params = load_params()
    member, cfg = params.members.get(args.member), params.train
    if member is None:
        raise StageError(f"--member {args.member!r} is not in params.yaml's members (`dvc stage list` shows the "
                         "train@<member> stages)")
    if cfg.processes > 1 and not under_torchrun():
        relaunch(cfg.processes, "stages.train", sys.argv[1:])
        return
    train(args, member, params)


def train(args: argparse.Namespace, member: Member, params: Params) -> None:
    """This process's part: the whole member on one process, or one rank's under torchrun."""
    # Imported here, not above: the process that only relaunches under torchrun would otherwise spend seconds
    # importing torch and MLflow per member for nothing.
    import torch

    from fmnist.device import pick_device
    from fmnist.files import write_json
    from fmnist.model import nets
    from fmnist.tracking.run import stage_run
    from fmnist.tracking.store import tracking_uri
    from fmnist.tracking.system import system_metrics
    from fmnist.training.distributed import from_main, join, leave, quiet_other_ranks
    from fmnist.training.loop import fit, summarize, write_history
    from fmnist.training.member import fingerprint, prepare, save_member

    cfg = params.train
    quiet_other_ranks()
    classes, image_shape = list(params.dataset.classes), list(params.dataset.image_shape)
    device = pick_device(cfg.device)
    world = join(device.type)
    try:
        setup = prepare(args.data, member, cfg, len(classes), tuple(image_shape), device, world)
        stage = f"train@{args.member}"
        # Rank 0 alone records the run and writes; the others train their shard.
        with stage_run(stage) if world.is_main else contextlib.nullcontext() as run:
            if run is not None:
                run.set_tags({"member": args.member, "device": str(setup.device), "threads": setup.threads,
                              "processes": world.size, "torch_version": torch.__version__,
                              "parameters": nets.count_parameters(setup.model)})
            log.info("%s: %s net, %d parameters, %d fit / %d validation images, %d process(es) x %d threads",
                     stage, cfg.net, nets.count_parameters(setup.model), len(setup.fit_data), len(setup.val_data),
                     world.size, setup.threads)
            run_id, uri = from_main(world, (run.run_id, tracking_uri()) if run else None)
            # Every process samples its own system metrics into rank 0's run, each under its rank's id, at the
            # step of the epoch in progress.
            with system_metrics(run_id, uri, world.rank, setup.device.type == "cuda") as monitor:
                def on_epoch(row: dict) -> None:
                    monitor.epoch_done(int(row["epoch"]))
                    if run is not None:
                        run.log_metrics(row, step=int(row["epoch"]))

                result = fit(setup.model, setup.fit_data, setup.val_data, setup.norm, cfg, member.seed, args.resume,
                             fingerprint(args.data, args.member, member, cfg, classes, image_shape, world),
                             on_epoch=on_epoch, world=world)
            if run is None:
                return
            setup.model.load_state_dict(result.best_state)
            save_member(args.model, setup.model, setup.norm, cfg, classes, image_shape, args.member, member, result)
            summary = summarize(result, cfg)
            write_json(args.metrics, summary)
            write_history(args.history, result.history)
            run.log_metrics({f"best_{k}": v for k, v in summary.items()})
            # The best checkpoint as the run's logged model at its epoch's step: MLflow links that epoch's metrics
            # to it, the validation scores that chose it among them.
            run.log_torch_model(setup.model.float().cpu().eval(),
                                example=setup.norm(setup.fit_data.x[:2]).float().cpu().numpy(),
                                step=result.best_epoch)
        args.resume.unlink(missing_ok=True)
    finally:
        leave(world)


if __name__ == "__main__":
    run_main(main)
