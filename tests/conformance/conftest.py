"""Each test here fills one cell of the conformance matrix (its ``cell`` mark): pass, fail, or
skipped as "not available here". With ``UNITREE_REPORT`` set, the run writes this
environment's column there (the JSON of ``unitree conformance --report``), so that a nox
session runs the deck once, not once under pytest and again through the command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unitree.conformance import backends, matrix

CELLS: list[matrix.Cell] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cell(case, backend, device): the matrix cell it fills")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    mark = item.get_closest_marker("cell")
    if mark is None or report.when == "teardown" or (report.when == "setup" and report.passed):
        return report
    case, backend, device = mark.args
    if report.skipped:
        reason = call.excinfo.value.msg if call.excinfo else ""
        CELLS.append(matrix.Cell(case, backend, device, "not available here", reason))
    else:
        error = call.excinfo.value if call.excinfo else None
        CELLS.append(matrix.cell(case, backend, device, error))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("UNITREE_REPORT")
    if path and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        versions = matrix.versions(backends.named() or backends.importable())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(matrix.as_json(CELLS, versions))
