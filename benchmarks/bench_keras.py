"""wrap + traversal of a 10,000-variable Keras model against ``model.weights``; zero-copy reads."""

from __future__ import annotations

import sys

import keras
import numpy as np
from run import SEED, traversal

import unitree as ut


def _numpy(v: keras.Variable) -> np.ndarray:
    """The variable's own buffer as numpy, where the backend has one to show."""
    backend = keras.backend.backend()
    if backend == "torch":
        return v.value.detach().numpy()
    if backend == "jax":
        return np.asarray(v.value)
    return v.value.numpy()  # tensorflow: always a copy


def main(runs: int) -> None:
    keras.utils.set_random_seed(SEED)  # Keras's initializers, and Python's, numpy's, the backend's
    # 50 blocks of 100 Dense layers, a kernel and a bias each: 10,000 variables. Each layer is
    # built on its own: building 5,000 layers as one Sequential recurses past Python's limit.
    blocks = []
    for _ in range(50):
        dense = [keras.layers.Dense(4) for _ in range(100)]
        for d in dense:
            d.build((None, 4))
        blocks.append(keras.Sequential(dense))
    model = keras.Sequential(blocks)
    n = len(model.weights)
    backend = keras.backend.backend()
    label = f"keras-{backend}, {n:,} variables: "
    traversal(label, "model.weights", lambda: list(model.weights), lambda: ut.wrap(model), runs)

    dense = keras.layers.Dense(256)
    dense.build((None, 256))
    p = ut.wrap(dense)["weight"]
    shared = np.shares_memory(p.numpy(), _numpy(dense.kernel))
    print(f"{'p.numpy() shares memory with the variable':<44} {shared}")
    print(
        f"keras {keras.__version__} ({backend}), numpy {np.__version__}, python {sys.version.split()[0]}"
    )
