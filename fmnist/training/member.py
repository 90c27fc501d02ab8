"""One ensemble member's training, end to end apart from logging: its data on the device, its net built from its
seed, the fingerprint its resume checkpoint must match, and its model file."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist.device import set_threads
from fmnist.digest import digest
from fmnist.errors import StageError
from fmnist.files import save_torch
from fmnist.model import nets
from fmnist.model.members import member_state
from fmnist.params import Member, Train
from fmnist.training.distributed import World, threads_per_process
from fmnist.training.loop import FitResult, Images, load_member_data

ARRAYS = ("images", "labels", "is_val", "mean", "std")
WHITENING_IMAGES = 5000  # a patch covariance from 3.4 million patches: stable to well within the eps


@dataclass
class MemberSetup:
    """What fit() needs for one member in this process."""
    model: nn.Module
    fit_data: Images
    val_data: Images
    norm: nets.Normalizer
    device: torch.device
    threads: int


def build_net(cfg: Train, n_classes: int, image_shape: tuple[int, int], device: torch.device) -> nn.Module:
    """The untrained net on `device`, initialised as the recipe says, from the current torch seed."""
    model = nets.build(cfg.net, n_classes, image_shape)
    if cfg.dirac_init:
        nets.dirac_init(model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def prepare(data_dir: Path, member: Member, cfg: Train, n_classes: int, image_shape: tuple[int, int],
            device: torch.device, world: World) -> MemberSetup:
    """This process's share of the setup: its device and threads, the member's split, and its net, initialised
    from the member's seed (the same on every process)."""
    if cfg.batch_size % world.size:
        raise StageError(f"train.batch_size {cfg.batch_size} does not split evenly over {world.size} processes "
                         "(train.processes, or torchrun's world size); choose a multiple of it")
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    threads = set_threads(threads_per_process(cfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.manual_seed(member.seed)
    fit_data, val_data, mean, std = load_member_data(data_dir, member.split, device)
    norm = nets.Normalizer(torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device), cfg.channels_last)
    model = build_net(cfg, n_classes, image_shape, device)
    nets.fit_whitening(model, norm(fit_data.x[:WHITENING_IMAGES]))
    return MemberSetup(model, fit_data, val_data, norm, device, threads)


def fingerprint(data_dir: Path, name: str, member: Member, cfg: Train, classes: list[str],
                image_shape: list[int], world: World) -> str:
    """What a resume checkpoint must have been written for: the same recipe, member, classes, process count, data
    (the bytes of preprocess's arrays) and code."""
    data = {}
    for array in ARRAYS:
        with open(data_dir / f"{array}.npy", "rb") as handle:
            data[array] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digest({"train": cfg.model_dump(), "member": {"name": name, **member.model_dump()}, "classes": classes,
                   "image_shape": image_shape, "world_size": world.size, "data": data, "code": code_digest()})


def code_digest(package: Path = Path(__file__).resolve().parents[1]) -> str:
    """SHA-256 of the fmnist package's sources and the train stage's: a run killed before an edit of the net or
    the loop must not resume into the run that follows it, which DVC would record as the edited code's output.
    Any edit of the package counts (a log line too): a resume is a shortcut, and starting over is always right."""
    sources = sorted(package.rglob("*.py")) + sorted((package.parent / "stages").glob("train.py"))
    hasher = hashlib.sha256()
    for source in sources:
        hasher.update(f"{source.relative_to(package.parent).as_posix()}\0".encode())
        hasher.update(source.read_bytes())
    return hasher.hexdigest()


def save_member(path: Path, model: nn.Module, norm: nets.Normalizer, cfg: Train, classes: list[str],
                image_shape: list[int], name: str, member: Member, result: FitResult) -> None:
    """The member file (fmnist.model.members): the best epoch's weights and what rebuilds and feeds the net."""
    save_torch(path, member_state(model, norm, cfg.net, classes, image_shape, member=name, seed=member.seed,
                                  split=member.split, best_epoch=result.best_epoch,
                                  val_loss=result.best["val_loss"], val_accuracy=result.best["val_accuracy"]))
