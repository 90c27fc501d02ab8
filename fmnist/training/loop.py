"""Training one member: a one-cycle schedule, batch augmentation on the device, the checkpoint with the best
validation loss, and a per-epoch checkpoint that resumes to the same weights as an uninterrupted run. On one
process or data-parallel over several (fmnist.training.distributed), with the same outputs for a given count."""
from __future__ import annotations

import logging
import math
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

from fmnist.data.arrays import load_images
from fmnist.errors import StageError
from fmnist.files import save_torch, write_csv
from fmnist.model.nets import Normalizer, for_inference
from fmnist.model.precision import autocast
from fmnist.params import Train
from fmnist.training.augment import augment
from fmnist.training.distributed import World, share_buffers, sum_across
from fmnist.training.muon import MuonSGD

log = logging.getLogger("fmnist.train")


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
    images, labels = load_images(data_dir)
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


class Lookahead:
    """airbench's lookahead (Jordan, 2024): every `every` steps the weights move to an average of themselves and
    their slow copy, and the slow copy to that average. The average's weight on the slow copy grows as
    0.95**every * progress**3, so early training is untouched and the decaying end of the schedule is averaged;
    the last step leaves the weights at the slow copy. Every process applies it to the same weights."""

    def __init__(self, model: nn.Module, every: int, total: int):
        self.params = list(model.parameters())
        self.slow = [p.detach().clone() for p in self.params]
        self.every, self.total = every, total

    @torch.no_grad()
    def after(self, step: int) -> None:
        """Called after optimizer step `step` (0-based)."""
        done = step + 1
        if done == self.total:
            decay = 1.0
        elif done % self.every == 0:
            decay = 0.95 ** self.every * (done / self.total) ** 3
        else:
            return
        for slow, param in zip(self.slow, self.params, strict=True):
            slow.lerp_(param, 1 - decay)
            param.copy_(slow)

    def state_dict(self) -> list[torch.Tensor]:
        return self.slow

    def load_state_dict(self, slow: list[torch.Tensor]) -> None:
        for mine, saved in zip(self.slow, slow, strict=True):
            mine.copy_(saved)


def make_optimizer(model: nn.Module, cfg: Train) -> torch.optim.Optimizer:
    """SGD-Nesterov, AdamW or Muon for the conv filters (fmnist.training.muon), with weight decay on conv/linear
    weights only (not BN or biases; Muon's filters are renormalized instead)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    plain = {"params": no_decay, "weight_decay": 0.0, "lr_scale": cfg.no_decay_lr_scale}
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, plain]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "muon":  # the conv filters (4-D) take Muon steps, the rest the SGD groups above
        groups = [{"params": [p for p in decay if p.ndim == 4], "muon": True, "lr_scale": cfg.muon_lr / cfg.lr},
                  {"params": [p for p in decay if p.ndim < 4], "weight_decay": cfg.weight_decay},
                  plain]
        return MuonSGD(groups, cfg.lr, cfg.momentum, cfg.muon_momentum)
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
    model = for_inference(model)
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


def validates(epoch: int, cfg: Train) -> bool:
    """Whether validation follows `epoch`: every validate_every-th epoch for the curves, and each of the last
    validate_last, where a schedule that decays to 0 puts the best checkpoint; the last epoch always."""
    return epoch % cfg.validate_every == 0 or epoch > cfg.epochs - cfg.validate_last


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
    lookahead = Lookahead(model, cfg.lookahead_every, total) if cfg.lookahead_every else None
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
            if lookahead is not None:
                lookahead.load_state_dict(state["lookahead"])
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
                group["lr"] = lr_at(step, total, cfg) * group.get("lr_scale", 1.0)
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
            if lookahead is not None:
                lookahead.after(step)
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
        val_loss = val_accuracy = None  # not validated this epoch: an empty cell in the history
        if validates(epoch, cfg):
            share_buffers(world, scored)
            val_loss, val_accuracy = evaluate(scored, val_data, norm, cfg, world)
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": correct.item() / seen,
               "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr_at(epoch * steps - 1, total, cfg),
               "seconds": seconds, "images_per_second": seen / seconds}
        result.history.append(row)
        if val_loss is not None and (not result.best_state or val_loss < result.best["val_loss"]):
            result.best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
            result.best_epoch = epoch
        validation = "" if val_loss is None else f" | val loss {val_loss:.4f} acc {100 * val_accuracy:.2f}%"
        log.info("epoch %d/%d: train loss %.4f acc %.2f%%%s | %.1fs, %.0f img/s", epoch, cfg.epochs, train_loss,
                 100 * row["train_accuracy"], validation, seconds, row["images_per_second"])
        on_epoch(row)
        if checkpoint is not None and world.is_main:
            save_torch(checkpoint, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "lookahead": lookahead.state_dict() if lookahead is not None else None,
                "generator": gen.get_state(), "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "best_state": result.best_state, "best_epoch": result.best_epoch, "history": result.history,
            })
    return result


def summarize(result: FitResult, cfg: Train) -> dict[str, float]:
    """metrics/train/<member>.json: the best epoch's validation scores, and how long training took."""
    return {"best_epoch": result.best_epoch, "val_loss": round(result.best["val_loss"], 6),
            "val_accuracy": round(result.best["val_accuracy"], 6), "epochs": cfg.epochs,
            "train_seconds": round(sum(row["seconds"] for row in result.history), 1),
            "images_per_second": round(float(np.median([r["images_per_second"] for r in result.history])))}


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Per-epoch CSV for `dvc plots`."""
    write_csv(path, list(history[0]), ([round(v, 6) if isinstance(v, float) else "" if v is None else v
                                        for v in row.values()] for row in history))
