"""The layer rules of docs/architecture.md, read from the source with `ast` (nothing imported).

Every `import x` and `from x import y` of every module under planner/, costmodel/ and
runtime/ counts, at module level and inside functions alike; `from planner.cli import search`
is an import of the module planner.cli.search where that is a module, else of planner.cli.
Imports of other packages (torch, numpy, ...) are not the layers' business and are left out;
so are imports by name at run time (importlib in planner/cli/main.py).

Layers, bottom up: planner.domain (the data model) and planner.sharding (pure functions the
cost model and the runtime share); costmodel and runtime side by side on top of them;
planner.search on the cost model; planner.frameworks (framework configs out and in) on the
search space; planner.figures; planner.cli over everything. Each failing
rule lists every offending import as `module -> imported`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("planner", "costmodel", "runtime")
# The top-level package planner/__init__.py (it holds __version__), not a layer of its own.
PLANNER_ROOT = "planner"
LAYERS = ("planner.domain", "planner.sharding", "planner.search", "planner.frameworks",
          "planner.figures", "planner.cli", "costmodel", "runtime")


@dataclass(frozen=True)
class Import:
    """`module` imports our module `imported`; `module_level` when it runs at import time."""

    module: str
    imported: str
    module_level: bool

    def __str__(self) -> str:
        return f"{self.module} -> {self.imported}"


def module_name(path: Path) -> str:
    """planner/domain/plan.py -> planner.domain.plan; a package's __init__.py -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def source_files() -> dict[str, Path]:
    """{module name: file} of every module of PACKAGES."""
    return {module_name(path): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py"))}


def is_ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The modules a `from X import a, b` names: X.a where that is a module, else X."""
    base = node.module or ""
    if node.level:  # relative: up from the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    known = source_files()
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            for alias in node.names]


class _ImportCollector(ast.NodeVisitor):
    """Imports of one module, each marked module-level or inside a function."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package = module, is_package
        self.function_depth = 0
        self.found: list[Import] = []

    def _inside_function(self, node: ast.AST) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _inside_function

    def _add(self, names: list[str]) -> None:
        for name in names:
            if is_ours(name):
                self.found.append(Import(self.module, name, self.function_depth == 0))

    def visit_Import(self, node: ast.Import) -> None:
        self._add([alias.name for alias in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._add(resolve_from(self.module, self.is_package, node))


@lru_cache(maxsize=1)
def all_imports() -> tuple[Import, ...]:
    """Every import of one of our modules by one of our modules."""
    found = []
    for module, path in source_files().items():
        collector = _ImportCollector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found += collector.found
    return tuple(found)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_of(name: str) -> str:
    """The layer of LAYERS a module belongs to, or PLANNER_ROOT for planner/__init__.py."""
    return next((layer for layer in LAYERS if within(name, layer)), PLANNER_ROOT)


def imports_from(package: str) -> list[Import]:
    return [i for i in all_imports() if within(i.module, package)]


def offending(imports: list[Import]) -> str:
    return "\n".join(sorted({str(i) for i in imports}))


@dataclass(frozen=True)
class Rule:
    """Modules of `package` may import, of our packages, only what `allowed` accepts."""

    description: str
    package: str
    allowed: Callable[[str], bool]  # on the imported module's name

    def violations(self) -> list[Import]:
        return [i for i in imports_from(self.package) if not self.allowed(i.imported)]


def _only(*packages: str):
    return lambda name: any(within(name, p) for p in packages)


def _not(*packages: str):
    return lambda name: not any(within(name, p) for p in packages)


def _costmodel_imports(name: str) -> bool:
    return _not("runtime")(name) and (not within(name, "planner")
                                      or _only("planner.domain", "planner.sharding")(name))


def _runtime_imports(name: str) -> bool:
    if within(name, "costmodel"):
        return name == "costmodel.profile_table"  # the table format its profiler writes
    return not within(name, "planner") or _only("planner.domain", "planner.sharding")(name)


def _domain_imports(name: str) -> bool:
    return name == PLANNER_ROOT or within(name, "planner.domain")


RULES = [
    Rule("costmodel imports nothing of runtime, and of planner only planner.domain and "
         "planner.sharding", "costmodel", _costmodel_imports),
    Rule("runtime imports of costmodel only costmodel.profile_table, and of planner only "
         "planner.domain and planner.sharding", "runtime", _runtime_imports),
    Rule("planner.domain imports only planner.domain and the planner package",
         "planner.domain", _domain_imports),
    Rule("planner.sharding imports only planner.domain and planner.sharding",
         "planner.sharding", _only("planner.domain", "planner.sharding")),
    Rule("planner.search imports neither planner.cli, planner.figures nor runtime",
         "planner.search", _not("planner.cli", "planner.figures", "runtime")),
    Rule("planner.figures imports neither planner.cli nor runtime",
         "planner.figures", _not("planner.cli", "runtime")),
    Rule("planner.frameworks (config export and import) imports neither planner.cli, "
         "planner.figures nor runtime", "planner.frameworks",
         _not("planner.cli", "planner.figures", "runtime")),
]


def test_every_package_is_parsed_and_imports_resolve_to_modules():
    """Not vacuous: each layer has modules with imports, and every import names a module
    that exists (a misspelt or stale name would slip past the rules below)."""
    modules = source_files()
    for layer in LAYERS:
        assert imports_from(layer), f"no imports found in {layer}"
    unknown = [i for i in all_imports() if i.imported not in modules]
    assert not unknown, "imports of modules that do not exist:\n" + offending(unknown)


def test_from_imports_resolve_to_the_submodule_they_name():
    tree = ast.parse("from planner.cli import search\nfrom planner.domain.plan import Plan\n"
                     "from . import tables\n")
    first, second, third = tree.body
    assert resolve_from("x", False, first) == ["planner.cli.search"]
    assert resolve_from("x", False, second) == ["planner.domain.plan"]
    assert resolve_from("planner.search.mcmc", False, third) == ["planner.search.tables"]


@pytest.mark.parametrize("rule", RULES, ids=[r.package for r in RULES])
def test_layer_rule(rule):
    bad = rule.violations()
    assert not bad, f"{rule.description}; offending imports:\n{offending(bad)}"


def _cycle_edges(graph: nx.DiGraph) -> list[str]:
    """`a -> b` of every edge on some cycle (the edges inside strongly connected parts)."""
    edges = []
    for part in nx.strongly_connected_components(graph):
        if len(part) > 1:
            edges += [f"{a} -> {b}" for a, b in graph.subgraph(part).edges]
    return sorted(edges)


def test_no_import_cycle_among_planner_modules():
    """Module-level imports only: an import inside a function runs after every module has
    loaded, so it cannot take part in an import-time cycle."""
    graph = nx.DiGraph()
    graph.add_edges_from((i.module, i.imported) for i in imports_from("planner")
                         if i.module_level and within(i.imported, "planner")
                         and i.module != i.imported)
    edges = _cycle_edges(graph)
    assert not edges, "import cycles among planner modules; offending imports:\n" + \
        "\n".join(edges)


def test_no_cycle_between_layers():
    """Every import counts here: a function-level import is still a dependency of its layer."""
    graph = nx.DiGraph()
    graph.add_edges_from((layer_of(i.module), layer_of(i.imported)) for i in all_imports()
                         if layer_of(i.module) != layer_of(i.imported))
    cycle_layers = set(_cycle_edges(graph))
    bad = [i for i in all_imports()
           if f"{layer_of(i.module)} -> {layer_of(i.imported)}" in cycle_layers]
    assert not bad, ("cycles between layers " + ", ".join(sorted(cycle_layers)) +
                     "; offending imports:\n" + offending(bad))
