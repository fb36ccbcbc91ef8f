"""Dtype names as numpy spells them, including the ones numpy knows only through ml_dtypes."""

from __future__ import annotations

import numpy as np

from ._errors import ValueTypeError


def numpy_dtype(name: str) -> np.dtype:
    """``np.dtype(name)``, with bfloat16 and the float8 types taken from ml_dtypes.

    Raises:
        ValueTypeError: neither numpy nor ml_dtypes knows ``name``.
    """
    try:
        return np.dtype(name)
    except TypeError:
        pass
    import ml_dtypes  # a dependency, imported when first needed: import unitree stays fast

    try:
        return np.dtype(getattr(ml_dtypes, name))
    except (AttributeError, TypeError):
        raise ValueTypeError(
            f"Unknown dtype {name!r}: neither numpy nor ml_dtypes has it."
        ) from None
