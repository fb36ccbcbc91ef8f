"""The conformance suite under pytest: every case x selected backend x device it sees."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import pytest
from unitree.conformance import backends, cases

PARAMS = [
    pytest.param(b, device, case, id=f"{case.__name__}-{b.name}-{device}")
    for b in backends.selected()
    for device in b.devices()
    for case in cases.CASES
]


@pytest.mark.parametrize(("builder", "device", "case"), PARAMS)
def test_deck(builder: ModuleType, device: str, case: Callable[[ModuleType, str], None]) -> None:
    case(builder, device)


HERE = [backends.load(n) for n in backends.importable()]


@pytest.mark.parametrize(
    ("src", "dst", "device"),
    [
        pytest.param(src, dst, d, id=f"port-{src.label}-to-{dst.label}-{d}")
        for dst in HERE
        for src in HERE
        for d in dst.devices()
        if d in src.devices()
    ],
)
def test_port(src: ModuleType, dst: ModuleType, device: str) -> None:
    cases.port(src, dst, device)


@pytest.mark.parametrize(
    ("builder", "device"),
    [pytest.param(b, d, id=f"{b.label}-{d}") for b in backends.selected() for d in b.devices()],
)
def test_port_files(builder: ModuleType, device: str) -> None:
    """Save the port model here, then load every port checkpoint any environment saved."""
    mine = cases.port_save(builder, device)
    files = cases.port_files()
    assert mine in files
    for path in files:
        cases.port_load(builder, device, path)
