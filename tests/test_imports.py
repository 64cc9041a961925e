"""The package's import graph has no cycle (issue 13: "an engine without a circle").

Edges come from parsing every module under seersim/: module-level imports, including
those under `if TYPE_CHECKING:` (a typing-only cycle is still a design cycle), and —
in a second check — imports inside functions too, so that no function-local import
exists only to break a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "seersim"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _targets(node: ast.AST, current: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = current.split(".") if is_pkg else current.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        out = []
        for a in node.names:
            sub = f"{mod}.{a.name}"
            out.append(sub if sub in MODULES else mod)
        return [m for m in out if m in MODULES]
    return []


def _top_level(tree: ast.Module):
    """Import statements executed (or type-checked) when the module is imported."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            stack.extend(node.body)
            stack.extend(node.orelse)
            for h in getattr(node, "handlers", []):
                stack.extend(h.body)


def _graph(everywhere: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if everywhere else _top_level(tree)
        is_pkg = path.name == "__init__.py"
        graph[name] = {t for n in nodes for t in _targets(n, name, is_pkg) if t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_parser_sees_the_packages_imports():
    graph = _graph(everywhere=False)
    assert "seersim.engine.instance" in graph["seersim.engine.cluster"]
    assert "seersim.backends.base" in graph["seersim.driver"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("everywhere", [False, True], ids=["module-level", "incl-function-local"])
def test_no_import_cycle(everywhere):
    cycle = _find_cycle(_graph(everywhere))
    assert cycle is None, " -> ".join(cycle)
