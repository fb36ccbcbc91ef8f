"""A norm that keeps a leaf it does not apply: Gluon's ``BatchNorm(scale=False)``.

Gluon keeps gamma (ones, not trained) and its operator normalizes with 1 instead
(``fix_gamma``); it still adds beta whatever ``center`` says. PyTorch's ``BatchNorm2d``
applies its weight: the leaves and shapes agree, the functions do not, so the port is
refused, naming ``scale``. The expectation is PyTorch's own output on the same input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mxnet import autograd
from mxnet.gluon import nn
from torch import nn as tnn
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

pytestmark = pytest.mark.filterwarnings("ignore:ndarray.context has been renamed")


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 4, 4)).astype(np.float32)


def torch_norm() -> tnn.Module:
    """A torch BatchNorm2d with random weight, bias and statistics (variances positive)."""
    rng = np.random.default_rng(2)
    norm = tnn.Sequential(tnn.BatchNorm2d(3))
    with torch.no_grad():
        for name, t in norm.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                low, high = (0.5, 2.0) if name.endswith("running_var") else (-0.5, 0.5)
                t.copy_(torch.from_numpy(rng.uniform(low, high, t.shape).astype(np.float32)))
    return norm.eval()


def gluon_norm(**kwargs: Any) -> nn.Sequential:
    norm = nn.Sequential()
    norm.add(nn.BatchNorm(in_channels=3, **kwargs))
    norm.initialize()
    return norm


def run_gluon(block: nn.Block, x: np.ndarray, api: Any) -> np.ndarray:
    with autograd.predict_mode():  # batch norm on its running statistics
        return block(api.array(x)).asnumpy()


def run_torch(module: tnn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_a_gamma_gluon_does_not_apply_is_a_difference(api: Any) -> None:
    x = image()
    src = torch_norm()
    dst = gluon_norm(scale=False)
    with pytest.raises(ut.PortError, match="scale is True in the torch"):
        ut.port(src, dst)
    ut.port(src, dst, strict=False)  # copied anyway: gamma is written, and ignored
    np.testing.assert_array_equal(dst[0].gamma.data().asnumpy(), src[0].weight.detach().numpy())
    assert_differ(run_gluon(dst, x, api), run_torch(src, x))


def test_center_false_still_adds_beta(api: Any) -> None:
    """``center=False`` only stops training beta: the function is PyTorch's, and ports."""
    x = image()
    src = torch_norm()
    dst = gluon_norm(center=False)
    ut.port(src, dst)
    assert_close(run_gluon(dst, x, api), run_torch(src, x), ulps=PORT_ULPS)
