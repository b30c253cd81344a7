"""The tree's shape (issue #23): no module in daemon/ over 600 lines, no class over 250, and no import
circle between modules other than a package's __init__ re-exporting its own modules."""

from __future__ import annotations

import ast
from pathlib import Path

DAEMON = Path(__file__).resolve().parents[1] / "daemon"
MAX_MODULE_LINES, MAX_CLASS_LINES = 600, 250


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the daemon by dotted name, with whether it is a package's __init__."""
    found = {}
    for path in DAEMON.rglob("*.py"):
        parts = path.relative_to(DAEMON.parent).with_suffix("").parts
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def test_no_module_or_class_is_over_its_limit() -> None:
    over = []
    for name, (path, _) in sorted(modules().items()):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            over.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                over.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert over == []


def imports_of(name: str, path: Path, package: bool, known: dict[str, tuple[Path, bool]]) -> set[str]:
    """The daemon modules `name` imports (at any depth of its code), a package's own modules left out
    of its __init__ and the packages above a module left out of its imports (their faces)."""

    def module_of(dotted: str) -> str:
        while dotted and dotted not in known:
            dotted = dotted.rsplit(".", 1)[0] if "." in dotted else ""
        return dotted

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("daemon"):
            found |= {module_of(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {module_of(alias.name) for alias in node.names if alias.name.startswith("daemon")}
    found -= {"", name}
    if package:
        found = {other for other in found if not other.startswith(name + ".")}
    return {other for other in found if not name.startswith(other + ".")}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = [stack.pop()]
            while group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_circles() -> None:
    known = modules()
    graph = {name: imports_of(name, path, package, known) for name, (path, package) in known.items()}
    assert circles(graph) == []
    # the checker finds one when there is one
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
