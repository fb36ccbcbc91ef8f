"""Checks every adapter's tests make the same way.

Float comparisons go through ``assert_close`` (float32 rounding of a scale: the largest
expected value, or for a sum the magnitudes of its terms) and ``assert_differ`` (something
changed by far more than rounding). They live in ``unitree.conformance.cases``, which the
wheel ships without pytest, and are the same functions here.
"""

from __future__ import annotations

import pytest
from unitree.conformance.cases import (
    EPS32,
    PORT_ULPS,
    ULPS,
    assert_close,
    assert_differ,
    mlp_output,
)

import unitree as ut

__all__ = [
    "EPS32",
    "PORT_ULPS",
    "ULPS",
    "assert_close",
    "assert_differ",
    "assert_read_once",
    "mlp_output",
]


def assert_read_once(tree: ut.ParamTree, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traversals after the first reuse the structure read once, and the adapter's own (faster)
    fingerprint is the core's generic one: the cache notices exactly the changes it should."""
    builds = []
    original = ut.ParamTree._build
    monkeypatch.setattr(ut.ParamTree, "_build", lambda self: builds.append(1) or original(self))
    list(tree.named_parameters())  # the first traversal reads the structure
    list(tree.named_parameters())
    tree.state_dict()
    str(tree)
    assert builds == [1]
    native = tree._native
    assert (
        tree._fp
        == tree._adapter.fingerprint(native)
        == ut.Adapter.fingerprint(tree._adapter, native)
    )
