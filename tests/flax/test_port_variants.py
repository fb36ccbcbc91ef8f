"""Module variants ported between PyTorch and flax (linen and NNX): Hugging Face's ``Conv1D``
through the rule unitree ships for it, an unregistered third-party type refused, and a
weight-normed torch layer through its effective weight.

Each torch layer sits in a one-layer ``Sequential`` (path ``0``) beside a flax ``Dense`` in
one; the expectation is the source model's own output on the same input.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx
from unitree_checks import PORT_ULPS, assert_close, assert_differ
from unitree_variants import STYLES, Foreign, hugging_face_conv1d, weight_normed

import unitree as ut

torch.set_num_threads(1)  # tiny layers: threads only cost here


def floats(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


X = floats(5, 8, seed=7)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn from N(0, 1): a port that transposed nothing must not pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def torch_out(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


class Linen:
    @staticmethod
    def tree(seed: int = 1) -> ut.ParamTree:
        module = nn.Sequential([nn.Dense(8)])
        variables = module.init(jax.random.key(seed), X)
        variables = jax.tree_util.tree_map(
            lambda a: floats(*a.shape, seed=seed + a.ndim), variables
        )
        return ut.wrap(module, variables)

    @staticmethod
    def out(tree: ut.ParamTree) -> np.ndarray:
        return np.asarray(tree.native.apply(tree.variables, X))


class NNX:
    @staticmethod
    def tree(seed: int = 1) -> ut.ParamTree:
        model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(seed)))
        for _, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param):
                var[...] = floats(*var[...].shape, seed=seed + var[...].ndim)
        return ut.wrap(model)

    @staticmethod
    def out(tree: ut.ParamTree) -> np.ndarray:
        return np.asarray(tree.native(X))


APIS = {"linen": Linen, "nnx": NNX}


@pytest.fixture(params=list(APIS))
def api(request: pytest.FixtureRequest) -> Any:
    return APIS[request.param]


def test_hugging_faces_conv1d_ports_into_a_dense_layer_and_back(api, monkeypatch):
    conv1d = hugging_face_conv1d(monkeypatch)
    src = randomized(torch.nn.Sequential(conv1d(8, 8)))
    dst = api.tree()
    assert_differ(api.out(dst), torch_out(src))
    report = ut.port(src, dst)
    assert [(p.src, p.dst, p.kind) for p in report.pairs] == [("0", "0", "dense")]
    assert_close(api.out(dst), torch_out(src), ulps=PORT_ULPS)

    src, dst = api.tree(seed=3), torch.nn.Sequential(conv1d(8, 8))
    ut.port(src, dst)
    assert_close(torch_out(dst), api.out(src), ulps=PORT_ULPS)


def test_an_unregistered_type_is_refused_against_a_dense_layer(api):
    src = torch.nn.Sequential(Foreign(8, 8))
    dst = api.tree()
    before = dst.state_dict()
    with pytest.raises(ut.PortError, match="Foreign"):
        ut.port(src, dst)
    after = dst.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing written


@pytest.mark.parametrize("style", STYLES)
def test_a_weight_normed_torch_layer_ports_into_a_dense_layer_and_back(api, style):
    src = randomized(torch.nn.Sequential(torch.nn.Linear(8, 8)))
    weight_normed(src[0], style)
    dst = api.tree()
    ut.port(src, dst)
    assert_close(api.out(dst), torch_out(src), ulps=PORT_ULPS)

    src, dst = api.tree(seed=3), torch.nn.Sequential(torch.nn.Linear(8, 8))
    weight_normed(dst[0], style, dim=None)
    ut.port(src, dst)
    assert_close(torch_out(dst), api.out(src), ulps=PORT_ULPS)
