"""Apply a params override file (a profile) to params.yaml, e.g. the pull-request CI profile.

    fmnist profile profiles/ci.yaml            # rewrites params.yaml in place

Mappings merge key by key; a section named in the profile's `replace:` list is replaced whole (the members of a
smaller ensemble, say). The result is validated like params.yaml itself before anything is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from fmnist.files import atomic_path
from fmnist.params import PARAMS_FILE, ParamsError, parse_params


def merge(base: dict[str, Any], override: dict[str, Any], replace: frozenset[str] = frozenset(),
          prefix: str = "") -> dict[str, Any]:
    """`base` with `override` laid over it; dotted keys in `replace` are taken from the override as they are."""
    merged = dict(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict) and dotted not in replace:
            merged[key] = merge(base[key], value, replace, f"{dotted}.")
        else:
            merged[key] = value
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
    merged = apply_profile(read_yaml(args.params), read_yaml(args.profile), str(args.profile))
    with atomic_path(args.params) as tmp:
        tmp.write_text(yaml.safe_dump(merged, sort_keys=False))
    print(f"{args.params}: applied {args.profile}")
