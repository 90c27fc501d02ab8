"""Print the digest of every output a dvc.lock records (the pipeline runs' `dvc_outs_digest` tag).

    fmnist lineage                # for this checkout's dvc.lock
    fmnist lineage other/dvc.lock
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.tracking.lineage import LOCK_FILE, lock_outputs, outputs_digest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lock", type=Path, nargs="?", default=Path(LOCK_FILE), help="a dvc.lock (default: ./dvc.lock)")


def run(args: argparse.Namespace) -> None:
    print(outputs_digest(lock_outputs(args.lock)))
