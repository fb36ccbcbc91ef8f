"""The deck's models in Flax linen, as ../shared/deck/jax-flax.txt builds them.

A linen model is its module and its variables: the builders hand ``wrap`` the
pair ``(module, variables)`` that ``module.init`` made.
"""

from __future__ import annotations

import itertools

import flax
import jax
import numpy as np
from flax import linen as nn

import unitree as ut

name = "flax"
label = "flax-linen"
version = f"{flax.__version__} (jax {jax.__version__})"
names = {"sequential": "Sequential", "dense": "Dense", "relu": "relu"}
can_tie = False  # linen shares through the module definition (one instance at two positions)
deck_layers = (0, 2)

_seeds = itertools.count()  # the deck's d2l.get_key(): a fresh key per model

Model = tuple[nn.Module, dict]


def devices() -> list[str]:
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    return ["cpu"] + [f"gpu:{d.id}" for d in gpus]


def _device(device: str) -> jax.Device:
    platform, _, index = device.partition(":")
    return jax.devices(platform)[int(index or 0)]


def _init(net: nn.Module, X: np.ndarray, device: str) -> Model:
    with jax.default_device(_device(device)):
        return net, net.init(jax.random.key(next(_seeds)), X)


def deck_mlp(device: str, X: np.ndarray) -> Model:
    return _init(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]), X, device)


mlp = deck_mlp  # the deck's linen model is already dense, ReLU, dense


def deck_tied(device: str, X: np.ndarray, tied: bool = True) -> tuple[Model, tuple[int, int]]:
    # We need to give the shared layer a name so that we can refer to its parameters
    shared = nn.Dense(8)
    other = shared if tied else nn.Dense(8)
    net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, other, nn.relu, nn.Dense(1)])
    model = _init(net, X, device)
    assert (len(model[1]["params"]) == 3) is tied  # the deck's check: one parameter set shared
    return model, (2, 4)


def wrap(model: Model) -> ut.ParamTree:
    return ut.wrap(*model)


def forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    leaf = jax.tree_util.tree_leaves(tree.variables)[0]
    x = jax.device_put(X, next(iter(leaf.devices())))
    return np.asarray(tree.native.apply(tree.variables, x))


def loss(y: jax.Array) -> jax.Array:
    return y.sum()


def native_value(tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
    # Flax's own answer to "which variables does position i use": bind and ask the submodule
    # (a shared module is stored once, under the scope linen adopted it at)
    params = tree.native.bind(tree.variables).layers[i].variables["params"]
    return np.asarray(params["kernel"]).T if leaf == "weight" else np.asarray(params[leaf])


def is_parameter(obj: object) -> bool:
    return isinstance(obj, jax.Array)  # linen's parameters are plain jax arrays


def is_tensor(obj: object) -> bool:
    return isinstance(obj, jax.Array)
