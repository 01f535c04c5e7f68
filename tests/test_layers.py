"""The layers of docs/architecture.md, enforced: every `edgekit` import (at module level or inside a function)
is read with `ast`, mapped to its layer, and must point to the same layer or one below it. A synthetic module
tree shows that the check finds an upward import and a cycle, so it cannot pass by reading nothing."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# Lowest first. A module may import its own layer and the ones before it, never one after it.
LAYERS = ("core", "models", "runtimes", "benchmarks", "export", "training", "edge_apps", "cli")
# Where each layer's files are in the repository (the pyproject package-dir mapping).
FOLDERS = {"core": "edgekit/core", "models": "edgekit/models", "runtimes": "runtimes", "benchmarks": "benchmarks",
           "export": "export", "training": "training", "edge_apps": "edge_apps", "cli": "edgekit"}
# Import name prefixes, most specific first.
PREFIXES = (("edgekit.core", "core"), ("edgekit.models", "models"), ("edgekit.runtimes", "runtimes"),
            ("edgekit.benchmarks", "benchmarks"), ("edgekit.export", "export"), ("edgekit.training", "training"),
            ("edgekit.edge_apps", "edge_apps"), ("edgekit.tests", "tests"), ("edgekit", "cli"))
# One-off scripts that regenerate results (benchmarks/scripts/): they sit above everything, are not part of
# the library and are not in the wheel.
SCRIPTS = "benchmarks/scripts/"
ROOT_MODULE = "edgekit/__init__.py"  # the version string only: importable by every layer


def layer_of(module: str) -> str | None:
    for prefix, layer in PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def imported_modules(path: Path) -> list[str]:
    """Every absolute `edgekit...` module named by an import statement anywhere in the file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from edgekit import commands` names the module edgekit.commands
            names += [f"{node.module}.{alias.name}" if node.module == "edgekit" else node.module
                      for alias in node.names]
    return [n for n in names if n == "edgekit" or n.startswith("edgekit.")]


def library_files(root: Path) -> dict[str, list[Path]]:
    """Layer -> its .py files under ``root`` (the cli layer is edgekit/ without its sub-layers)."""
    files: dict[str, list[Path]] = {}
    for layer, folder in FOLDERS.items():
        found = sorted((root / folder).rglob("*.py")) if layer != "cli" else sorted((root / folder).glob("*.py"))
        files[layer] = [p for p in found if p.relative_to(root).as_posix() != ROOT_MODULE
                        and not p.relative_to(root).as_posix().startswith(SCRIPTS)]
    return files


def violations(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(upward imports as 'file: module (layer -> layer)', the layer-to-layer edges)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward, edges = [], set()
    for layer, paths in library_files(root).items():
        for path in paths:
            for module in imported_modules(path):
                target = layer_of(module)
                if module == "edgekit" or target == layer:
                    continue
                if target is None or target == "tests" or rank[target] > rank[layer]:
                    upward.append(f"{path.relative_to(root)}: {module} ({layer} -> {target})")
                edges.add((layer, target))
    return upward, sorted(edges)


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Layer cycles in the import graph (depth-first search; each cycle once per starting layer)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_every_import_points_down_a_layer_and_nothing_cycles():
    upward, edges = violations(REPO)
    assert upward == [], "imports that point up a layer:\n" + "\n".join(upward)
    assert cycles(edges) == []
    assert ("runtimes", "core") in edges and ("export", "models") in edges  # the scan did read the tree


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("edgekit/core/spec.py", "import numpy\n")
    write("edgekit/models/checkpoint.py", "from edgekit.core.spec import ModelSpec\n")
    write("runtimes/base.py", "def load():\n    from edgekit.export.core import export  # upward, inside a function\n")
    write("export/core.py", "from edgekit.runtimes.base import load\n")
    write("edgekit/cli.py", "from edgekit import commands\n")
    upward, edges = violations(tmp_path)
    assert upward == ["runtimes/base.py: edgekit.export.core (runtimes -> export)"]
    assert ["export", "runtimes", "export"] in cycles(edges)
    write("runtimes/base.py", "from edgekit.core.spec import ModelSpec\n")
    assert violations(tmp_path)[0] == [] and cycles(violations(tmp_path)[1]) == []


def test_the_foundation_and_the_runtimes_import_no_ml_framework_at_module_level():
    """torch, onnxruntime and openvino only inside functions, in the layers a device loads."""
    heavy = {"torch", "torchvision", "onnxruntime", "openvino", "nncf", "onnx", "torch_pruning"}
    found = []
    for layer in ("core", "models", "runtimes"):
        for path in library_files(REPO)[layer]:
            for node in ast.parse(path.read_text()).body:  # module level only
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                found += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in heavy]
    assert found == []
