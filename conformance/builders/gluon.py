"""The deck's models in MXNet Gluon, as ../shared/deck/mxnet-gluon.txt builds them.

The deck turns on numpy-style arrays (``npx.set_np()``) and puts the ReLU
inside the first Dense layer, so its toy model has its dense layers at 0 and
1. Its shared-layer example uses the 2.x ``share_parameters``; 1.9.1 shares
with ``params=shared.params`` instead.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import npx
from mxnet.gluon import Block, Parameter, nn

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


def _run(net: Block, X: np.ndarray, device: str) -> Block:
    net.initialize(ctx=_ctx(device))  # the deck's default initialization
    net(mx.np.array(X, ctx=_ctx(device)))  # the deck's first call: deferred shapes are decided
    return net


def deck_mlp(device: str, X: np.ndarray) -> Block:
    npx.set_np()
    net = nn.Sequential()
    net.add(nn.Dense(8, activation="relu"))
    net.add(nn.Dense(1))
    return _run(net, X, device)


def mlp(device: str, X: np.ndarray) -> Block:
    npx.set_np()
    net = nn.Sequential()
    net.add(nn.Dense(8), nn.Activation("relu"), nn.Dense(1))
    return _run(net, X, device)


def deck_tied(device: str, X: np.ndarray, tied: bool = True) -> tuple[Block, tuple[int, int]]:
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
    return _run(net, X, device), (1, 2)


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
