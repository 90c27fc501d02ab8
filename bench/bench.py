"""Speed benchmark of the model zoo: prints the host's matmul roofline, then per net training and inference
images/s, achieved GFLOP/s, their fraction of the roofline and seconds per epoch; with --accuracy also the
training time to reach 92/93/94% test accuracy, over --seeds members (mean and std).

    python bench/bench.py                        # roofline + throughput of every net on the default device
    python bench/bench.py --nets fast --accuracy --seeds 5  # + time to 94%: 5 members (minutes each on a CPU)
    python bench/bench.py --nets fast_pool --accuracy --seeds 5 --epochs 18 --fit-on all  # the speed-run protocol
    python bench/bench.py --nets fast --layouts 1x2 2x1  # DDP training steps: processes x threads each
    python bench/bench.py --device cuda --profile profiles/gpu-fast.yaml --nets fast_whiten --accuracy --seeds 3
    bench/gpu_check.sh                           # what the GPU figures of docs/training.md came from

Test accuracy is measured after every epoch here for the time-to-accuracy figures only: the pipeline itself
selects checkpoints on validation data and never looks at the test set before evaluation.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fmnist.cli.profile import apply_profile, read_yaml
from fmnist.device import pick_device, set_threads
from fmnist.model import nets
from fmnist.model.names import NETS, check_net
from fmnist.model.nets import Normalizer, for_inference
from fmnist.model.precision import autocast
from fmnist.params import PARAMS_FILE, Params, parse_params
from fmnist.training.loop import Images, fit, load_member_data
from fmnist.training.member import build_net

TARGETS = (0.92, 0.93, 0.94)


def matmul_gflops(threads: int, device: torch.device, precision: str, n: int = 4096, seconds: float = 3.0) -> float:
    """GFLOP/s of an n x n matmul in `precision` on `threads` threads (or the GPU): the practical ceiling a
    training step's convolutions (im2col/Winograd matmuls underneath) can approach."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        a @ b
        sync()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        sync()
        return 2 * n ** 3 * count / (time.perf_counter() - started) / 1e9
    finally:
        torch.set_num_threads(previous)


