"""The deck's models in MXNet Gluon, as the deck's MXNet chapter builds them.

The deck turns on numpy-style arrays (``npx.set_np()``) and puts the ReLU
inside the first Dense layer, so its toy model has its dense layers at 0 and
1. Its shared-layer example uses the 2.x ``share_parameters``; 1.9.1 shares
with ``params=shared.params`` instead.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, npx
from mxnet.gluon import Block, Parameter, nn, rnn

import unitree as ut

name = label = "gluon"
version = mx.__version__
names = {"sequential": "Sequential", "dense": "Dense", "relu": "Activation"}  # 1.9.1 has no nn.ReLU
can_tie = True
deck_layers = (0, 1)


def devices() -> list[str]:
    return ["cpu"] + [f"gpu:{i}" for i in range(mx.context.num_gpus())]


def _ctx(device: str) -> mx.Context:
    return mx.cpu() if device == "cpu" else mx.gpu(int(device.partition(":")[2]))


def _run(net: Block, X: np.ndarray, device: str, seed: int) -> Block:
    mx.random.seed(seed)  # MXNet's global generator (every context's): the initializers draw
    net.initialize(ctx=_ctx(device))  # the deck's default initialization
    net(mx.np.array(X, ctx=_ctx(device)))  # the deck's first call: deferred shapes are decided
    return net


def deck_mlp(device: str, X: np.ndarray, *, seed: int = 0) -> Block:
    npx.set_np()
    net = nn.Sequential()
    net.add(nn.Dense(8, activation="relu"))
    net.add(nn.Dense(1))
    return _run(net, X, device, seed)


def mlp(device: str, X: np.ndarray, *, seed: int = 0) -> Block:
    npx.set_np()
    net = nn.Sequential()
    net.add(nn.Dense(8), nn.Activation("relu"), nn.Dense(1))
    return _run(net, X, device, seed)


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
) -> tuple[Block, tuple[int, int]]:
    npx.set_np()
    net = nn.Sequential()
    shared = nn.Dense(8, activation="relu")
    if not tied:
        shared_clone = nn.Dense(8, activation="relu")
    elif hasattr(shared, "share_parameters"):  # MXNet 2.x, as the deck writes it
        shared_clone = nn.Dense(8, activation="relu")
        shared_clone.share_parameters(shared.collect_params())
    else:
        shared_clone = nn.Dense(8, activation="relu", params=shared.params)
    net.add(nn.Dense(8, activation="relu"), shared, shared_clone, nn.Dense(10))
    return _run(net, X, device, seed), (1, 2)


wrap = ut.wrap


def forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    net = tree.native
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    return net(mx.np.array(X, ctx=ctx)).asnumpy()


def loss(y: mx.np.ndarray) -> mx.np.ndarray:
    return y.sum()


def native_value(tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
    return getattr(tree.native[i], leaf).data().asnumpy()


def is_parameter(obj: object) -> bool:
    return isinstance(obj, Parameter)


def is_tensor(obj: object) -> bool:
    return isinstance(obj, mx.nd.NDArray)  # mx.np.ndarray subclasses it


class PortModel(Block):
    """The port model of conformance/builder.py. A plain Block: its ReLUs and the transpose are
    calls in forward, so the children are exactly the nine layers (tied_b is tied_a)."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.emb = nn.Embedding(10, 8)
            self.lstm = rnn.LSTM(8, input_size=8, layout="NTC")
            self.norm = nn.LayerNorm(epsilon=1e-5, in_channels=8)
            self.conv = nn.Conv1D(4, 3, in_channels=8)  # NCW: fed (B, C, T)
            self.fc = nn.Dense(8, in_units=16)  # flatten=True: (B, 4, 4) -> (B, 16) in C, W order
            self.bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, in_channels=8)
            self.tied_a = nn.Dense(8, in_units=8)
            self.tied_b = self.tied_a  # registered again under its own name: one set of Parameters
            self.out = nn.Dense(3, in_units=8)

    def forward(self, x: mx.np.ndarray) -> mx.np.ndarray:
        h = self.norm(self.lstm(self.emb(x)))
        h = self.fc(self.conv(h.swapaxes(1, 2)))
        h = npx.relu(self.bn(h))
        h = npx.relu(self.tied_a(h))
        return self.out(npx.relu(self.tied_b(h)))


def port_model(device: str, *, seed: int = 0) -> Block:
    npx.set_np()
    ctx = _ctx(device)
    net = PortModel()
    mx.random.seed(seed)
    # Gluon's own Xavier init: its default Uniform(0.07) ignores fan-in, and nine layers of it
    # shrink the outputs to near 1e-5; Xavier keeps them near 1, as the other frameworks do
    net.initialize(mx.init.Xavier(), ctx=ctx)  # every shape is given: nothing deferred
    rng = np.random.default_rng(seed)
    net.bn.running_mean.set_data(mx.np.array(rng.uniform(-0.5, 0.5, 8), dtype="float32", ctx=ctx))
    net.bn.running_var.set_data(mx.np.array(rng.uniform(0.5, 2.0, 8), dtype="float32", ctx=ctx))
    return net


def port_forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    net = tree.native
    ctx = net.emb.weight.list_ctx()[0]
    with autograd.predict_mode():  # batch norm on its running statistics
        return net(mx.np.array(X, dtype="float32", ctx=ctx)).asnumpy()


def random_model(spec: tuple, device: str, *, seed: int = 0) -> Block:
    """The random architecture ``spec`` of ``torch.random_model``, channels-first: an
    ``nn.Sequential`` with every shape given (nothing deferred), a tie the very block added
    twice, every Parameter set to random values on ``device``, drawn from ``seed``."""
    npx.set_np()
    rng = np.random.default_rng(seed)
    ctx = _ctx(device)
    out: list[Block] = []
    for kind, *a in spec[1]:
        if kind == "conv":
            conv = (nn.Conv1D, nn.Conv2D)[a[3] - 1]
            out.append(conv(a[1], (a[2],) * a[3], in_channels=a[0]))
        elif kind == "bn":
            out.append(nn.BatchNorm(momentum=0.9, epsilon=1e-5, in_channels=a[0]))
        elif kind == "ln":
            out.append(nn.LayerNorm(epsilon=1e-5, in_channels=a[0]))
        elif kind == "dense":
            out.append(nn.Dense(a[1], in_units=a[0]))
        elif kind == "flatten":
            out.append(nn.Flatten())
        else:
            out.append(out[a[0]])
    net = nn.Sequential()
    net.add(*out)
    mx.random.seed(seed)  # Gluon's own init, which the values below replace, draws too
    net.initialize(ctx=ctx)
    for p in net.collect_params().values():
        lo, hi = (0.5, 2.0) if p.name.endswith("var") else (-1.0, 1.0)
        value = rng.uniform(lo, hi, p.shape).astype(np.float32)
        p.set_data(mx.np.array(value, dtype="float32", ctx=ctx))
    return net


def native_state(tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
    """Gluon's own view of the model: {child path.param: (identity, copy of the value)} for
    every block's registered parameters, ties included."""
    out: dict[str, tuple[int, np.ndarray]] = {}

    def visit(block: Block, prefix: str) -> None:
        for name, p in block._reg_params.items():
            out[prefix + name] = (id(p), p.data().asnumpy().copy())
        for name, child in block._children.items():
            visit(child, f"{prefix}{name}.")  # 1.9.1 keeps the blocks themselves

    visit(tree.native, "")
    return out
