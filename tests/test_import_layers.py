"""The import graph of src/edgespec, read with `ast` (module-level, function-local and
TYPE_CHECKING imports alike): no import cycle between modules, and no module importing from a
layer above its own. The layers are declared once, below, low to high."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "edgespec"

# Low to high: a module may import from its own layer and the layers before it. Names are the
# first component under `edgespec` (a subpackage or a top-level module); "edgespec" itself is the
# package's __init__: the public API, which names (lazily) what every layer offers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("link", "data", "prompting", "hostinfo", "sampling"),  # sampling: seeded draws, for the draft and the verifier
    ("models", "engines"),  # engines: what runs the target model (transformers, llama.cpp)
    ("decoding",),
    ("transport",),
    ("drivers",),
    ("client", "server"),
    ("exits", "capacity"),  # capacity: the capacity tables and plots that sim and bench both draw
    ("bench",),
    ("sim",),  # the simulator reports in the benchmark's shape (prices, summaries)
    ("openai_api", "robot"),
    ("cli", "edgespec"),  # edgespec: the package's __init__, the public API over every layer
)

# What a module of core/ may import besides core/ itself: the standard library, minus asyncio
# (the machines do no I/O of their own, so every driver can run them).
CORE_FORBIDDEN_STDLIB = frozenset({"asyncio"})


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _import_statements(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """Every import in the file, wherever it stands, as (absolute base, names imported from it);
    ``import a.b`` is (``a.b``, [])."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    statements = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            statements += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            statements.append((base, [alias.name for alias in node.names]))
    return statements


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between the package's modules: ``from a import b`` points at ``a.b`` where that is a
    module, else at ``a`` (or the nearest enclosing module)."""

    def nearest_module(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for base, names in _import_statements(module, path):
            if base.split(".")[0] != "edgespec":
                continue
            candidates = [f"{base}.{name}" if f"{base}.{name}" in modules else base for name in names] or [base]
            targets.update(filter(None, map(nearest_module, candidates)))
        targets.discard(module)
        graph[module] = targets
    return graph


def layer_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_index(module: str) -> int:
    name = layer_name(module)
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"{module}: {name!r} is in no layer; place it in LAYERS")


def layer_violations(graph: dict[str, set[str]]) -> set[str]:
    return {
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_index(target) > layer_index(source)
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_index(module)


def test_no_module_imports_from_a_higher_layer(graph: dict[str, set[str]]) -> None:
    violations = layer_violations(graph)
    assert sorted(violations) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_nothing_in_the_library_imports_the_cli(graph: dict[str, set[str]]) -> None:
    importers = {
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_name(target) == "cli" and layer_name(source) != "cli"
    }
    assert sorted(importers) == []


def test_the_core_imports_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) - CORE_FORBIDDEN_STDLIB
    for module, path in module_files().items():
        if not (module == "edgespec.core" or module.startswith("edgespec.core.")):
            continue
        for base, _ in _import_statements(module, path):
            assert base.split(".")[0] in allowed or base.startswith("edgespec.core"), f"{module} imports {base}"


def test_the_checker_sees_a_cycle_and_a_layer_inversion() -> None:
    # The checks themselves, on a graph small enough to read.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_violations({"edgespec.models.x": {"edgespec.cli.y"}, "edgespec.cli.y": {"edgespec.models.x"}}) == {
        "edgespec.models.x -> edgespec.cli.y"
    }
