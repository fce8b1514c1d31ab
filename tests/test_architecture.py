"""The package's layers: every import goes down (or sideways), never up, and no module imports itself back.

The layers are the ones drawn in docs/architecture.md. Imports inside functions count too: a lazy
import keeps ``edgestem --help`` fast, it does not make an upward dependency acceptable.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgestem

PACKAGE = Path(edgestem.__file__).parent

# Bottom to top; a module may import from its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    (
        "edgestem",
        "edgestem.errors",
        "edgestem.atomic",
        "edgestem.paths",
        "edgestem.progress",
        "edgestem.runinfo",
        "edgestem.seeds",
        "edgestem.registry",
        "edgestem.strain",
        "edgestem.lattice",
        "edgestem.config",
    ),
    ("edgestem.data",),
    ("edgestem.model",),
    ("edgestem.baseline", "edgestem.refine", "edgestem.crb", "edgestem.report"),
    ("edgestem.rundir", "edgestem.distributed"),
    ("edgestem.train",),
    ("edgestem.evaluate",),
    ("edgestem.compress", "edgestem.distill"),
    ("edgestem.export",),
    ("edgestem.targets",),
    ("edgestem.firmware",),
    ("edgestem.targets.budget",),
    ("edgestem.emulate",),
    ("edgestem.degradation", "edgestem.robustness", "edgestem.sweep"),
    ("edgestem.pipeline",),
    ("edgestem.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("edgestem", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgestem":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgestem")
    return found


def _layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "edgestem" and module.startswith(prefix + ".")):
                best = i
    assert best is not None, f"{module} has no layer in tests/test_architecture.py (and docs/architecture.md)"
    return best


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_import_goes_down_or_sideways():
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in _graph().items()
        for b in targets
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
