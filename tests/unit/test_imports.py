"""Import structure of healing/: no cycles (not even under TYPE_CHECKING), and only the tool
layer imports the application packages (DESIGN section 2).

The graph is read with ``ast`` from the source, so every import counts: module level, under
``if TYPE_CHECKING:``, and inside functions. An edge goes to the most specific module named
(``from healing.store import _rows`` is an edge to ``healing.store._rows``); the implicit import
of a package's ``__init__`` by its submodules is not an edge, or every package would be a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = frozenset({"activities", "workflows"})
TOOL_LAYER = frozenset({"healing.cli", "healing.demo", "healing.runner"})
"""The CLI, the demo and the worker assembly (``worker.py`` and ``healing worker`` share
``healing.runner.build_worker``): the only healing modules that may import the app packages."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str
    """``path:line`` of the import, for the failure message."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        yield f"{base}.{alias.name}"  # resolved to the module part below


def import_edges(root: Path, package: str = "healing") -> list[Edge]:
    """Every import in ``root/package/**/*.py``, as edges to the most specific module named
    (inside the package) or to the top-level name (outside it)."""
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    edges: list[Edge] = []
    for path in files:
        source = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # walk: TYPE_CHECKING blocks and function bodies too
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, source, path.name == "__init__.py"):
                target = name
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target:
                    target = name.split(".")[0]  # outside the package: its top-level name
                if target != source:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    edges.append(Edge(source, target, where))
    return edges


def find_cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component that has one."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
        graph.setdefault(edge.target, {})
    # Tarjan's algorithm, iterative: the graph is small but recursion limits are not our topic.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [_cycle_in(sorted(c), graph) for c in components if len(c) > 1]


def _cycle_in(component: list[str], graph: Mapping[str, Mapping[str, Edge]]) -> list[Edge]:
    # Shortest way back to the first member: a readable cycle, not the whole component.
    start = component[0]
    members = set(component)
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    for node in queue:
        for target, edge in sorted(graph[node].items()):
            if target == start:
                return [*paths[node], edge]
            if target in members and target not in paths:
                paths[target] = [*paths[node], edge]
                queue.append(target)
    raise AssertionError(f"no cycle in component {component}")  # pragma: no cover


def describe(cycle: list[Edge]) -> str:
    hops = " -> ".join(f"{e.source} ({e.where})" for e in cycle)
    return f"{hops} -> {cycle[-1].target}"


def app_imports(edges: Iterable[Edge]) -> list[Edge]:
    """Imports the library core must not make: the app packages, or the tool layer that does."""
    return [
        e
        for e in edges
        if e.source not in TOOL_LAYER and (e.target in APP_PACKAGES or e.target in TOOL_LAYER)
    ]


# --- the checks on healing/ ---------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_edges(ROOT))
    assert not cycles, "import cycles in healing/:\n" + "\n".join(map(describe, cycles))


def test_core_does_not_import_the_application_packages() -> None:
    bad = app_imports(import_edges(ROOT))
    assert not bad, "\n".join(f"{e.where}: {e.source} imports {e.target}" for e in bad)


def test_tool_layer_exists_and_assembles_the_app() -> None:
    # The exemption names real modules, and they are the ones that need the app packages.
    edges = import_edges(ROOT)
    modules = {module_name(p, ROOT) for p in (ROOT / "healing").rglob("*.py")}
    assert modules >= TOOL_LAYER
    users = {e.source for e in edges if e.target in APP_PACKAGES}
    assert users and users <= TOOL_LAYER


# --- the checks can fail: a tiny package with the defects planted -------------------------


def write_package(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_cycles_hidden_under_type_checking_and_in_functions_are_found(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "healing/__init__.py": "",
            "healing/a.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from healing.b import B\n",
            "healing/b.py": "def f():\n    from . import c\n",
            "healing/c.py": "import healing.a\n",
            "healing/d.py": "from healing import a\nimport os\n",  # no cycle through d
        },
    )
    cycles = find_cycles(import_edges(tmp_path))
    assert len(cycles) == 1
    assert [e.source for e in cycles[0]] == ["healing.a", "healing.b", "healing.c"]
    assert [e.where for e in cycles[0]] == ["healing/a.py:3", "healing/b.py:2", "healing/c.py:1"]
    assert "healing.c (healing/c.py:1) -> healing.a" in describe(cycles[0])


def test_submodule_imports_of_a_package_are_not_cycles(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "healing/__init__.py": "",
            "healing/store/__init__.py": "from healing.store.sql import Store\n",
            "healing/store/sql.py": "from healing.store import _rows\n",
            "healing/store/_rows.py": "",
        },
    )
    edges = import_edges(tmp_path)
    assert ("healing.store.sql", "healing.store._rows") in {(e.source, e.target) for e in edges}
    assert find_cycles(edges) == []


def test_core_importing_the_app_is_found(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        {
            "healing/__init__.py": "",
            "healing/plugin.py": "def f():\n    from workflows import IntegrationWorkflow\n",
            "healing/healer.py": "import healing.runner\n",  # the tool layer, so the app too
            "healing/runner.py": "import activities\n",
        },
    )
    bad = app_imports(import_edges(tmp_path))
    assert {(e.source, e.target) for e in bad} == {
        ("healing.plugin", "workflows"),
        ("healing.healer", "healing.runner"),
    }
