"""Imports inside diffuse_cli run one way: no module imports, directly or through others, a
module that imports it back. Imports inside functions count too: they defer a cycle to run
time, they do not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import diffuse_cli

PACKAGE_DIR = Path(diffuse_cli.__file__).parent


def module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module below `package_dir` by dotted name; a package is named by its folder."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def imported_modules(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` imports anywhere in its body. `from a import b`
    names the module a.b when there is one, else a (b is a name defined in a). The parent
    packages Python runs before a module are not counted: every module would depend on them."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known}


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (module level and inside
    functions, absolute and relative imports alike)."""
    modules = module_names(package_dir, package)
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", known) - {name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) for every group of
    modules that import each other (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, group) for group in groups]


def _cycle_within(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself through the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{sorted(group)} is no cycle")


def describe(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_diffuse_cli_has_no_import_cycle():
    cycles = find_cycles(import_graph(PACKAGE_DIR, "diffuse_cli"))
    assert not cycles, f"import cycles inside diffuse_cli:\n{describe(cycles)}"


def test_the_graph_sees_the_package_as_it_is():
    graph = import_graph(PACKAGE_DIR, "diffuse_cli")
    assert "diffuse_cli.cli" in graph and "diffuse_cli.diffusion.gaussian" in graph
    # a module-level relative import, and an absolute one inside a function
    assert "diffuse_cli.diffusion.likelihood" in graph["diffuse_cli.diffusion.gaussian"]
    assert "diffuse_cli.evaluate.report" in graph["diffuse_cli.cli"]


def test_only_the_package_itself_and_main_import_the_api_and_the_cli():
    """The commands take the run loaders from loading.py and the CLI holds the command table,
    so nothing below the top depends on the modules that depend on everything."""
    graph = import_graph(PACKAGE_DIR, "diffuse_cli")
    top = {"diffuse_cli", "diffuse_cli.api", "diffuse_cli.cli"}
    importers = sorted(m for m, imported in graph.items() if imported & top)
    assert importers == ["diffuse_cli", "diffuse_cli.__main__"]


def test_the_low_modules_import_only_what_docs_architecture_says():
    graph = import_graph(PACKAGE_DIR, "diffuse_cli")

    def inside(module, *packages):
        return module in packages or module.startswith(tuple(f"{p}." for p in packages))

    for module, imported in graph.items():
        if inside(module, "diffuse_cli.diffusion"):
            assert all(inside(m, "diffuse_cli.diffusion") for m in imported), module
        if inside(module, "diffuse_cli.samplers"):
            allowed = ("diffuse_cli.samplers", "diffuse_cli.diffusion")
            assert all(inside(m, *allowed) for m in imported), module
    for module in ("new_folders", "version", "errors", "files"):
        assert graph[f"diffuse_cli.{module}"] == set(), module


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "def f():\n    from pkg.sub.high import g\n    return g\n",
            "sub/__init__.py": "from .high import g\n",
            "sub/high.py": "from .. import low\n\ndef g():\n    return low\n",
            "side.py": "import pkg.low\n",
        },
    )
    cycles = find_cycles(import_graph(pkg, "pkg"))
    assert cycles == [["pkg.low", "pkg.sub.high", "pkg.low"]]
    assert describe(cycles) == "pkg.low -> pkg.sub.high -> pkg.low"


def test_a_package_importing_its_own_module_and_back_is_a_cycle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "from pkg.a import b\n",
            "a/b.py": "from pkg.a import NAME\n",
        },
    )
    assert find_cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.a.b", "pkg.a"]]


def test_imports_that_run_one_way_are_no_cycle(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from .top import run\n",
            "top.py": "from pkg import low\nfrom pkg.mid import m\n\ndef run():\n"
            "    import pkg.low as lo\n    return lo, m\n",
            "mid.py": "from .low import x as m\n",
            "low.py": "import os\nx = os.sep\n",
        },
    )
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.top"] == {"pkg.low", "pkg.mid"} and graph["pkg.mid"] == {"pkg.low"}
    assert find_cycles(graph) == []
