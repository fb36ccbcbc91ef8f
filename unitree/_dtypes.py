"""Dtype names as numpy spells them, including the ones numpy knows only through ml_dtypes."""

from __future__ import annotations

import numpy as np

from ._errors import ValueTypeError


def numpy_dtype(name: str) -> np.dtype:
    """``np.dtype(name)``, with bfloat16 and the float8 types taken from ml_dtypes."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:
        import ml_dtypes
    except ImportError:
        raise ValueTypeError(
            f"The dtype {name} needs the ml_dtypes package: pip install ml_dtypes."
        ) from None
    try:
        return np.dtype(getattr(ml_dtypes, name))
    except AttributeError:
        raise ValueTypeError(f"Unknown dtype {name!r}.") from None
