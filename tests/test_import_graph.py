"""The packages' import graph: no circle, and protoseg never imports harness (harness stands on protoseg)."""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter

from conftest import ROOT

PACKAGES = ("protoseg", "harness")


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = (path, ast.parse(path.read_text()))
    return modules


def _imports(name: str, path, tree: ast.Module, known) -> set[str]:
    """The project's modules that `name` imports anywhere in it (function-level imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, tree, modules) for name, (path, tree) in modules.items()}


def test_the_import_graph_has_no_circle():
    graph = _graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk found the packages' imports
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import circle: {' -> '.join(error.args[1])}") from None
    assert order.index("harness.store") < order.index("harness.backends") < order.index("harness.cli")


def test_protoseg_never_imports_harness():
    upward = {(name, target) for name, targets in _graph().items() if name.startswith("protoseg")
              for target in targets if target.startswith("harness")}
    assert upward == set()
