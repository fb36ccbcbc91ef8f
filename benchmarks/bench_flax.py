"""wrap + traversal of 10,000-tensor flax models against the framework's own traversals:
``jax.tree_util.tree_flatten_with_path`` of linen variables, ``nnx.state`` of an NNX model;
zero-copy reads."""

from __future__ import annotations

import sys

import bench_checkpoint
import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx
from run import SEED, traversal

import unitree as ut

LAYERS = 5000  # a kernel and a bias each: 10,000 tensors


def linen(runs: int) -> None:
    net = nn.Sequential([nn.Dense(4) for _ in range(LAYERS)])
    # shapes without running 5,000 initializers, then small real arrays
    shapes = jax.eval_shape(net.init, jax.random.key(SEED), jnp.ones((1, 4)))
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    n = len(jax.tree_util.tree_leaves(variables))
    traversal(
        f"linen, {n:,} tensors: ",
        "tree_flatten_with_path",
        lambda: jax.tree_util.tree_flatten_with_path(variables),
        lambda: ut.wrap(net, variables),
        runs,
    )

    layer = nn.Dense(256)
    small = layer.init(jax.random.key(SEED), jnp.ones((1, 256)))
    p = ut.wrap(layer, small)["weight"]
    shared = np.shares_memory(p.numpy(), np.asarray(small["params"]["kernel"]))
    print(f"{'linen: p.numpy() shares memory with the array':<44} {shared}")


def nnx_model(runs: int) -> None:
    rngs = nnx.Rngs(SEED)
    model = nnx.Sequential(*[nnx.Linear(4, 4, rngs=rngs) for _ in range(LAYERS)])
    n = len(jax.tree_util.tree_leaves(nnx.state(model)))
    native = lambda: nnx.state(model)  # noqa: E731
    traversal(f"nnx, {n:,} tensors: ", "nnx.state", native, lambda: ut.wrap(model), runs)

    layer = nnx.Linear(256, 256, rngs=rngs)
    p = ut.wrap(layer)["weight"]
    shared = np.shares_memory(p.numpy(), np.asarray(layer.kernel[...]))
    print(f"{'nnx: p.numpy() shares memory with the array':<44} {shared}")


def main(runs: int) -> None:
    linen(runs)
    nnx_model(runs)
    bench_checkpoint.ports(runs)
    print(
        f"flax {flax.__version__}, jax {jax.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}"
    )