def forward_flops(model: torch.nn.Module, shape: tuple[int, int]) -> int:
    """FLOPs of one image's forward pass (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 1, *shape))
    return counter.get_total_flops()


def step(model, optimizer, x, y, device, precision, train: bool = True) -> None:
    """One training step (forward, backward, SGD update), or one inference pass when not `train`."""
    with torch.set_grad_enabled(train), autocast(device, precision):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    if train:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def throughput(model, device, precision, channels_last, batch_size, train: bool, seconds: float = 5.0) -> float:
    """Images per second of training steps (forward, backward, SGD update) or of inference."""
    x = torch.randn(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train(train)
    for _ in range(3):  # warm-up: allocator, oneDNN/cuDNN kernel choice, torch.compile
        step(model, optimizer, x, y, device, precision, train)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(model, optimizer, x, y, device, precision, train)
        images += batch_size
    sync()
    return images / (time.perf_counter() - started)


def _layout_worker(rank: int, size: int, threads: int, store: str, name: str, precision: str, batch_size: int,
                   steps: int, results) -> None:
    """One DDP process: `steps` training steps on its 1/size share of each global batch, as train.fit does."""
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        torch.manual_seed(0)
        model = nets.build(name, 10, (28, 28)).to(memory_format=torch.channels_last)
        ddp = torch.nn.parallel.DistributedDataParallel(model) if size > 1 else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(batch_size // size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size // size,))
        device = torch.device("cpu")
        for i in range(steps + 5):  # 5 warm-up steps
            if i == 5:
                dist.barrier()
                started = time.perf_counter()
            step(ddp, optimizer, x, y, device, precision)
        dist.barrier()
        if rank == 0:
            results.put(steps * batch_size / (time.perf_counter() - started))
    finally:
        dist.destroy_process_group()


def layout_throughput(name: str, processes: int, threads: int, precision: str, batch_size: int,
                      steps: int) -> float:
    """Training images/s of `processes` DDP processes (gloo, this machine) with `threads` threads each."""
    results = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as scratch:  # a file rendezvous: no port to find or to listen on
        mp.spawn(_layout_worker, args=(processes, threads, f"{scratch}/store", name, precision, batch_size, steps,
                                       results), nprocs=processes, join=True)
    return results.get()


@torch.no_grad()
def test_accuracy(model, test: Images, norm: Normalizer, cfg) -> tuple[float, float]:
    """Test accuracy of the image alone and with flip TTA (the mean of the image's and its mirror image's
    probabilities, as the ensemble scores its members)."""
    model = for_inference(model)
    plain = flipped = 0
    for start in range(0, len(test), cfg.eval_batch_size):
        x, y = test.x[start:start + cfg.eval_batch_size], test.y[start:start + cfg.eval_batch_size]
        with autocast(x.device, cfg.precision):
            p = model(norm(x)).float().softmax(1)
            q = model(norm(x.flip(-1))).float().softmax(1)
        plain += (p.argmax(1) == y).sum().item()
        flipped += ((p + q).argmax(1) == y).sum().item()
    return plain / len(test), flipped / len(test)


VIEWS = ("plain", "flip TTA")


def time_to_accuracy(name, params, device, data_dir: Path, epochs: int, seed: int,
                     fit_on: str = "split") -> dict[str, dict]:
    """Train `name` with the pipeline's recipe as a member of seed `seed` on split `seed` (mod the splits); per
    view (plain, flip TTA), seconds of training until test accuracy first reaches each target (None if never).
    `fit_on` "all": on every training image instead, as speed runs train (airbench on CIFAR-10's 50,000); the
    split's validation images are then among them, and the checkpoint fit keeps by them is not used here."""
    cfg = params.train.model_copy(update={"net": name, "epochs": epochs})
    split = seed % params.preprocess.n_splits
    fit_data, val_data, mean, std = load_member_data(data_dir / "train", split, device)
    if fit_on == "all":
        fit_data = Images(torch.cat([fit_data.x, val_data.x]), torch.cat([fit_data.y, val_data.y]))
    test = Images(torch.from_numpy(np.load(data_dir / "test/images.npy")).unsqueeze(1).to(device),
                  torch.from_numpy(np.load(data_dir / "test/labels.npy").astype(np.int64)).to(device))
    norm = Normalizer(torch.from_numpy(mean).to(device), torch.from_numpy(std).to(device), cfg.channels_last)
    torch.manual_seed(seed)
    model = build_net(cfg, len(params.dataset.classes), tuple(params.dataset.image_shape), device)
    reached: dict[str, dict] = {view: dict.fromkeys(TARGETS) for view in VIEWS}
    elapsed = 0.0

    def on_epoch(row):
        nonlocal elapsed
        elapsed += row["seconds"]
        accuracies = dict(zip(VIEWS, test_accuracy(model, test, norm, cfg), strict=True))
        print(f"  {name} seed {seed} epoch {row['epoch']}: test accuracy {100 * accuracies['plain']:.2f}% "
              f"({100 * accuracies['flip TTA']:.2f}% with flip TTA) after {elapsed:.0f} s of training", flush=True)
        for view, accuracy in accuracies.items():
            for target in TARGETS:
                if reached[view][target] is None and accuracy >= target:
                    reached[view][target] = elapsed

    fit(model, fit_data, val_data, norm, cfg, seed=seed, on_epoch=on_epoch)
    return reached


def report_time_to_accuracy(name: str, runs: list[dict[str, dict]]) -> None:
    """One line per view and target: seconds of training to reach it, mean and std over the members that reached
    it, and each seed's."""
    for view in VIEWS:
        for target in TARGETS:
            seconds = [run[view][target] for run in runs if run[view][target] is not None]
            spread = f"{np.mean(seconds):.0f} s +/- {np.std(seconds):.0f} ({np.mean(seconds) / 60:.2f} min)" \
                if seconds else "-"
            print(f"{name}: {int(100 * target)}% test accuracy ({view}) reached by {len(seconds)}/{len(runs)} "
                  f"members; training time {spread}; per seed: "
                  + ", ".join("never" if run[view][target] is None else f"{run[view][target]:.0f}" for run in runs),
                  flush=True)


def compare_layouts(args: argparse.Namespace) -> None:
    """The table of process layouts: the same global batch, split over P processes of T threads."""
    print(f"# {platform.processor() or 'CPU'}, {len(os.sched_getaffinity(0))} cores; torch {torch.__version__}; "
          f"{args.precision}, channels_last, global batch {args.batch_size}, gloo DDP; {args.steps} steps each")
    print(f"{'net':8} {'layout':>8} {'train img/s':>12} {'GFLOP/s':>8} {'s/epoch':>8}")
    for name in args.nets:
        flops = forward_flops(nets.build(name, 10, (28, 28)), (28, 28))
        for layout in args.layouts:
            processes, threads = (int(v) for v in layout.lower().split("x"))
            ips = layout_throughput(name, processes, threads, args.precision, args.batch_size, args.steps)
            print(f"{name:8} {layout:>8} {ips:>12,.0f} {3 * flops * ips / 1e9:>8.1f} {48000 / ips:>8.1f}", flush=True)


def setting(text: str) -> dict:
    """'train.batch_size=512' -> {'train': {'batch_size': 512}} (the value read as YAML), as `dvc exp run -S`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted key, got {text!r}")
    override: dict = {}
    *parents, leaf = key.split(".")
    level = override
    for part in parents:
        level = level.setdefault(part, {})
    level[leaf] = yaml.safe_load(value)
    return override


def epoch_images(data_dir: Path, params: Params, fit_on: str = "split") -> int:
    """Training images an epoch: split 0's of the data when it is there (the data, not params, decides what
    --accuracy trains on), else what params.yaml's split would leave; with `fit_on` "all", every one."""
    masks = data_dir / "train/is_val.npy"
    if masks.exists():
        is_val = np.load(masks)  # (splits, training images)
        return is_val.shape[1] if fit_on == "all" else int((~is_val[0]).sum())
    if fit_on == "all":
        return params.dataset.train_count
    return round(params.dataset.train_count * (1 - params.preprocess.val_fraction))


