"""The code's shape, checked: module size, import direction (app -> actors -> core) and no import cycles.

Read from the source with ``ast`` (nothing is imported), over every module under app/, actors/, core/ and
tinyworld/. An import inside a function counts too: it is still a dependency, only a later one; a type-only
import (under ``if TYPE_CHECKING:``) does not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import ROOT

PACKAGES = ("app", "actors", "core", "tinyworld")
MAX_LINES = 350
# who may import whom: app -> actors -> core; tinyworld is the demo's world (used by app and tests), built
# with the actors' PairRM compatibility layer
ALLOWED = {"core": {"core"}, "actors": {"actors", "core"}, "tinyworld": {"tinyworld", "core", "actors"},
           "app": {"app", "actors", "core", "tinyworld"}}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out["prefloop." + ".".join(parts)] = path
    return out


def walk_runtime(node: ast.AST):
    """Every node, but those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            continue
        yield from walk_runtime(child)


def imports_of(path: Path, names: set[str], top_level_only: bool) -> set[str]:
    """The prefloop modules ``path`` imports (``from prefloop.x import y`` counts y when y is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(walk_runtime(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("prefloop.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefloop"):
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found |= (subs & names) or {node.module}
    return {m for m in found if m in names}


def test_no_module_over_the_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_dependencies_point_one_way():
    mods = modules()
    wrong = []
    for name, path in mods.items():
        layer = name.split(".")[1]
        for dep in imports_of(path, set(mods), top_level_only=False):
            if dep.split(".")[1] not in ALLOWED[layer]:
                wrong.append(f"{name} imports {dep}")
    assert wrong == []


def test_core_imports_neither_ray_nor_vllm_at_module_level():
    heavy = []
    for name, path in modules().items():
        if name.startswith("prefloop.core."):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                heavy += [f"{name}: {n}" for n in names if n.split(".")[0] in ("ray", "vllm")]
    assert heavy == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path (first node repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "all imports"])
def test_no_import_cycles(top_level_only):
    mods = modules()
    graph = {name: imports_of(path, set(mods), top_level_only) - {name} for name, path in mods.items()}
    assert find_cycle(graph) is None
