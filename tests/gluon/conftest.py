"""Import MXNet once, quietly: 1.9.1 warns about numpy and distutils APIs at import time,
which says nothing about unitree and would bury the test summary."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet  # noqa: F401
