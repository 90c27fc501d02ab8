"""Apply a params override file (a profile) to params.yaml, e.g. the pull-request CI profile.

    fmnist profile profiles/ci.yaml            # rewrites params.yaml in place

Mappings merge key by key; a section named in the profile's `replace:` list is replaced whole (the members of a
smaller ensemble, say). The result is validated like params.yaml itself before anything is written, and written
round-trip: every comment and the layout of params.yaml stay where they were, only the profile's values change.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from fmnist.files import atomic_path
from fmnist.params import PARAMS_FILE, ParamsError, parse_params


def lay_over(document: dict[str, Any], override: dict[str, Any], replace: frozenset[str] = frozenset(),
             prefix: str = "") -> None:
    """`override` laid over `document` in place: mappings merge key by key, and dotted keys in `replace` are taken
    from the override as they are. In place, so that a round-trip (ruamel) document keeps the comments and layout
    of every key the override leaves alone."""
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(document.get(key), dict) and dotted not in replace:
            lay_over(document[key], value, replace, f"{dotted}.")
        else:
            document[key] = value


def merge(base: dict[str, Any], override: dict[str, Any], replace: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`base` with `override` laid over it (`lay_over`), as a new mapping; `base` stays as it is."""
    merged = copy.deepcopy(base)
    lay_over(merged, override, replace)
    return merged


def apply_profile(params: dict[str, Any], profile: dict[str, Any], source: str) -> dict[str, Any]:
    """The merged params, validated; a profile naming a key params.yaml does not know is an error."""
    profile = dict(profile)
    replace = profile.pop("replace", [])
    if not isinstance(replace, list) or not all(isinstance(k, str) for k in replace):
        raise ParamsError(f"{source}: `replace` must be a list of dotted keys, got {replace!r}")
    merged = merge(params, profile, frozenset(replace))
    parse_params(merged, f"{PARAMS_FILE} with {source}")
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", type=Path, help="the override file, e.g. profiles/ci.yaml")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="the params file to rewrite")


def run(args: argparse.Namespace) -> None:
    # Each file is read twice on purpose: validation must see the values every stage will read (PyYAML, YAML 1.1:
    # `010` is 8, `yes` is true), and ruamel's round-trip reads YAML 1.2 (`010` is 10, `yes` a string).
    profile = read_yaml(args.profile)
    apply_profile(read_yaml(args.params), profile, str(args.profile))  # validates; raises before any write
    round_trip = YAML()  # ruamel's round-trip mode: comments, key order, flow style and quoting survive
    round_trip.width = 4096  # never re-wrap a line the profile did not change
    round_trip.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own indentation of lists
    round_trip.preserve_quotes = True
    document = round_trip.load(args.params.read_text())
    override = round_trip.load(args.profile.read_text())  # again round-trip: a replaced section keeps its style
    lay_over(document, {k: v for k, v in override.items() if k != "replace"}, frozenset(profile.get("replace", [])))
    with atomic_path(args.params) as tmp, tmp.open("w") as out:
        round_trip.dump(document, out)
    print(f"{args.params}: applied {args.profile}")
