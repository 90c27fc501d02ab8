"""The `fmnist` command: the tools that are not pipeline stages. `fmnist <verb> --help` says what each does."""
from __future__ import annotations

import argparse
import importlib

from fmnist.runner import run_main

# verb -> its module in this package; each has a docstring, add_arguments(parser) and run(args).
VERBS = ("predict", "report", "share", "profile", "lineage", "access", "cached")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fmnist", description="Tools beside the pipeline (`dvc repro` runs the "
                                  "pipeline itself).")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    for verb in VERBS:
        module = importlib.import_module(f"fmnist.cli.{verb}")
        doc = module.__doc__.strip()
        sub = verbs.add_parser(verb, help=doc.splitlines()[0], description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return top


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `fmnist` console script (pyproject.toml)."""
    args = parser().parse_args(argv)
    run_main(lambda: args.run(args))
