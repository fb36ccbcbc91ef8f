"""The conformance suite under pytest: every case x selected backend x device it sees, the
port matrix, and its file twin; each test one cell of the matrix (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from unitree.conformance import backends, cases, matrix
from unitree.conformance.builder import Builder

SELECTED = backends.selected()
HERE = [backends.load(n) for n in backends.importable()]
cell = pytest.mark.cell


def _deck_params() -> list:
    params = []
    for b in SELECTED:
        for col, devices in matrix.columns(b).items():
            # a column with no device is still a row of cells: skipped, "not available here"
            marks = [] if devices else [pytest.mark.skip(reason=matrix.unseen(b, col))]
            for device in devices or [col]:
                params += [
                    pytest.param(
                        b,
                        device,
                        case,
                        id=f"{case.__name__}-{b.name}-{device}",
                        marks=[cell(case.__name__, b.label, device), *marks],
                    )
                    for case in cases.CASES
                ]
    return params


@pytest.mark.parametrize(("builder", "device", "case"), _deck_params())
def test_deck(builder: Builder, device: str, case: cases.Case) -> None:
    case(builder, device)


@pytest.mark.parametrize(
    ("src", "dst", "device"),
    [
        pytest.param(
            src,
            dst,
            d,
            id=f"port-{src.label}-to-{dst.label}-{d}",
            marks=cell(f"port from {src.label}", dst.label, d),
        )
        for dst in HERE
        for src in HERE
        for d in dst.devices()
        if d in src.devices()
    ],
)
def test_port(src: Builder, dst: Builder, device: str) -> None:
    cases.port(src, dst, device)


MINE = [(b, d) for b in SELECTED for d in b.devices()]


@pytest.mark.parametrize(
    ("builder", "device"), [pytest.param(b, d, id=f"{b.label}-{d}") for b, d in MINE]
)
def test_port_save(builder: Builder, device: str) -> None:
    """Save the port model here, for test_port_load and the environments after this one."""
    cases.port_save(builder, device)


# every port checkpoint an environment saved before this run, and those test_port_save saves
FILES = sorted({*cases.port_files(), *(cases.port_path(b, d) for b, d in MINE)})


@pytest.mark.parametrize(
    ("builder", "device", "path"),
    [
        pytest.param(
            b,
            d,
            path,
            id=f"{b.label}-{d}-{path.stem}",
            marks=cell(f"file from {cases.port_label(path)}", b.label, d),
        )
        for b, d in MINE
        for path in FILES
    ],
)
def test_port_load(builder: Builder, device: str, path: Path) -> None:
    cases.port_load(builder, device, path)
