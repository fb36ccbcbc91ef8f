"""Gluon's fused RNN layers of any depth: the 17th layer and later used to keep Gluon's names
(the rename table stopped at 16 layers), so a deep LSTM could not be ported or loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mxnet import autograd
from mxnet.gluon import rnn
from torch import nn as tnn
from unitree_checks import PORT_ULPS, assert_close

import unitree as ut

pytestmark = pytest.mark.filterwarnings("ignore:ndarray.context has been renamed")

LAYERS = 18


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_a_deep_bidirectional_rnn_ports_to_torch_and_back(api, kind):
    g = getattr(rnn, kind)(4, num_layers=LAYERS, bidirectional=True, input_size=3, layout="NTC")
    g.initialize()
    rng = np.random.default_rng(0)
    for p in g.collect_params().values():
        p.set_data(api.array(rng.uniform(-0.5, 0.5, p.shape).astype(np.float32)))
    torch.manual_seed(0)
    t = getattr(tnn, kind)(3, 4, num_layers=LAYERS, bidirectional=True, batch_first=True)
    tree = ut.wrap(g)
    names = [path for path, _ in tree.named_parameters()]
    assert names == [path for path, _ in t.named_parameters()]  # torch's names, in its order
    x = rng.uniform(-1, 1, (2, 5, 3)).astype(np.float32)
    with autograd.predict_mode():
        want = g(api.array(x)).asnumpy()
    ut.port(tree, t)
    with torch.no_grad():
        got = t(torch.from_numpy(x))[0].numpy()
    # 18 stacked layers of float32 sums of a few terms each, values in (-1, 1): two frameworks'
    # rounding, relative to the largest output
    assert_close(got, want, ulps=PORT_ULPS)
