"""train stage (`train@<member>`): one ensemble member on its own seed and train/validation split, keeping the
checkpoint with the best validation loss. Resumable: a checkpoint each epoch, so a killed run continues where it
stopped and ends with the same weights as an uninterrupted one. On one process, or data-parallel on
train.processes (DDP under torchrun: stages/distributed.py), with the same outputs either way."""
from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from stages import nets, tracking
from stages.augment import augment
from stages.checkpoint import save_checkpoint
from stages.common import StageError, atomic_path, digest, run_main, write_json
from stages.config import Params, Train, load_params
from stages.device import autocast, pick_device, set_threads
from stages.distributed import (World, join, leave, quiet_other_ranks, relaunch, share_buffers, sum_across,
                                threads_per_process, under_torchrun)
from stages.nets import Normalizer

log = logging.getLogger("stages.train")


@dataclass
class Images:
    """A labelled image set as tensors on the training device; pixels stay uint8 until a batch is drawn."""
    x: torch.Tensor  # (N, 1, H, W) uint8
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def load_member_data(data_dir: Path, split: int, device: torch.device) -> tuple[Images, Images, np.ndarray, np.ndarray]:
    """The preprocess outputs for one split: fit and validation images on `device`, normalization stats."""
    images = np.load(data_dir / "images.npy")
    labels = np.load(data_dir / "labels.npy").astype(np.int64)
    is_val = np.load(data_dir / "is_val.npy")[split]
    x = torch.from_numpy(images).unsqueeze(1).to(device)
    y = torch.from_numpy(labels).to(device)
    val = torch.from_numpy(is_val).to(device)
    mean, std = np.load(data_dir / "mean.npy"), np.load(data_dir / "std.npy")
    return Images(x[~val], y[~val]), Images(x[val], y[val]), mean, std


def lr_at(step: int, total: int, cfg: Train) -> float:
    """One-cycle: linear warm-up from lr/10 to lr over warmup_fraction of the steps, then linear decay to 0."""
    warmup = round(total * cfg.warmup_fraction)
    if step < warmup:
        return cfg.lr * (0.1 + 0.9 * step / warmup)
    return cfg.lr * max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model: nn.Module, cfg: Train) -> torch.optim.Optimizer:
    """SGD-Nesterov or AdamW, with weight decay on conv/linear weights only (not BN or biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def shard(n: int, world: World) -> slice:
    """This process's contiguous share of n items (the last process takes the remainder)."""
    per = n // world.size
    return slice(world.rank * per, n if world.rank == world.size - 1 else (world.rank + 1) * per)


@torch.no_grad()
def evaluate(model: nn.Module, data: Images, norm: Normalizer, cfg: Train,
             world: World = World()) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy of `model` on `data`; with several processes each
    scores its shard and the sums are shared, so every process gets the same figures."""
    model = nets.for_inference(model)
    device = data.x.device
    mine = shard(len(data), world)
    x_all, y_all = data.x[mine], data.y[mine]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(y_all), cfg.eval_batch_size):
        x, y = x_all[start:start + cfg.eval_batch_size], y_all[start:start + cfg.eval_batch_size]
        with autocast(device, cfg.precision):
            logits = model(norm(x)).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    sum_across(world, loss_sum, correct)
    return loss_sum.item() / len(data), correct.item() / len(data)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a last batch of 1 would break BatchNorm); at least one."""
    return max(1, n // batch_size)


def fit(
    model: nn.Module,
    fit_data: Images,
    val_data: Images,
    norm: Normalizer,
    cfg: Train,
    seed: int,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[dict[str, float]], None] = lambda row: None,
    world: World = World(),
) -> FitResult:
    """Train `model` for cfg.epochs; keep the weights with the best validation loss.
    With `checkpoint`, state is saved after every epoch (by rank 0) and a matching `fingerprint` resumes from it.
    With several processes (`world`), each draws the same shuffled, augmented global batch from the same seeded
    generator and trains on its own slice of it; DDP averages the gradients, so a global step sees the
    cfg.batch_size images a single process would, and every process can resume from rank 0's checkpoint."""
    device = fit_data.x.device
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    optimizer = make_optimizer(model, cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay else None
    step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.distributed else model
    step_model = torch.compile(step_model) if cfg.compile else step_model
    mine = shard(cfg.batch_size, world)
    steps = batches_per_epoch(len(fit_data), cfg.batch_size)
    total = steps * cfg.epochs
    result = FitResult(best_state={}, best_epoch=0)
    start_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest onto the model's device.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["cpu_rng"])
            if device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"])
            result = FitResult(state["best_state"], state["best_epoch"], state["history"])
            start_epoch = state["epoch"] + 1
            log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
            for row in result.history:  # so this run's record (MLflow) holds every epoch, not just the new ones
                on_epoch(row)
        else:
            log.info("ignoring %s: written for other params or data", checkpoint)

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(fit_data), device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = torch.zeros((), device=device, dtype=torch.int64)
        for i in tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                      disable=None if world.is_main else True):
            step = (epoch - 1) * steps + i
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            index = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = augment(fit_data.x[index], cfg.augment, gen, norm), fit_data.y[index]
            x, y = x[mine], y[mine]  # the whole batch is augmented so that the generator stays in step everywhere
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.precision):
                logits = step_model(x).float()
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        sum_across(world, loss_sum, correct, seen)
        seen = int(seen.item())
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise StageError(f"training loss became {train_loss} in epoch {epoch} (peak train.lr={cfg.lr}): "
                             "lower train.lr or check the data; no checkpoint was saved")
        seconds = time.perf_counter() - started
        scored = ema.module if ema is not None else model
        share_buffers(world, scored)
        val_loss, val_accuracy = evaluate(scored, val_data, norm, cfg, world)
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": correct.item() / seen,
               "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr_at(epoch * steps - 1, total, cfg),
               "seconds": seconds, "images_per_second": seen / seconds}
        result.history.append(row)
        if not result.best_state or val_loss < result.best["val_loss"]:
            source = ema.module if ema is not None else model
            result.best_state = {k: v.detach().clone() for k, v in source.state_dict().items()}
            result.best_epoch = epoch
        log.info("epoch %d/%d: train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% | %.1fs, %.0f img/s",
                 epoch, cfg.epochs, train_loss, 100 * row["train_accuracy"], val_loss, 100 * val_accuracy,
                 seconds, row["images_per_second"])
        on_epoch(row)
        if checkpoint is not None and world.is_main:
            save_checkpoint(checkpoint, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "generator": gen.get_state(), "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "best_state": result.best_state, "best_epoch": result.best_epoch, "history": result.history,
            })
    return result


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch CSV for `dvc plots`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in history)


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
    member = params.members.get(args.member)
    if member is None:
        raise StageError(f"--member {args.member!r} is not in params.yaml members: {', '.join(params.members)}")
    cfg = params.train
    if cfg.processes > 1 and not under_torchrun():
        relaunch(cfg.processes, sys.argv[1:])
        return
    quiet_other_ranks()
    device = pick_device(cfg.device)
    world = join(device.type)
    try:
        train_member(args, params, device, world)
    finally:
        leave(world)


