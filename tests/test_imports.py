"""The import graph of avatarproxy/ keeps its shape: the Graph adapter and the avatar
cache never reach each other, directly or through a third module, and no modules import
each other in a circle.

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` counts, relative or absolute, at module level, inside a function or
under ``TYPE_CHECKING``, since each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "avatarproxy"

# The two sides, by module name inside avatarproxy/. An entry is the names one module may
# have (before and after a move into a subpackage); a name matches a module whose dotted
# name is it or ends with ".<name>", so ``throttle`` finds ``graph.throttle`` too.
# Add a module here when it joins a side; a name that matches nothing fails the test.
GRAPH_ADAPTER = (("graph", "graph.client"), ("throttle",), ("auth",), ("authproblems",),
                 ("directory",), ("urls",), ("replies",), ("resources",), ("clouds",),
                 ("graph.settings",), ("usersdelta",))
AVATAR_CACHE = (("cache",), ("memory",), ("coalesce",), ("readahead",))


def module_name(path: Path) -> str:
    """``avatarproxy/redis/connection.py`` -> ``redis.connection``; a package is its
    ``__init__`` (``redis``); the root package is ``""``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of avatarproxy that module ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    package = [part for part in package if part]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "avatarproxy" or alias.name.startswith("avatarproxy."):
                    yield alias.name.removeprefix("avatarproxy").lstrip(".")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                origin = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "avatarproxy"
                                  or node.module.startswith("avatarproxy.")):
                origin = node.module.removeprefix("avatarproxy").lstrip(".")
            else:
                continue  # another package's
            submodules = [f"{origin}.{a.name}".lstrip(".") for a in node.names]
            found = [module for module in submodules if module in known]
            yield from found
            if len(found) < len(node.names):  # names defined in ``origin`` itself
                yield origin


def import_graph() -> dict[str, set[str]]:
    files = sources()
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set(imported(name, path, known)) - {name}
        unknown = targets - known
        assert not unknown, f"{path}: imports {sorted(unknown)}, which avatarproxy/ lacks"
        # The root package (``from . import x``) is no dependency of its own.
        graph[name] = targets - {""}
    return graph


def side(graph: dict[str, set[str]], entries: tuple[tuple[str, ...], ...]) -> set[str]:
    members: set[str] = set()
    for names in entries:
        matched = {module for module in graph for name in names
                   if module == name or module.endswith("." + name)}
        assert matched, f"no module is named {' or '.join(names)}: update the lists above"
        members |= matched
    return members


def path_between(graph: dict[str, set[str]], start: str, ends: set[str]) -> list[str] | None:
    """The shortest import chain from ``start`` to a module of ``ends``, if any."""
    previous: dict[str, str] = {}
    queue, seen = [start], {start}
    while queue:
        current = queue.pop(0)
        for target in sorted(graph[current]):
            if target in seen:
                continue
            previous[target] = current
            if target in ends:
                chain = [target]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return chain[::-1]
            seen.add(target)
            queue.append(target)
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_import_graph_sees_relative_absolute_and_nested_imports() -> None:
    graph = import_graph()
    assert "web" in graph["app"]  # from .web import ...
    assert "service" in graph["app"]
    assert any("app" in targets for targets in graph.values())  # a function's import (cli)


def chains(start: tuple[tuple[str, ...], ...], end: tuple[tuple[str, ...], ...]) -> str:
    """Every shortest import chain from a module of ``start`` to one of ``end``, a line each."""
    graph = import_graph()
    ends = side(graph, end)
    found = [chain for module in sorted(side(graph, start))
             if (chain := path_between(graph, module, ends)) is not None]
    return "\n".join(" -> ".join(chain) for chain in found)


def test_the_graph_adapter_never_reaches_the_avatar_cache() -> None:
    assert chains(GRAPH_ADAPTER, AVATAR_CACHE) == ""


def test_the_avatar_cache_never_reaches_the_graph_adapter() -> None:
    assert chains(AVATAR_CACHE, GRAPH_ADAPTER) == ""


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_graph()) == []


# The commands and the composition root: they load configuration for the rest.
LOADS_CONFIGURATION = {"app", "cli", "doctor", "warm", "lifecycle", "preflight", "demo.serve"}


def test_components_declare_their_options_and_never_import_the_loader() -> None:
    # Each component declares its options next to itself (options.settings); config.py
    # imports those declarations, so a component importing config would be a circle,
    # and would mean an option declared far from the code that reads it.
    graph = import_graph()
    importers = {module for module, targets in graph.items() if "config" in targets}
    assert importers <= LOADS_CONFIGURATION, sorted(importers - LOADS_CONFIGURATION)
    assert graph["options"] == set()  # declaring an option costs nothing else


def test_modules_and_functions_stay_small_enough_to_read() -> None:
    # Our style: modules under 400 lines, functions under 50 (a newcomer reads one
    # concern at a time; CONTRIBUTING.md). A split along a real seam beats raising these numbers.
    long_modules, long_functions = [], []
    for name, path in sources().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") >= 400:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 50:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert long_modules == [] and long_functions == [], long_modules + long_functions
