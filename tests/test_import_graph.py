"""House rule: the modules of persona_icm import each other without a loop.

The graph is read from the source with ast. Every import that runs counts: module-level imports and
imports inside functions alike (a lazy import defers a heavy load, it does not make a loop go away);
imports under `if TYPE_CHECKING:` never run and do not count. Importing `a.b.c` runs the packages
`a.b` and `a` first, so it is an edge to each of them too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "persona_icm"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST, in_function: bool = False):
    """(imported name, names imported from it, in a function?) of every import that can run."""
    for node in ast.iter_child_nodes(tree):
        if is_type_checking_block(node):
            yield from (i for child in node.orelse for i in runtime_imports(ast.Module(body=[child]), in_function))
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, (), in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, tuple(alias.name for alias in node.names), in_function
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from runtime_imports(node, nested)


Graph = dict[str, dict[str, bool]]  # importer -> {imported: only imported inside functions?}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """Edges importer -> imported among the modules of `package`."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(p, root): p for p in paths}
    graph: Graph = {m: {} for m in modules}
    for importer, path in modules.items():
        for name, names, lazy in runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if name.split(".")[0] != package:
                continue
            targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules] + [name]
            for target in targets:
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    imported = ".".join(parts[:depth])
                    if imported in modules and imported != importer and not importer.startswith(imported + "."):
                        graph[importer][imported] = graph[importer].get(imported, True) and lazy
    return graph


def reachable(graph: Graph, start: str) -> dict[str, str | None]:
    """Every module `start` imports, directly or not, with the module it is reached from (breadth first)."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        for nxt in graph[node]:
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return parent


def cycles(graph: Graph) -> list[list[str]]:
    """The shortest cycle through each module that imports itself (directly or not), each cycle once."""
    found: dict[frozenset, list[str]] = {}
    for start in sorted(graph):
        parent = reachable(graph, start)
        ends = [m for m in parent if start in graph[m]]
        if ends:
            path = min((_path(parent, m) for m in ends), key=len)
            found.setdefault(frozenset(zip(path, path[1:] + path[:1], strict=True)), path)
    return list(found.values())


def _path(parent: dict[str, str | None], node: str) -> list[str]:
    path = []
    while node is not None:
        path.append(node)
        node = parent[node]
    return path[::-1]


def describe(graph: Graph, cycle: list[str]) -> str:
    steps = [f"{a} -> {b}{' (in a function)' if graph[a][b] else ''}" for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)]
    return "; ".join(steps)


def test_persona_icm_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) >= 20
    loops = [describe(graph, c) for c in cycles(graph)]
    assert loops == [], "import cycles among persona_icm modules:\n" + "\n".join(loops)


def test_the_types_module_imports_nothing_of_persona_icm():
    assert list(import_graph()[f"{PACKAGE}.types"]) == []


def test_the_warehouse_imports_only_the_types_and_the_method_registry():
    assert set(import_graph()[f"{PACKAGE}.warehouse"]) <= {f"{PACKAGE}.types", f"{PACKAGE}.methods", PACKAGE}


def test_prompts_import_no_backend_code():
    assert set(import_graph()[f"{PACKAGE}.prompts"]) <= {f"{PACKAGE}.types", PACKAGE}


def test_the_check_sees_a_loop_through_a_lazy_import_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("x = 1\ndef f():\n    from pkg import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert [describe(graph, c) for c in cycles(graph)] == ["pkg.a -> pkg.b; pkg.b -> pkg.a (in a function)"]
    assert graph["pkg.c"] == {}
