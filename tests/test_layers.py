"""The package's layering, read from its imports (every ``import``, lazy ones included).

Each layer imports only the layers below it (and itself), so there is no import cycle between
layers; within one layer the modules form no cycle either. The README's "Layout" draws the
same order: change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import processors

PACKAGE = Path(processors.__file__).parent

# Lowest first. A module imports only modules of its own layer or of layers listed before it.
LAYERS: list[set[str]] = [
    {"records", "paths", "redaction", "project", "clock", "logs", "refunds", "signing"},
    {"avro"},
    {"kafka"},
    {"providers", "actions"},
    {"workflow"},
    {"runtime"},
    {"state"},
    {"control"},
    {"views"},
    {"stages"},
    {"pipeline"},
    {"offline"},
    {"ops"},
    {"console"},
    {"deploy"},
    {"dev"},
    {"cli"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every processors module ``path`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("processors")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("processors"):
            for alias in node.names:  # `from processors.x import y`: y may be a module itself
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _exists(candidate) else node.module)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m != name} for name, path in modules.items()}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS and to the README's Layout")


def test_every_module_belongs_to_a_layer():
    for module in graph():
        if module != "processors":
            layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} -> {dep}" for m, deps in graph().items() if m != "processors"
                    for dep in deps if dep != "processors" and layer(dep) > layer(m))
    assert not upward, "imports that climb a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
