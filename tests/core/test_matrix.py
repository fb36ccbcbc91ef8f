"""The conformance matrix as `unitree conformance` prints and writes it, and the builder
contract every backend's builder meets."""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

import pytest
from unitree.conformance import backends
from unitree.conformance.builder import MEMBERS
from unitree.conformance.matrix import Cell, as_json, markdown, merge


def test_markdown_marks_each_cell_and_gives_the_reasons():
    cells = [
        Cell("toy_model", "torch", "cpu", "pass", "cpu"),
        Cell("toy_model", "torch", "gpu", "not available here", "no GPU visible to torch here"),
        Cell("picture", "torch", "cpu", "fail", "cpu: AssertionError: wrong picture"),
        Cell("picture", "torch", "gpu", "not available here", "no GPU visible to torch here"),
    ]
    text = markdown(cells)
    assert text.splitlines()[:4] == [
        "| case | torch cpu | torch gpu |",
        "|---|---|---|",
        "| toy_model | pass | n/a |",
        "| picture | FAIL | n/a |",
    ]
    assert "- torch gpu: not available here: no GPU visible to torch here" in text
    assert "- FAIL picture on torch cpu: AssertionError: wrong picture" in text
    assert text.endswith("1 passed, 1 failed, 2 not available here")
    assert json.loads(as_json(cells, "torch 2.13"))["cells"][2] == {
        "case": "picture",
        "backend": "torch",
        "device": "cpu",
        "status": "fail",
        "detail": "cpu: AssertionError: wrong picture",
    }


def test_merge_joins_the_reports_of_separate_environments():
    torch = [Cell("toy_model", "torch", "cpu", "pass", "cpu")]
    gluon = [Cell("toy_model", "gluon", "cpu", "fail", "cpu: AssertionError")]
    cells, versions = merge([as_json(torch, "torch 2.13"), as_json(gluon, "mxnet 1.9.1")])
    assert cells == torch + gluon
    assert versions == "torch 2.13\nmxnet 1.9.1"
    assert markdown(cells).splitlines()[2] == "| toy_model | pass | FAIL |"


def test_merge_marks_ports_no_environment_could_run_and_keeps_a_failure():
    a = [
        Cell("port from torch", "torch", "cpu", "pass", "cpu"),
        Cell("port from torch", "gluon", "cpu", "pass", "cpu"),
        Cell("port from gluon", "gluon", "cpu", "pass", "cpu"),
        Cell("port from gluon", "torch", "cpu", "pass", "cpu"),
    ]
    b = [
        Cell("port from torch", "torch", "cpu", "fail", "cpu: AssertionError"),
        Cell("port from flax-nnx", "flax-nnx", "cpu", "pass", "cpu"),
    ]
    cells, _ = merge([as_json(a), as_json(b)])
    by = {(c.case, c.backend): c.status for c in cells}
    assert by[("port from torch", "torch")] == "fail"  # torch -> torch ran twice, failed once
    assert by[("port from gluon", "flax-nnx")] == "not available here"
    assert by[("port from flax-nnx", "gluon")] == "not available here"
    assert by[("port from gluon", "torch")] == "pass"
    assert len(cells) == 9  # 3 x 3 directions


def defined(path: Path) -> set[str]:
    """The names a module defines at its top level, read without importing it (the core
    environment has no framework to import a builder with)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                names.update(t.id for t in elts if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("name", sorted(backends.BUILDERS))
def test_every_builder_defines_every_name_of_the_protocol(name):
    module = backends.BUILDERS[name].removeprefix("unitree.conformance.builders.")
    path = Path(backends.__file__).parent / "builders" / f"{module}.py"
    assert [n for n in MEMBERS if n not in defined(path)] == [], path


def test_a_builder_missing_a_name_is_refused_with_the_names(monkeypatch):
    module = types.ModuleType("half_builder")
    module.name = module.label = "half"
    monkeypatch.setitem(sys.modules, "half_builder", module)
    monkeypatch.setitem(backends.BUILDERS, "half", "half_builder")
    with pytest.raises(TypeError, match=r"half builder .* lacks \['version', 'names'"):
        backends.load("half")
