"""The package's import graph has no cycles (issue #9).

Every import of a fastlin module counts, at module level or inside a
function: a function-level import that closes a cycle still ties the two
modules together (neither can be understood, tested or replaced alone).
Only imports under ``if TYPE_CHECKING:`` are left out: they never run, and
type checkers resolve cycles among annotations themselves.  The graph is
read from the sources with ``ast``, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastlin"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name, path, known):
    """The fastlin modules that module ``name`` imports (anywhere in it)."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "fastlin")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                target = f"{anchor}.{node.module}" if node.module else anchor
            elif node.module and node.module.split(".")[0] == "fastlin":
                target = node.module
            else:
                continue
            for alias in node.names:  # ``from . import layer`` imports the module fastlin.layer
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    # A package's own __init__ runs before any of its modules: importing a
    # parent package is not an edge that can close a cycle.
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def _runtime_nodes(tree):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _graph():
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph):
    """Every elementary cycle found by a depth-first search (one per back edge)."""
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_graph_is_read():
    graph = _graph()
    # A few edges that must be there, so that an empty graph cannot pass.
    assert "fastlin.training" in graph["fastlin.layer"]
    assert "fastlin.backends.abi" in graph["fastlin.optim"]
    assert "fastlin.layer" in graph["fastlin"]


def test_type_checking_imports_are_left_out():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\nimport c\n"
    )
    names = {n.names[0].name for n in _runtime_nodes(tree) if isinstance(n, ast.Import)}
    assert names == {"b", "c"}


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_fastlin():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        ("fastlin.optim", "fastlin.layer"),  # an optimiser transforms state; the layer asks it
        ("fastlin._io", "fastlin.layer"),  # the file format knows arrays, not layers
        ("fastlin.training", "fastlin.layer"),
    ],
)
def test_layering(module, must_not_import):
    graph = _graph()
    reach, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert must_not_import not in reach
