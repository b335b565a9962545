"""The package's import structure: no module imports itself back through others.

A circle works only as long as the import order happens to suit it, and its usual repair, an
import moved into a function, hides the tangle instead of removing it: so imports inside
functions count here too. Imports under `if TYPE_CHECKING:` do not (they never run).
"""
from __future__ import annotations

import ast
import os

import appliance

PACKAGE = os.path.dirname(appliance.__file__)
# Packages allowed a circle (none: keep it that way).
KNOWN_TANGLES: tuple[str, ...] = ()


def _modules() -> dict[str, str]:
    """Dotted name -> path, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Our modules that `path` imports anywhere, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    imported = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        imported |= {name for name in names if name in modules}
    return imported


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in sorted(graph[module]):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def _known(cycle: list[str]) -> bool:
    return all(name.startswith(KNOWN_TANGLES) for name in cycle)


def test_no_module_imports_itself_back():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles = [_cycle_through(name, graph) for name in sorted(graph)]
    assert [cycle for cycle in cycles if cycle and not _known(cycle)] == []


def test_relative_imports_are_not_used():
    """The check above reads absolute imports only; keep it that way."""
    relative = [path for path in _modules().values()
                if any(isinstance(node, ast.ImportFrom) and node.level
                       for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())))]
    assert relative == []