def net_name(text: str) -> str:
    """A --nets value, checked as train.net is."""
    try:
        return check_net(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def bench_params(profiles: list[Path], settings: list[dict]) -> Params:
    """params.yaml with each profile, then each --set, laid over it in memory by `fmnist profile`'s rules (an
    unknown key is an error); params.yaml itself stays as it is."""
    raw = read_yaml(Path(PARAMS_FILE))
    for profile in profiles:
        raw = apply_profile(raw, read_yaml(profile), str(profile))
    for override in settings:
        raw = apply_profile(raw, override, "--set")
    return parse_params(raw, PARAMS_FILE)


def flag_settings(precision: str | None, batch_size: int | None) -> list[dict]:
    """--precision and --batch-size as params settings, so the time-to-accuracy members train with what the
    throughput rows measured (they once trained in train.precision whatever --precision said)."""
    train = {key: value for key, value in (("precision", precision), ("batch_size", batch_size)) if value is not None}
    return [{"train": train}] if train else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), type=net_name,
                        help=f"any of {', '.join(NETS)} (the default: all of them) or wrn-<depth>-<width>")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", choices=["bf16", "fp32"],
                        help="default: train.precision; --accuracy trains with it too")
    parser.add_argument("--batch-size", type=int, help="default: train.batch_size; --accuracy trains with it too")
    parser.add_argument("--compile", action="store_true", help="torch.compile the net first")
    parser.add_argument("--accuracy", action="store_true", help="also train each net and time 92/93/94%%")
    parser.add_argument("--epochs", type=int, default=None, help="for --accuracy; default train.epochs")
    parser.add_argument("--seeds", type=int, default=1, help="for --accuracy: members trained (seed and split i)")
    parser.add_argument("--fit-on", choices=("split", "all"), default="split",
                        help="for --accuracy: a member's split (the pipeline's 80%%) or all training images (the "
                             "speed-run protocol); also what an epoch counts")
    parser.add_argument("--data", type=Path, default=Path("data/processed"))
    parser.add_argument("--profile", type=Path, action="append", default=[],
                        help="a params override laid over params.yaml for this run only, e.g. profiles/gpu.yaml "
                             "(repeatable, applied in order); --accuracy trains with the result")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="one param for this run only, after the profiles, e.g. --set train.batch_size=512")
    parser.add_argument("--layouts", nargs="+", metavar="PxT",
                        help="only compare data-parallel layouts on the CPU: P processes x T threads, e.g. 1x2 2x1")
    parser.add_argument("--steps", type=int, default=60, help="for --layouts: timed training steps per layout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = bench_params(args.profile, args.settings + flag_settings(args.precision, args.batch_size))
    args.precision, args.batch_size = params.train.precision, params.train.batch_size
    if args.layouts:
        compare_layouts(args)
        return
    threads = set_threads(params.train.threads)
    device = pick_device(args.device)
    fit_images = epoch_images(args.data, params, args.fit_on)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {threads} threads"
    print(f"# {where}; torch {torch.__version__}; {args.precision}, channels_last, batch {args.batch_size}"
          f"{', compiled' if args.compile else ''}; epoch = {fit_images} images")
    one = matmul_gflops(1, device, args.precision) if device.type == "cpu" else None
    roofline = matmul_gflops(threads, device, args.precision)
    print(f"# roofline: {args.precision} 4096x4096 matmul {roofline:,.0f} GFLOP/s"
          + (f" on {threads} threads, {one:,.0f} on 1" if one is not None else ""))
    print(f"{'net':8} {'params':>9} {'MFLOP/img':>10} {'train img/s':>12} {'GFLOP/s':>8} {'roofline':>9} "
          f"{'s/epoch':>8} {'infer img/s':>12}")
    for name in args.nets:
        model = nets.build(name, 10, (28, 28))
        flops = forward_flops(model, (28, 28))
        model = model.to(device).to(memory_format=torch.channels_last)
        runnable = torch.compile(model) if args.compile else model
        train_ips = throughput(runnable, device, args.precision, True, args.batch_size, train=True)
        infer_ips = throughput(runnable, device, args.precision, True, 1024, train=False)
        # A training step costs about 3 forward passes (forward, input and weight gradients).
        gflops = 3 * flops * train_ips / 1e9
        print(f"{name:8} {nets.count_parameters(model):>9,} {flops / 1e6:>10.1f} {train_ips:>12,.0f} "
              f"{gflops:>8.1f} {gflops / roofline:>9.0%} {fit_images / train_ips:>8.1f} {infer_ips:>12,.0f}",
              flush=True)
    if args.accuracy:
        for name in args.nets:
            runs = [time_to_accuracy(name, params, device, args.data, args.epochs or params.train.epochs, seed,
                                     args.fit_on)
                    for seed in range(args.seeds)]
            report_time_to_accuracy(name, runs)


if __name__ == "__main__":
    main()
