"""Safety tests: every test that takes ``builder`` and ``device`` runs on each backend the
environment selects (``UNITREE_BACKENDS``) and on each device that backend sees."""

from __future__ import annotations

import pytest
from unitree.conformance import backends


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"builder", "device"} <= set(metafunc.fixturenames):
        metafunc.parametrize(
            ("builder", "device"),
            [
                pytest.param(b, d, id=f"{b.label}-{d}")
                for b in backends.selected()
                for d in b.devices()
            ],
        )
