"""The package's shape: no import cycles, and every stage in dvc.yaml depends on the code that shapes its outputs."""
import ast
import re

import yaml

from tests.conftest import ROOT

PACKAGE = ROOT / "stages"
# Logging to MLflow does not change what a stage writes, so a change there reruns nothing (dvc.yaml's header).
NOT_OUTPUT_SHAPING = {"tracking"}


def imports(module: str) -> set[str]:
    """The stages modules `module` imports anywhere in its file, inside functions included."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stages.")}
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: imports(path.stem) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
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


def test_the_stages_package_has_no_import_cycle():
    graph = import_graph()
    assert {"tracking", "lineage", "ensemble", "ensemble_pyfunc"} <= set(graph)  # the graph sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def output_shaping_modules(module: str, graph: dict[str, set[str]]) -> set[str]:
    """`module` and every stages module it reaches by imports, not following the logging modules."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen and name not in NOT_OUTPUT_SHAPING:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_every_stage_depends_on_exactly_the_modules_that_shape_its_outputs():
    graph = import_graph()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages: one definition for every member
        (module,) = re.findall(r"python -m stages\.(\w+)", stage["cmd"])
        expected = {f"stages/{m}.py" for m in output_shaping_modules(module, graph)}
        listed = {dep for dep in stage["deps"] if isinstance(dep, str) and dep.startswith("stages/")}
        assert listed == expected, (f"dvc.yaml stage {name}: add {sorted(expected - listed)}, "
                                    f"remove {sorted(listed - expected)}")
        checked += 1
    assert checked == len(stages) >= 8
