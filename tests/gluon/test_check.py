"""A torch MLP against its Gluon twin (``Dense(16, activation="relu")``: the activation folded
in), run natively and compared layer by layer (``unitree._check``), hybridized or not, on both
array APIs: each Gluon block is caught before its activation, as torch's ``Linear`` gives it; a
perturbed block is named first; the final difference is what both frameworks compute."""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
import pytest
import torch
from mxnet.gluon import nn
from torch import nn as tnn

from unitree._canon import layers
from unitree._check import DIFFERS, OK, compare_models
from unitree._tree import view_of


def torch_mlp() -> tnn.Sequential:
    torch.manual_seed(0)
    return tnn.Sequential(
        tnn.Linear(4, 16), tnn.ReLU(), tnn.Linear(16, 16), tnn.ReLU(), tnn.Linear(16, 2)
    )


def gluon_twin(src: tnn.Sequential, api: Any, hybridize: bool) -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(
        nn.Dense(16, activation="relu", in_units=4),
        nn.Dense(16, activation="relu", in_units=16),
        nn.Dense(2, in_units=16),
    )
    net.initialize()
    for block, m in zip(net, [m for m in src if isinstance(m, tnn.Linear)]):
        block.weight.set_data(api.array(m.weight.detach().numpy()))
        block.bias.set_data(api.array(m.bias.detach().numpy()))
    if hybridize:
        net.hybridize()
        net(api.array(np.zeros((1, 4), np.float32)))  # the cached graph exists
    return net


def hand_pairs(src: Any, dst: Any) -> list[tuple[str, Any, str, Any]]:
    ls, ld = layers(view_of(src)), layers(view_of(dst))
    assert len(ls) == len(ld) == 3
    return [(a.path, a.module, b.path, b.module) for a, b in zip(ls, ld)]


def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def natively(src: tnn.Module, dst: nn.Block, x: np.ndarray, api: Any) -> float:
    with torch.no_grad():
        a = src(torch.from_numpy(x)).numpy()
    b = dst(api.array(x)).asnumpy()
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("hybridize", [False, True])
def test_a_gluon_twin_agrees_layer_by_layer_before_its_activations(api: Any, hybridize: bool):
    src = torch_mlp()
    dst = gluon_twin(src, api, hybridize)
    x = inputs()
    c = compare_models(view_of(src), view_of(dst), hand_pairs(src, dst), x)
    assert c.ok and [r.status for r in c.rows] == [OK, OK, OK], str(c)
    np.testing.assert_allclose(c.output_difference, natively(src, dst, x, api), rtol=1e-6, atol=0)
    blocks = [dst, *dst, *(b.act for b in dst if b.act is not None)]
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in blocks)  # hooks gone
    assert all(b._active == hybridize for b in dst)  # hybridized as it was


@pytest.mark.parametrize("hybridize", [False, True])
def test_a_perturbed_gluon_block_is_named_first(api: Any, hybridize: bool):
    src = torch_mlp()
    dst = gluon_twin(src, api, hybridize)
    w = dst[1].weight.data().asnumpy()
    w[3, 2] += 0.5
    dst[1].weight.set_data(api.array(w))
    x = inputs()
    ps = hand_pairs(src, dst)
    c = compare_models(view_of(src), view_of(dst), ps, x)
    assert [r.status for r in c.rows] == [OK, DIFFERS, DIFFERS]
    assert (c.first_difference.src, c.first_difference.dst) == ("2", "1")
    expected = natively(src, dst, x, api)
    assert expected > 1e-2
    np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)


def test_inference_mode_whatever_the_callers_autograd_scope(api: Any):
    """Inside the caller's ``autograd.record(train_mode=True)``, dropout stays off for the run."""
    src = torch_mlp()
    dst = gluon_twin(src, api, False)
    dst.add(nn.Dropout(0.5))
    x = inputs()
    with mx.autograd.record(train_mode=True):
        c = compare_models(view_of(src), view_of(dst), hand_pairs(src, dst), x)
    assert c.ok
