"""Import MXNet once, quietly: 1.9.1 warns about numpy and distutils APIs at import time,
which says nothing about unitree and would bury the test summary."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import npx


@pytest.fixture(params=["np", "nd"])
def api(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """numpy-style arrays (``npx.set_np()``, as the deck) or classic ``mx.nd``; restored after."""
    was = mx.util.is_np_array(), mx.util.is_np_shape()
    if request.param == "np":
        npx.set_np()
    else:
        npx.reset_np()
    array = mx.np.array if request.param == "np" else mx.nd.array
    yield SimpleNamespace(array=array, type=type(array([0.0])))
    mx.util.set_np(shape=was[1], array=was[0])
