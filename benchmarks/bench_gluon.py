"""wrap + traversal of a 10,000-tensor Gluon model against ``collect_params``; zero-copy reads."""

from __future__ import annotations

import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from run import SEED, traversal

import unitree as ut


def main(runs: int) -> None:
    mx.random.seed(SEED)  # Gluon's initializers
    layers = 5000  # a weight and a bias each: 10,000 tensors
    model = nn.Sequential()
    model.add(*[nn.Dense(4, in_units=4) for _ in range(layers)])
    model.initialize()
    n = len(list(model.collect_params()))
    native = lambda: list(model.collect_params().items())  # noqa: E731
    traversal(f"gluon, {n:,} tensors: ", "collect_params", native, lambda: ut.wrap(model), runs)

    dense = nn.Dense(256, in_units=256)
    dense.initialize()
    p = ut.wrap(dense)["weight"]
    print(f"{'p.numpy() shares memory with the NDArray':<44} {_shares(p)}")
    print(f"mxnet {mx.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")


def _shares(p: ut.Param) -> bool:
    """Whether a write into Gluon's array shows in an earlier p.numpy(): np.shares_memory cannot
    ask, since an MXNet array exposes no buffer of its own to numpy."""
    a = p.numpy()
    p.native.data()[0, 0] = 12345.0
    mx.nd.waitall()
    return bool(a[0, 0] == 12345.0)
