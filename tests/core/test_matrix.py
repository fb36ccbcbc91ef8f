"""The conformance matrix as `unitree conformance` prints and writes it."""

from __future__ import annotations

import json

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
