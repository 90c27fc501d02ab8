"""The architecture's rules, checked on the source: stages/ holds only dvc.yaml's stages, each a thin entry point
that imports no other stage and no tool; the library never imports the stages or the tools; the served model's code
is fmnist.model and fmnist.serving alone; no import cycles; and dvc.yaml lists, for every stage, exactly the code
and the params that can change what it writes."""
import ast
import re
import sys
from importlib import metadata

import pytest
import yaml
from packaging.utils import canonicalize_name

from fmnist.params import Params
from fmnist.tracking import registry
from tests.conftest import ROOT
from tests.imports import code_deps, find_cycle, graph, imports, modules, reachable

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_MODULES = sorted(name for name in modules() if name.startswith("stages."))
LIBRARY = sorted(name for name in modules() if name.startswith("fmnist") and not name.startswith("fmnist.cli"))
TOOLS = sorted(name for name in modules() if name.startswith("fmnist.cli"))


def stage_definitions() -> dict[str, dict]:
    """dvc.yaml's stages by name (a foreach stage once, by its own name), each with its module."""
    found = {}
    for name, stage in DVC_YAML.items():
        stage = stage.get("do", stage)
        (module,) = re.findall(r"python -m (stages\.\w+)", stage["cmd"])
        found[name] = {**stage, "module": module}
    return found


def test_the_import_graph_sees_the_whole_project_and_has_no_cycle():
    project = graph()
    assert {"stages.train", "fmnist.model.nets", "fmnist.tracking.run", "fmnist.cli.main"} <= set(project)
    assert "fmnist.model.nets" in imports("fmnist.model.ensemble")
    cycle = find_cycle(project)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_stages_holds_exactly_the_dvc_yaml_stages_one_module_each():
    definitions = stage_definitions()
    assert sorted(definitions) == ["baselines", "download", "ensemble", "evaluate", "preprocess", "train", "verify",
                                   "visualize", "visualize_data"]
    assert {f"stages.{name}" for name in definitions} == {d["module"] for d in definitions.values()}
    assert STAGE_MODULES == sorted(f"stages.{name}" for name in definitions)


def test_no_stage_imports_another_stage_or_a_tool():
    for stage in STAGE_MODULES:
        bad = [m for m in imports(stage) if m.startswith(("stages", "fmnist.cli"))]
        assert not bad, f"{stage} imports {bad}: stages share code through the library (fmnist), never directly"


def test_the_library_never_imports_the_stages_or_the_tools():
    for module in LIBRARY:
        bad = [m for m in imports(module) if m.startswith(("stages", "fmnist.cli"))]
        assert not bad, f"{module} imports {bad}"
    for tool in TOOLS:
        assert not [m for m in imports(tool) if m.startswith("stages")], tool


def test_package_inits_hold_only_a_docstring():
    # Executed by every import of their package, yet no stage lists them as a dep: they must not hold code.
    for name, path in modules().items():
        if path.name == "__init__.py":
            body = ast.parse(path.read_text()).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), \
                f"{path.relative_to(ROOT)}: a package's __init__ holds only its docstring"


def served_modules() -> set[str]:
    return reachable("fmnist.serving.pyfunc")


def test_the_served_model_imports_only_the_model_code():
    served = served_modules()
    assert served >= {"fmnist.serving.pyfunc", "fmnist.serving.inputs", "fmnist.model.ensemble", "fmnist.model.nets"}
    assert {m.split(".")[1] for m in served} == set(registry.SERVED_PACKAGES) == {"model", "serving"}
    for module in (m for m in modules() if m.startswith("fmnist.model.")):
        assert all(m.startswith("fmnist.model") for m in imports(module)), f"{module} imports {imports(module)}"


def test_the_registered_model_carries_only_the_served_code():
    with registry.served_code() as package:
        carried = sorted(p.relative_to(package.parent).as_posix() for p in package.rglob("*.py"))
    expected = sorted(modules()[m].relative_to(ROOT).as_posix() for m in modules()
                      if m == "fmnist" or m.startswith(("fmnist.model", "fmnist.serving")))
    assert carried == expected


