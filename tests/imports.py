"""The project's import graph, read from the source (nothing is imported): which modules of fmnist/ and stages/
each module imports, anywhere in its file. tests/unit/test_structure.py checks the architecture's rules on it and
derives each dvc.yaml stage's code deps from it."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fmnist", "stages")
# Code that cannot change what a stage writes: the params schema (validation only), errors, how a stage runs
# (logging, exit codes), MLflow tracking and what log lines redact. Editing it reruns no stage, so it is not a
# dvc.yaml dep.
NOT_OUTPUT_SHAPING = ("fmnist.params", "fmnist.errors", "fmnist.runner", "fmnist.tracking", "fmnist.redaction")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """{dotted name: file} of every module and package of the project's own code."""
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The project module an imported dotted name is, or lives in (an attribute of a module)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(name: str) -> frozenset[str]:
    """The project modules `name` imports (package __init__ files executed on the way are not listed)."""
    found = set()
    for node in ast.walk(ast.parse(modules()[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES and (module := _resolve(target)) and module != name:
                found.add(module)
    return frozenset(found)


def graph() -> dict[str, frozenset[str]]:
    return {name: imports(name) for name in modules()}


def reachable(start: str, follow=lambda name: True) -> set[str]:
    """`start` and every module its imports reach, entering only modules for which `follow` holds."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen and follow(name):
            seen.add(name)
            todo.extend(imports(name))
    return seen


def shapes_outputs(name: str) -> bool:
    """Whether editing this module can change what a stage writes (package __init__ files hold only a docstring,
    which tests/unit/test_structure.py checks)."""
    return not is_package(name) and not any(name == m or name.startswith(f"{m}.") for m in NOT_OUTPUT_SHAPING)


def code_deps(stage_module: str) -> list[str]:
    """The files a stage's dvc.yaml entry lists as code deps: its module and every output-shaping module its
    imports reach, transitively."""
    return sorted(modules()[name].relative_to(ROOT).as_posix()
                  for name in reachable(stage_module, shapes_outputs) if shapes_outputs(name) or name == stage_module)


def find_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for other in sorted(graph[node]):
            if cycle := visit(other):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None