def train_member(args: argparse.Namespace, params: Params, device: torch.device, world: World) -> None:
    """This process's part of training one member; rank 0 also writes the outputs and the MLflow run."""
    member, cfg = params.members[args.member], params.train
    if cfg.batch_size % world.size:
        raise StageError(f"train.batch_size {cfg.batch_size} does not split evenly over {world.size} processes "
                         "(train.processes, or torchrun's world size); choose a multiple of it")
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    threads = set_threads(threads_per_process(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.manual_seed(member.seed)
    fit_data, val_data, mean, std = load_member_data(args.data, member.split, device)
    norm = Normalizer(torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device), cfg.channels_last)
    n_classes, shape = len(params.dataset.classes), tuple(params.dataset.image_shape)
    model = nets.build(cfg.net, n_classes, shape).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    section = {"train": cfg.model_dump(), "member": {"name": args.member, **member.model_dump()},
               "preprocess": params.preprocess.model_dump(), "dataset": {"files": params.dataset.files.model_dump()},
               "world_size": world.size}
    stage = f"train@{args.member}"
    # Rank 0 alone records the run; the others train their shard and write nothing.
    context = tracking.stage_run(stage, section, experiment=params.dataset.name) if world.is_main \
        else contextlib.nullcontext()
    with context as run:
        if run is not None:
            run.set_tags({"member": args.member, "device": str(device), "threads": threads, "processes": world.size,
                          "torch_version": torch.__version__, "parameters": nets.count_parameters(model)})
        log.info("%s: %s net, %d parameters, %d fit / %d validation images, %d process(es) x %d threads", stage,
                 cfg.net, nets.count_parameters(model), len(fit_data), len(val_data), world.size, threads)
        result = fit(model, fit_data, val_data, norm, cfg, member.seed, args.resume, digest(section),
                     on_epoch=(lambda row: run.log_metrics(row, step=int(row["epoch"]))) if run else lambda row: None,
                     world=world)
        if run is None:
            return
        model.load_state_dict(result.best_state)
        save_member(args.model, model, norm, params, args.member, result)
        summary = {"best_epoch": result.best_epoch, "val_loss": round(result.best["val_loss"], 6),
                   "val_accuracy": round(result.best["val_accuracy"], 6), "epochs": cfg.epochs,
                   "train_seconds": round(sum(row["seconds"] for row in result.history), 1),
                   "images_per_second": round(float(np.median([r["images_per_second"] for r in result.history])))}
        write_json(args.metrics, summary)
        write_history(args.history, result.history)
        run.log_metrics({f"best_{k}": v for k, v in summary.items()})
        run.log_torch_model(model.float().cpu().eval(), example=norm(fit_data.x[:2]).float().cpu().numpy())
    args.resume.unlink(missing_ok=True)


def save_member(path: Path, model: nn.Module, norm: Normalizer, params: Params, member: str,
                result: FitResult) -> None:
    """State dict plus what rebuilds and feeds the net; plain tensors and values, so weights_only=True loads it."""
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "net": params.train.net,
        "classes": list(params.dataset.classes),
        "image_shape": list(params.dataset.image_shape),
        "mean": norm.mean.cpu(),
        "std": norm.std.cpu(),
        "member": member,
        "seed": params.members[member].seed,
        "split": params.members[member].split,
        "best_epoch": result.best_epoch,
        "val_loss": result.best["val_loss"],
        "val_accuracy": result.best["val_accuracy"],
    }
    save_checkpoint(path, state)


if __name__ == "__main__":
    run_main(main)
