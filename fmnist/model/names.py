"""The names `train.net` accepts, without importing torch: params validation runs in every stage, and most
stages never build a net."""
from __future__ import annotations

import re

NETS = ("cmasch", "fast", "fast_whiten", "fast_whiten2", "fast_pool", "wrn")
# Any Wide ResNet by its paper's name: wrn-<depth>-<width>, depth 6n+4 (wrn-28-10 is Zagoruyko & Komodakis's
# CIFAR model); plain "wrn" is WRN-16-4.
WRN_NAME = re.compile(r"wrn-(\d+)-(\d+)")
WRN_DEFAULT = (16, 4)


def wrn_shape(name: str) -> tuple[int, int] | None:
    """(depth, width) of a Wide ResNet name, None for the other nets; ValueError for a WRN name no net has."""
    if name == "wrn":
        return WRN_DEFAULT
    match = WRN_NAME.fullmatch(name)
    if match is None:
        return None
    depth, width = int(match[1]), int(match[2])
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"net {name!r}: a Wide ResNet's depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
    if not 1 <= width <= 32:
        raise ValueError(f"net {name!r}: a Wide ResNet's width must be 1 to 32, got {width}")
    return depth, width


def check_net(name: str) -> str:
    """`name` if a net of the zoo has it; ValueError listing the names otherwise."""
    if name in NETS or wrn_shape(name) is not None:
        return name
    raise ValueError(f"unknown net {name!r}; choose one of {', '.join(NETS)} or wrn-<depth>-<width> "
                     "(e.g. wrn-28-10)")
