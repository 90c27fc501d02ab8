"""What BatchNorm and ReLU cost in each memory layout on this host: forward and backward milliseconds for the fast
nets' activation shapes (bf16, as under autocast), channels-last against NCHW, on one thread at the batch one
of the pipeline's two DDP processes sees and on every thread at the whole batch (bench.py's layout).

    python bench/batchnorm.py                      # batch 256 (128 per process of 2)
    python bench/batchnorm.py --batch-size 512
"""
from __future__ import annotations

import argparse
import time

import torch

from fmnist.device import set_threads

SHAPES = ((24, 28, 28), (48, 14, 14), (96, 7, 7))  # the fast nets' conv-BN-ReLU outputs, per image


def milliseconds(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def layer_costs(batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"\n{threads} thread(s)\nshape (batch x C x H x W)  layout         BN fwd  BN bwd  ReLU fwd  ReLU bwd  (ms, bf16)")
    for shape in SHAPES:
        for layout, memory_format in (("channels-last", torch.channels_last), ("NCHW", torch.contiguous_format)):
            x, grad = (torch.randn(batch_size, *shape).to(torch.bfloat16).contiguous(memory_format=memory_format)
                       for _ in range(2))
            c = shape[0]
            weight, bias, running_mean, running_var = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
            _, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                               0.1, 1e-5)
            relu = torch.relu(x)
            costs = (
                milliseconds(lambda: torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                                      True, 0.1, 1e-5)),
                milliseconds(lambda: torch.ops.aten.native_batch_norm_backward(
                    grad, x, weight, running_mean, running_var, mean, invstd, True, 1e-5, [True, True, True])),
                milliseconds(lambda: torch.relu(x)),
                milliseconds(lambda: torch.ops.aten.threshold_backward(grad, relu, 0)),
            )
            print(f"{batch_size} x {' x '.join(map(str, shape)):15s}  {layout:13s}  "
                  + "  ".join(f"{cost:6.2f}" for cost in costs[:2]) + "  "
                  + "  ".join(f"{cost:8.2f}" for cost in costs[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    cores = set_threads(0)
    print(f"# CPU, {cores} cores; torch {torch.__version__}")
    layer_costs(args.batch_size // cores, 1)
    if cores > 1:
        layer_costs(args.batch_size, cores)


if __name__ == "__main__":
    main()
