"""Layers only point down: an AST scan of every prunekit module (function-level imports included).

Libraries never import the drivers (recipe/, cli/, report/); graph/ and importance/ never import
structured/; and the package-level import graph has no cycle.
"""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "prunekit"

# The intended architecture, bottom to top: a package may import packages of its own or a lower layer.
# Top-level modules (errors, registry, typed, progress, _inputs, modelutils, api) are shared and not ranked.
LIBRARY_LAYERS = (
    ("models", "graph"),  # architectures; how channel ids move through ops (layer rules are injected)
    ("data", "importance"),  # datasets; criteria and score aggregation
    ("unstructured",),  # masks
    ("measure",),  # metrics, counts, sizes, latency
    ("structured", "train", "export", "compress", "sparse"),  # channel removal and layer handlers; fit / distil; exporters
    ("io", "int8"),  # checkpoints (plans, masks, model specs); int8 quantization
    ("hf",),  # Hugging Face models: save_pretrained / from_pretrained of pruned models
    ("reduce", "schedule"),  # input reduction; pruning schedules
    ("search",),  # budgeted search and analysis
)
DRIVER_LAYERS = (
    ("report",),  # results.json + report.html and every report section
    ("recipe",),  # the runner and every recipe stage
    ("cli",),  # the terminal
)
LAYERS = LIBRARY_LAYERS + DRIVER_LAYERS
LIBRARIES = {pkg for layer in LIBRARY_LAYERS for pkg in layer}
DRIVERS = {pkg for layer in DRIVER_LAYERS for pkg in layer}

# Package-level cycles that still exist; each is debt to remove, and a new cycle fails the test.
KNOWN_CYCLES: set = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set:
    """Absolute names of every prunekit module imported anywhere in ``path`` (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import stage` imports a submodule
    return {m for m in found if m == "prunekit" or m.startswith("prunekit.")}


def package_of(module: str) -> str | None:
    """``prunekit.graph.ids`` -> ``graph``; top-level modules (``prunekit.errors``) -> None."""
    parts = module.split(".")
    if len(parts) < 2 or not (ROOT / parts[1]).is_dir():
        return None
    return parts[1]


def package_edges() -> dict:
    """(importing package, imported package) -> the modules where it happens."""
    edges = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(module_name(path))
        if src is None:
            continue
        for target in imports_of(path):
            dst = package_of(target)
            if dst is not None and dst != src:
                edges.setdefault((src, dst), set()).add(module_name(path))
    return edges


EDGES = package_edges()


def test_the_scan_sees_the_packages():
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} == LIBRARIES | DRIVERS  # every package ranked
    assert ("structured", "graph") in EDGES and ("recipe", "schedule") in EDGES  # module- and function-level imports seen


def test_relative_imports_resolve_to_packages():
    pkg = ROOT / "recipe" / "stages" / "schedule.py"
    assert {"prunekit.schedule.config", "prunekit.recipe.stages"} <= imports_of(pkg)


def test_libraries_never_import_drivers():
    bad = {edge: sorted(where) for edge, where in EDGES.items() if edge[0] in LIBRARIES and edge[1] in DRIVERS}
    assert bad == {}, "a library package imports a driver (recipe/cli/report); move the driver code up a layer"


@pytest.mark.parametrize("lower", ["graph", "importance"])
def test_lower_layers_never_import_structured(lower):
    assert (lower, "structured") not in EDGES, sorted(EDGES.get((lower, "structured"), ()))


def test_packages_follow_the_layer_order():
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    upward = {edge: sorted(where) for edge, where in EDGES.items() if rank[edge[1]] > rank[edge[0]]}
    assert upward == {}, "a package imports a package of a higher layer (see LAYERS)"


def cycles(edges) -> set:
    """Every package cycle, as a frozenset of the packages on it (strongly connected components of size > 1)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    return {frozenset(p for p in graph if p in reach[a] and a in reach[p]) | {a}
            for a in graph if a in reach[a]}


def test_package_import_graph_is_acyclic():
    found = cycles(EDGES)
    detail = {tuple(sorted(c)): sorted(f"{a}->{b}" for a, b in itertools.permutations(sorted(c), 2) if (a, b) in EDGES)
              for c in found}
    assert found == KNOWN_CYCLES, f"package import cycles: {detail}"


def test_cycle_finder_finds_a_cycle():
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == {frozenset("abc")}
