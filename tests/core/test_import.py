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
