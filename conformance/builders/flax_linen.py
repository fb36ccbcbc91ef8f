"""The deck's models in Flax linen, as the deck's JAX/Flax chapter builds them.

A linen model is its module and its variables: the builders hand ``wrap`` the
pair ``(module, variables)`` that ``module.init`` made.
"""

from __future__ import annotations

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


def _init(net: nn.Module, X: np.ndarray, device: str, seed: int) -> Model:
    # the deck's d2l.get_key(): a key per model, here the one ``seed`` names
    with jax.default_device(_device(device)):
        return net, net.init(jax.random.key(seed), X)


def deck_mlp(device: str, X: np.ndarray, *, seed: int = 0) -> Model:
    return _init(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)]), X, device, seed)


mlp = deck_mlp  # the deck's linen model is already dense, ReLU, dense


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
) -> tuple[Model, tuple[int, int]]:
    # We need to give the shared layer a name so that we can refer to its parameters
    shared = nn.Dense(8)
    other = shared if tied else nn.Dense(8)
    net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, other, nn.relu, nn.Dense(1)])
    model = _init(net, X, device, seed)
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


class PortModel(nn.Module):
    """The port model of conformance/builder.py. ``tied_b`` is ``tied_a``: linen keeps one set of
    variables, under ``tied_a``, and unitree shows it at both attribute names."""

    def setup(self) -> None:
        self.emb = nn.Embed(10, 8)
        self.lstm = nn.RNN(nn.LSTMCell(8))
        self.norm = nn.LayerNorm(epsilon=1e-5)
        self.conv = nn.Conv(4, (3,), padding="VALID")
        self.fc = nn.Dense(8)
        self.bn = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
        self.tied_a = nn.Dense(8)
        self.tied_b = self.tied_a
        self.out = nn.Dense(3)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(self.lstm(self.emb(x)))
        h = self.conv(h)  # channels-last (B, T, C): no transpose
        h = h.reshape(h.shape[0], -1)  # (B, 16) in T, C order
        h = nn.relu(self.bn(self.fc(h)))
        h = nn.relu(self.tied_a(h))
        return self.out(nn.relu(self.tied_b(h)))


def port_model(device: str, *, seed: int = 0) -> Model:
    net = PortModel()
    with jax.default_device(_device(device)):
        variables = net.init(jax.random.key(seed), np.zeros((2, 6), np.int32))
        rng = np.random.default_rng(seed)  # random running statistics: a dict like any other
        stats = {
            "mean": jax.numpy.asarray(rng.uniform(-0.5, 0.5, 8), np.float32),
            "var": jax.numpy.asarray(rng.uniform(0.5, 2.0, 8), np.float32),
        }
    return net, {**variables, "batch_stats": {"bn": stats}}


def port_forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    # tree.variables: the values every write so far made (linen's arrays are immutable)
    leaf = jax.tree_util.tree_leaves(tree.variables)[0]
    x = jax.device_put(np.asarray(X, np.int32), next(iter(leaf.devices())))
    return np.asarray(tree.native.apply(tree.variables, x))


def random_model(spec: tuple, device: str, *, seed: int = 0) -> Model:
    """The random architecture ``spec`` of ``torch.random_model``, channels-last: an
    ``nn.Sequential`` (positions ``layers_N``), a tie the very module instance at two positions
    (linen stores it once), initialized on ``device`` from ``seed``, then every variable
    replaced by random values drawn from ``seed``."""
    shape, specs = spec
    out: list = []
    for kind, *a in specs:
        if kind == "conv":
            out.append(nn.Conv(a[1], (a[2],) * a[3], padding="VALID"))
        elif kind == "bn":
            out.append(nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5))
        elif kind == "ln":
            out.append(nn.LayerNorm(epsilon=1e-5))
        elif kind == "dense":
            out.append(nn.Dense(a[1]))
        elif kind == "flatten":
            out.append(lambda x: x.reshape(x.shape[0], -1))
        else:
            out.append(out[a[0]])
    net = nn.Sequential(out)
    rng = np.random.default_rng(seed)
    with jax.default_device(_device(device)):
        variables = net.init(jax.random.key(seed), np.zeros((shape[0], *shape[2:], shape[1])))
        flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
        for key, v in flat.items():
            lo, hi = (0.5, 2.0) if key.endswith("var") else (-1.0, 1.0)
            flat[key] = jax.numpy.asarray(rng.uniform(lo, hi, v.shape).astype(np.float32))
    return net, flax.traverse_util.unflatten_dict(flat, sep="/")


def native_state(tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
    """Linen's own view of the model: its variables dict, flattened (arrays are immutable:
    identity is not part of it)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree.variables), sep="/")
    return {k: (0, np.array(v)) for k, v in flat.items()}
