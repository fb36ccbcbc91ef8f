"""Every test starts from the same random state, whatever ran before it and in whatever order.

Python's ``random``, numpy's legacy global generator and the global generator of each
framework already imported (torch, Keras, TensorFlow, MXNet) are seeded before each test. No
framework is imported here that the tests did not import (the core environment has none), and
jax keeps no global state: its tests pass keys. Hypothesis runs derandomized, from no database.
"""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

SEED = 0

try:
    from hypothesis import settings
except ImportError:  # hypothesis is a test dependency; a run without it has no @given tests
    pass
else:
    settings.register_profile("unitree", derandomize=True, database=None)
    settings.load_profile("unitree")


def _loaded(name: str, attribute: str) -> object:
    """``attribute`` of the framework ``name`` if the process imported it, else None."""
    module = sys.modules.get(name)
    return None if module is None else getattr(module, attribute)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Seed every global random generator the process has, before each test."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch_seed = _loaded("torch", "manual_seed")  # the CPU generator and every CUDA device's
    if torch_seed is not None:
        torch_seed(SEED)
    keras_utils = _loaded("keras", "utils")  # Python, numpy, the backend, Keras's SeedGenerator
    if keras_utils is not None:
        keras_utils.set_random_seed(SEED)
    tf_random = _loaded("tensorflow", "random")
    if tf_random is not None:
        tf_random.set_seed(SEED)
    mx_random = _loaded("mxnet", "random")
    if mx_random is not None:
        mx_random.seed(SEED)
