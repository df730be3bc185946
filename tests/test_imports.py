"""The package's modules import each other in one direction: no import cycles.

Every `import`/`from ... import` of a `tltk` module counts, those inside functions too
(a function-level import is how a cycle hides). `graphlib` raises on a cycle and names
it. Also: each named set of choices is declared once, as a `Literal` in tltk.config, and
the registries that implement one cover exactly its names.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from tltk.config import SCHEDULE_ARGS, Optimizer, Preprocess, Schedule, choices

PACKAGE = Path(__file__).resolve().parents[1] / "tltk"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(node: ast.AST, package: str, modules: dict) -> set[str]:
    """The tltk modules one import statement imports (a submodule when it names one)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
    else:
        return set()
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target.startswith("tltk"):
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules, graph = module_names(), {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            deps |= imported(node, package, modules)
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles_between_the_package_modules():
    graph = import_graph()
    assert {"tltk.engine.stage", "tltk.engine.context", "tltk.faults"} <= set(graph)
    assert "tltk.engine.context" in graph["tltk.engine.stage"]  # the walk sees imports
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_the_evaluation_layer_does_not_import_the_engine():
    for name, deps in import_graph().items():
        if name.startswith("tltk.evaluation"):
            assert not any(d.startswith("tltk.engine") for d in deps), (name, deps)


def test_the_cycle_check_catches_a_cycle():
    with pytest.raises(CycleError):
        TopologicalSorter({"a": {"b"}, "b": {"a"}}).prepare()


def test_each_choice_is_declared_once_and_its_registry_matches():
    from tltk.models.preprocessing import MODES
    from tltk.optim.discriminative import OPTIMIZERS

    assert set(OPTIMIZERS.names()) == set(choices(Optimizer))
    assert set(SCHEDULE_ARGS) == set(choices(Schedule))
    assert MODES == choices(Preprocess)


def test_cli_choices_come_from_the_config():
    from tltk.cli import main
    from tltk.config import Precision, Resize

    options = {p.name: p for p in main.commands["train"].params}
    assert tuple(options["resize"].type.choices) == choices(Resize)
    assert tuple(options["precision"].type.choices) == choices(Precision)