def third_party_imports(module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fmnist", "__future__")}


def test_the_served_model_requirements_cover_what_its_code_imports():
    distributions = metadata.packages_distributions()
    pinned = {canonicalize_name(name) for name in registry.SERVING_PACKAGES}
    used = set()
    for name in {name for module in served_modules() for name in third_party_imports(module)}:
        providers = {canonicalize_name(d) for d in distributions[name]} & pinned  # mlflow: several provide it
        assert providers, f"the served code imports {name}, which no package in SERVING_PACKAGES provides"
        used |= providers
    assert used == pinned, f"SERVING_PACKAGES pins {sorted(pinned - used)}, which the served code never imports"


def test_every_stage_depends_on_exactly_the_code_that_shapes_its_outputs():
    for name, stage in stage_definitions().items():
        listed = {dep for dep in stage["deps"] if isinstance(dep, str) and dep.endswith(".py")}
        expected = set(code_deps(stage["module"]))
        assert listed == expected, (f"dvc.yaml stage {name}: add {sorted(expected - listed)}, "
                                    f"remove {sorted(listed - expected)} (tests/imports.py derives the list)")


def test_the_code_deps_leave_out_validation_errors_logging_and_tracking():
    deps = {dep for stage in stage_definitions().values() for dep in code_deps(stage["module"])}
    assert "fmnist/model/nets.py" in deps and "fmnist/files.py" in deps
    assert not [d for d in deps if d in ("fmnist/params.py", "fmnist/errors.py", "fmnist/runner.py")
                or d.startswith("fmnist/tracking/") or d.endswith("__init__.py")]


def _resolve(chain: list[str]) -> str:
    """A read of params.<chain> as the dotted key it depends on: down the schema's fields; a dict's entry (a
    member) by a key known only at run time is '<dict>.*'."""
    model, key = Params, []
    for part in chain:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if key and getattr(model, "__origin__", None) is dict:
                key.append("*")
            break
        key.append(part)
        model = field.annotation
    return ".".join(key)


def params_read(module: str) -> set[str]:
    """Every dotted params key a module reads as `params.<...>` (the longest attribute chain of each read)."""
    tree = ast.parse(modules()[module].read_text())
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = []
            while isinstance(node, ast.Attribute):
                chain.insert(0, node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "params":
                keys.add(_resolve(chain))
    return keys


def covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in (d.replace("${key}", "*") for d in declared))


def test_the_resolver_reads_params_the_way_a_stage_does():
    assert _resolve(["dataset", "files", "train_images", "name"]) == "dataset.files.train_images.name"
    assert _resolve(["members", "get"]) == "members.*"
    assert _resolve(["train", "threads"]) == "train.threads"
    assert covered("members.*", ["members.${key}"]) and not covered("members", ["members.${key}"])
    assert covered("dataset.files.train_images.name", ["dataset.files"]) and not covered("dataset", ["dataset.files"])


@pytest.mark.parametrize("stage", sorted(stage_definitions()))
def test_every_params_key_a_stage_reads_is_one_dvc_yaml_lists_for_it(stage):
    definition = stage_definitions()[stage]
    read = params_read(definition["module"])
    assert read, f"{definition['module']} reads no params: the check itself is broken"
    unlisted = sorted(key for key in read if not covered(key, definition["params"]))
    assert not unlisted, f"{definition['module']} reads {unlisted}, which dvc.yaml does not list for stage {stage}"


def test_every_tool_is_a_documented_verb_of_the_one_command():
    from fmnist.cli import main

    assert 'fmnist = "fmnist.cli.main:main"' in (ROOT / "pyproject.toml").read_text()
    verbs = {m.removeprefix("fmnist.cli.") for m in TOOLS} - {"fmnist.cli", "main", "__main__"}
    assert verbs == set(main.VERBS)
    parser = main.parser()
    for verb in main.VERBS:
        help_text = parser._subparsers._group_actions[0].choices[verb].format_help()
        assert f"usage: fmnist {verb}" in help_text and len(help_text.splitlines()) > 4, verb
