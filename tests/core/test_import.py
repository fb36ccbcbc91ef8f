"""``import unitree`` imports no framework (docs/architecture.md, "Layers"), checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "mxnet"]


def test_import_unitree_imports_no_framework():
    code = (
        "import sys, json, unitree, unitree.layouts, unitree._cli; "
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_core_names_no_framework_module():
    # the adapter table names adapter modules as strings: nothing is imported before a model is wrapped
    from unitree._adapter import ADAPTERS

    assert all(module.startswith("unitree.adapters.") for module, _, _ in ADAPTERS.values())


def test_the_cores_imports_point_one_way():
    """No module of the core imports one that imports it back, even inside a function or under
    TYPE_CHECKING (docs/architecture.md, "Layers"): every import found, at any depth."""
    import ast
    from pathlib import Path

    import unitree

    core = Path(unitree.__file__).parent
    names = {path.stem for path in core.glob("*.py")}
    imports: dict[str, set[str]] = {}
    for path in core.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                found.update(t.partition(".")[0] for t in targets)
        imports[path.stem] = found & names - {path.stem}
    assert imports["_tree"] >= {"_read", "_write", "_param"}  # the scan sees real imports
    order: list[str] = []  # depth-first, each module after everything it imports

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"an import cycle: {' -> '.join((*stack, name))}"
        if name in order:
            return
        for other in sorted(imports[name]):
            visit(other, (*stack, name))
        order.append(name)

    for name in sorted(imports):
        visit(name, ())
    assert len(order) == len(imports)
