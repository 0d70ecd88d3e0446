"""The house rules, checked: imports flow one way through the layers, the graph contract is written once, and
modules and functions stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from akd import contract

SOURCE = Path(__file__).resolve().parents[1] / "src" / "akd"
# lower layers first; a module may import its own package and any package of a lower layer, nothing else
LAYERS = [
    {"akd.util"},
    {"akd"},
    {"akd.contract", "akd.data", "akd.perturbation"},
    {"akd.models"},
    {"akd.train"},
    {"akd.runtime"},
    {"akd.deploy"},
    {"akd.evaluation", "akd.profile"},
    {"akd.api"},
    {"akd.cli"},
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every akd import in the file, module level or inside functions (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "akd":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "akd"]
    return found


MODULES = sorted(SOURCE.rglob("*.py"))


def test_every_package_has_a_layer():
    assert {_package(_module_name(path)) for path in MODULES} <= set(RANK)


def test_no_module_imports_a_later_stage():
    back_edges = []
    for path in MODULES:
        source = _package(_module_name(path))
        for line, target in _imports(path):
            target_package = _package(target)
            if target_package != source and RANK[target_package] >= RANK[source]:
                back_edges.append(f"{path.relative_to(SOURCE)}:{line} imports {target}")
    assert not back_edges, "\n".join(back_edges)


def test_no_import_cycle_between_modules():
    """Module-level imports (those that run at import time) form no cycle."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        tree = ast.parse(path.read_text())
        names = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("akd"):
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[_module_name(path)] = {name for name in names if name in {_module_name(p) for p in MODULES}}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, ()):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail + [module, target]))
            if target not in state:
                visit(target, trail + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_the_contract_names_are_written_only_in_the_contract():
    """Output names and metadata keys appear as string literals only in akd/contract.py."""
    watched = set(contract.OUTPUTS) | {value for name, value in vars(contract).items() if name.endswith("_KEY")}
    stray = []
    for path in MODULES:
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in watched:
                stray.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.value!r}")
    assert not stray, "\n".join(stray)


def test_modules_and_functions_stay_small():
    too_long = []
    for path in MODULES:
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(SOURCE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "\n".join(too_long)
