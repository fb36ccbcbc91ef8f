"""The deck's models in Keras 3, as the deck's TensorFlow/Keras chapter builds them.

The backend is the one ``KERAS_BACKEND`` names (tensorflow, jax or torch): one
matrix column each.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
from keras import layers

import unitree as ut


def _backend_version() -> str:
    import importlib

    return importlib.import_module(keras.backend.backend()).__version__


name = "keras"
label = f"keras-{keras.backend.backend()}"
version = f"{keras.__version__} ({keras.backend.backend()} {_backend_version()})"
names = {"sequential": "Sequential", "dense": "Dense", "relu": "ReLU"}
can_tie = True
deck_layers = (1, 2)  # the deck puts a Flatten first


def devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = len(tf.config.list_logical_devices("GPU"))
    elif backend == "jax":
        import jax

        gpus = sum(d.platform == "gpu" for d in jax.devices())
    else:
        import torch

        gpus = torch.cuda.device_count()
    return ["cpu"] + [f"gpu:{i}" for i in range(gpus)]


def _run(build: Callable[[], keras.Model], device: str, X: np.ndarray, seed: int) -> keras.Model:
    # Keras's initializers draw their seeds from Python's random, its random ops from Keras's
    # global SeedGenerator: set_random_seed seeds both (and numpy's, and the backend's)
    keras.utils.set_random_seed(seed)
    with keras.device(device):  # variables are created on the first call, under this scope
        net = build()
        net(X)
    return net


def deck_mlp(device: str, X: np.ndarray, *, seed: int = 0) -> keras.Model:
    return _run(
        lambda: keras.Sequential(
            [layers.Flatten(), layers.Dense(8, activation="relu"), layers.Dense(1)]
        ),
        device,
        X,
        seed,
    )


def mlp(device: str, X: np.ndarray, *, seed: int = 0) -> keras.Model:
    return _run(
        lambda: keras.Sequential([layers.Dense(8), layers.ReLU(), layers.Dense(1)]),
        device,
        X,
        seed,
    )


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
) -> tuple[keras.Model, tuple[int, int]]:
    def build() -> keras.Model:
        # the deck's shared layer: one Dense instance at two positions of net.layers
        shared = layers.Dense(8, activation="relu")
        other = shared if tied else layers.Dense(8, activation="relu")
        return keras.Sequential(
            [layers.Flatten(), layers.Dense(8, activation="relu"), shared, other, layers.Dense(1)]
        )

    return _run(build, device, X, seed), (2, 3)


wrap = ut.wrap


def _numpy(t: object) -> np.ndarray:
    """A backend tensor as numpy, through the backend's own API (keras.ops.convert_to_numpy
    warns under numpy 2 on the jax and torch backends)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return t.numpy()
    if backend == "jax":
        return np.asarray(t)
    return t.detach().cpu().numpy()


def forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    return _numpy(tree.native(X))


def loss(y: object) -> object:
    return keras.ops.sum(y)


def native_value(tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
    layer = tree.native.layers[i]
    if leaf == "weight":
        return _numpy(layer.kernel.value).T  # kernel (in, out) -> weight (out, in)
    return _numpy(getattr(layer, leaf).value)


def is_parameter(obj: object) -> bool:
    return isinstance(obj, keras.Variable)


def is_tensor(obj: object) -> bool:
    return keras.ops.is_tensor(obj) and not isinstance(obj, keras.Variable)


class PortModel(keras.Model):
    """The port model of conformance/builder.py: attributes in the spec's order, channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = layers.Embedding(10, 8)
        self.lstm = layers.LSTM(8, return_sequences=True)
        self.norm = layers.LayerNormalization(epsilon=1e-5)
        self.conv = layers.Conv1D(4, 3)  # (B, T, C): channels-last, no transpose
        self.fc = layers.Dense(8)
        self.bn = layers.BatchNormalization(epsilon=1e-5, momentum=0.9)  # torch's 0.1
        self.tied_a = layers.Dense(8)
        self.tied_b = self.tied_a  # the very same layer: one set of variables
        self.out = layers.Dense(3)

    def call(self, x: object, training: bool = False) -> object:
        h = self.conv(self.norm(self.lstm(self.emb(x))))
        h = keras.ops.reshape(h, (-1, 16))  # (B, 16) in T, C order
        h = keras.ops.relu(self.bn(self.fc(h), training=training))
        h = keras.ops.relu(self.tied_a(h))
        return self.out(keras.ops.relu(self.tied_b(h)))


def port_model(device: str, *, seed: int = 0) -> PortModel:
    keras.utils.set_random_seed(seed)
    with keras.device(device):  # variables are created on the first call, under this scope
        net = PortModel()
        net(np.zeros((2, 6), np.int32))
        # random running statistics, set through Keras: the defaults (0, 1) would hide a port
        # that dropped them
        stats = keras.random.SeedGenerator(seed)
        net.bn.moving_mean.assign(keras.random.uniform((8,), -0.5, 0.5, seed=stats))
        net.bn.moving_variance.assign(keras.random.uniform((8,), 0.5, 2.0, seed=stats))
    return net


def port_forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    # training=False: batch norm uses its moving statistics
    return _numpy(tree.native(np.asarray(X, np.int32), training=False))


def random_model(spec: tuple, device: str, *, seed: int = 0) -> keras.Sequential:
    """The random architecture ``spec`` of ``torch.random_model``, channels-last, built by a
    first call under ``device``: the same positions in ``net.layers``, a tie the very layer
    object twice, every variable assigned random values drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)  # Keras's own init, which those values replace, draws too
    shape, specs = spec
    with keras.device(device):
        out: list[keras.Layer] = []
        for kind, *a in specs:
            if kind == "conv":
                out.append((layers.Conv1D, layers.Conv2D)[a[3] - 1](a[1], a[2]))
            elif kind == "bn":
                out.append(layers.BatchNormalization(epsilon=1e-5, momentum=0.9))
            elif kind == "ln":
                out.append(layers.LayerNormalization(epsilon=1e-5))
            elif kind == "dense":
                out.append(layers.Dense(a[1]))
            elif kind == "flatten":
                out.append(layers.Flatten())
            else:
                out.append(out[a[0]])
        net = keras.Sequential(out)
        net(np.zeros((shape[0], *shape[2:], shape[1]), np.float32))
        for v in net.weights:
            lo, hi = (0.5, 2.0) if v.name == "moving_variance" else (-1.0, 1.0)
            v.assign(rng.uniform(lo, hi, tuple(v.shape)).astype(np.float32))
    return net


def native_state(tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
    """Keras's own view of the model: {layer name/variable path: (identity, copy of the
    value)} for the variables of every layer, ties included."""
    return {
        f"{layer.name}/{v.path}": (id(v), _numpy(v.value).copy())
        for layer in tree.native._flatten_layers()
        for v in layer.weights
    }
