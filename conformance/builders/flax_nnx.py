"""The deck's models in Flax NNX: the linen deck (../shared/deck/jax-flax.txt) in NNX's API.

NNX layers are eager: ``nnx.Linear`` takes its input size, so the deck's models
are written with ``in_features`` and run once on X.
"""

from __future__ import annotations

from typing import Callable

import flax
import jax
import numpy as np
from flax import nnx

import unitree as ut
from conformance.builders import flax_linen

name = "flax"
label = "flax-nnx"
version = f"{flax.__version__} (jax {jax.__version__})"
names = {"sequential": "Sequential", "dense": "Linear", "relu": "relu"}
can_tie = True
deck_layers = (0, 2)
devices, _device = flax_linen.devices, flax_linen._device  # the same jax devices

_rngs = nnx.Rngs(0)


def _built(device: str, X: np.ndarray, layers: Callable[[], tuple]) -> nnx.Sequential:
    """``nnx.Sequential(*layers())`` made on ``device``, after its first call on X."""
    with jax.default_device(_device(device)):
        net = nnx.Sequential(*layers())
        net(jax.numpy.asarray(X))
    return net


def deck_mlp(device: str, X: np.ndarray) -> nnx.Sequential:
    return _built(
        device, X, lambda: (nnx.Linear(4, 8, rngs=_rngs), nnx.relu, nnx.Linear(8, 1, rngs=_rngs))
    )


mlp = deck_mlp  # already dense, ReLU, dense


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True
) -> tuple[nnx.Sequential, tuple[int, int]]:
    def layers() -> tuple:
        shared = nnx.Linear(8, 8, rngs=_rngs)
        other = shared if tied else nnx.Linear(8, 8, rngs=_rngs)
        first, last = nnx.Linear(4, 8, rngs=_rngs), nnx.Linear(8, 1, rngs=_rngs)
        return first, nnx.relu, shared, nnx.relu, other, nnx.relu, last

    return _built(device, X, layers), (2, 4)


wrap = ut.wrap


def forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    kernel = tree.native.layers[0].kernel[...]
    return np.asarray(tree.native(jax.device_put(X, next(iter(kernel.devices())))))


def loss(y: jax.Array) -> jax.Array:
    return y.sum()


def native_value(tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
    layer = tree.native.layers[i]
    return np.asarray(layer.kernel[...]).T if leaf == "weight" else np.asarray(layer.bias[...])


def is_parameter(obj: object) -> bool:
    return isinstance(obj, nnx.Param)


def is_tensor(obj: object) -> bool:
    return isinstance(obj, jax.Array)
