"""The conformance suite under pytest: every case x selected backend x device it sees."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import pytest

from conformance import backends, cases

PARAMS = [
    pytest.param(b, device, case, id=f"{case.__name__}-{b.name}-{device}")
    for b in backends.selected()
    for device in b.devices()
    for case in cases.CASES
]


@pytest.mark.parametrize(("builder", "device", "case"), PARAMS)
def test_deck(builder: ModuleType, device: str, case: Callable[[ModuleType, str], None]) -> None:
    case(builder, device)
