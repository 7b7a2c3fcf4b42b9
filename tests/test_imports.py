"""No import cycles inside grpo_helpers, counting imports inside functions too: a cycle hidden in a function still
ties two modules together (neither can be read, tested or moved without the other) and breaks when the import
runs at the wrong moment. Imports under `if TYPE_CHECKING:` never run and are left out (callbacks.py names the
trainer in its type hints)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "grpo_helpers"


def module_name(path: Path, *, root: Path) -> str:
    """grpo_helpers/countdown/data.py -> grpo_helpers.countdown.data; a package's __init__.py -> the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, *, current: str, is_package: bool) -> list[str]:
    """Every module name an import statement anywhere in `tree` (module level or inside a function) may load."""
    names: list[str] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_block(node):
            pending.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the current package
                package = current.split(".") if is_package else current.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the grpo_helpers modules it imports."""
    files = {module_name(path, root=root): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = imported_names(tree, current=name, is_package=path.name == "__init__.py")
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_grpo_helpers_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 20 and graph["grpo_helpers.trainer"], "the graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("second", [
    "from pkg.a import f\n",  # module level
    "def g():\n    from pkg.a import f\n    return f\n",  # inside a function
    "def g():\n    from pkg import a\n    return a\n",  # the package's module by name
    "from . import a\n",  # relative
])
def test_a_cycle_is_found_wherever_its_import_is(tmp_path, second):
    root = write(tmp_path / "pkg", {"__init__.py": "", "a.py": "from pkg.b import g\ndef f(): ...\n", "b.py": second})
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_type_checking_imports_and_acyclic_graphs_pass(tmp_path):
    root = write(tmp_path / "pkg", {
        "__init__.py": "", "a.py": "from pkg.b import g\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\ndef g(): ...\n",
        "sub/__init__.py": "", "sub/c.py": "from ..a import g\nfrom pkg.b import g\n"})
    graph = import_graph(root)
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.b"}
    assert find_cycle(graph) is None
