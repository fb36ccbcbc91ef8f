"""The deck's models in Flax NNX: the deck's JAX/Flax chapter, written in NNX's API.

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

from . import flax_linen

name = "flax"
label = "flax-nnx"
version = f"{flax.__version__} (jax {jax.__version__})"
names = {"sequential": "Sequential", "dense": "Linear", "relu": "relu"}
can_tie = True
deck_layers = (0, 2)
devices, _device = flax_linen.devices, flax_linen._device  # the same jax devices


def _built(
    device: str, X: np.ndarray, seed: int, layers: Callable[[nnx.Rngs], tuple]
) -> nnx.Sequential:
    """``nnx.Sequential(*layers(rngs))`` made on ``device`` with ``nnx.Rngs(seed)``, after its
    first call on X."""
    with jax.default_device(_device(device)):
        net = nnx.Sequential(*layers(nnx.Rngs(seed)))
        net(jax.numpy.asarray(X))
    return net


def deck_mlp(device: str, X: np.ndarray, *, seed: int = 0) -> nnx.Sequential:
    return _built(
        device,
        X,
        seed,
        lambda rngs: (nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 1, rngs=rngs)),
    )


mlp = deck_mlp  # already dense, ReLU, dense


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
) -> tuple[nnx.Sequential, tuple[int, int]]:
    def layers(rngs: nnx.Rngs) -> tuple:
        shared = nnx.Linear(8, 8, rngs=rngs)
        other = shared if tied else nnx.Linear(8, 8, rngs=rngs)
        first, last = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)
        return first, nnx.relu, shared, nnx.relu, other, nnx.relu, last

    return _built(device, X, seed, layers), (2, 4)


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


class PortModel(nnx.Module):
    """The port model of conformance/builder.py; ``tied_b`` is the very module ``tied_a``."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.emb = nnx.Embed(10, 8, rngs=rngs)
        self.lstm = nnx.RNN(nnx.LSTMCell(8, 8, rngs=rngs))
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)
        self.conv = nnx.Conv(8, 4, (3,), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(16, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, use_running_average=True, rngs=rngs)
        self.tied_a = nnx.Linear(8, 8, rngs=rngs)
        self.tied_b = self.tied_a
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(self.lstm(self.emb(x)))
        h = self.conv(h)  # channels-last (B, T, C): no transpose
        h = h.reshape(h.shape[0], -1)  # (B, 16) in T, C order
        h = nnx.relu(self.bn(self.fc(h)))
        h = nnx.relu(self.tied_a(h))
        return self.out(nnx.relu(self.tied_b(h)))


def port_model(device: str, *, seed: int = 0) -> PortModel:
    with jax.default_device(_device(device)):
        net = PortModel(nnx.Rngs(seed))
        rng = np.random.default_rng(seed)
        net.bn.mean[...] = jax.numpy.asarray(rng.uniform(-0.5, 0.5, 8), np.float32)
        net.bn.var[...] = jax.numpy.asarray(rng.uniform(0.5, 2.0, 8), np.float32)
    return net


def port_forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    kernel = tree.native.out.kernel[...]
    return np.asarray(
        tree.native(jax.device_put(np.asarray(X, np.int32), next(iter(kernel.devices()))))
    )


def random_model(spec: tuple, device: str, *, seed: int = 0) -> nnx.Sequential:
    """The random architecture ``spec`` of ``torch.random_model``, channels-last: an
    ``nnx.Sequential`` on ``device``, a tie the very module at two positions, every Variable
    set to random values drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    with jax.default_device(_device(device)):
        rngs = nnx.Rngs(seed)
        out: list = []
        for kind, *a in spec[1]:
            if kind == "conv":
                out.append(nnx.Conv(a[0], a[1], (a[2],) * a[3], padding="VALID", rngs=rngs))
            elif kind == "bn":
                out.append(
                    nnx.BatchNorm(
                        a[0], momentum=0.9, epsilon=1e-5, use_running_average=True, rngs=rngs
                    )
                )
            elif kind == "ln":
                out.append(nnx.LayerNorm(a[0], epsilon=1e-5, rngs=rngs))
            elif kind == "dense":
                out.append(nnx.Linear(a[0], a[1], rngs=rngs))
            elif kind == "flatten":
                out.append(lambda x: x.reshape(x.shape[0], -1))
            else:
                out.append(out[a[0]])
        net = nnx.Sequential(*out)
        for path, node in nnx.iter_graph(net):
            if isinstance(node, nnx.Variable) and not isinstance(node, nnx.RngState):
                lo, hi = (0.5, 2.0) if path[-1] == "var" else (-1.0, 1.0)
                value = rng.uniform(lo, hi, node[...].shape).astype(np.float32)
                node[...] = jax.numpy.asarray(value)
    return net


def native_state(tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
    """NNX's own view of the model: {graph path: (identity, copy of the value)} of every
    Variable, each shared one at its first path."""
    return {
        "/".join(map(str, path)): (id(node), np.array(node[...]))
        for path, node in nnx.iter_graph(tree.native)
        if isinstance(node, nnx.Variable) and not isinstance(node, nnx.RngState)
    }
