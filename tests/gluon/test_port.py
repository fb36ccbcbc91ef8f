"""``ut.port`` and checkpoints between MXNet Gluon 1.9.1 and PyTorch (and Keras on torch), layer
kind by layer kind: the ported model computes what the source computes, on both array APIs."""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import mxnet as mx
import numpy as np
import pytest
import torch
from mxnet import autograd, gluon
from mxnet.gluon import nn, rnn
from torch import nn as tnn
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

pytestmark = [
    # Gluon's own RNN layers read ndarray.context, which 1.9.1 deprecates on numpy-style arrays
    pytest.mark.filterwarnings("ignore:ndarray.context has been renamed"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def random_gluon(block: gluon.Block, api: Any, seed: int = 1) -> gluon.Block:
    """Initialized, then every parameter random through Gluon's own API (biases and norms too,
    which Gluon's initializers set to 0 and 1); running variances positive."""
    block.initialize()
    rng = np.random.default_rng(seed)
    for p in block.collect_params().values():
        low, high = (0.5, 2.0) if p.name.endswith("running_var") else (-0.5, 0.5)
        p.set_data(api.array(rng.uniform(low, high, p.shape).astype(np.float32)))
    return block


def random_torch(module: tnn.Module, seed: int = 2) -> tnn.Module:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                low, high = (0.5, 2.0) if name.endswith("running_var") else (-0.5, 0.5)
                t.copy_(torch.from_numpy(rng.uniform(low, high, t.shape).astype(np.float32)))
    return module.eval()


def run_gluon(block: gluon.Block, x: np.ndarray, api: Any) -> np.ndarray:
    x = x.astype(np.float32)  # Gluon takes float indices too
    if isinstance(block, nn.GroupNorm) and mx.util.is_np_array():
        # 1.9.1's GroupNorm calls a legacy operator that refuses numpy-style arrays (a Gluon
        # bug): its own hybrid_forward, on legacy views of the same arrays
        gamma, beta = (p.data().as_nd_ndarray() for p in (block.gamma, block.beta))
        return block.hybrid_forward(mx.nd, mx.nd.array(x), gamma=gamma, beta=beta).asnumpy()
    with autograd.predict_mode():  # batch norm on its running statistics
        y = block(api.array(x))
    return (y[0] if isinstance(y, (list, tuple)) else y).asnumpy()


def run_torch(module: tnn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module(torch.as_tensor(x))
    return (y[0] if isinstance(y, tuple) else y).numpy()


def close(a: np.ndarray, b: np.ndarray) -> None:
    """One function run by two frameworks, each summing in its own order: equal up to float32
    rounding of the largest output."""
    assert_close(a, b, ulps=PORT_ULPS)


class Case(NamedTuple):
    gluon: Callable[[], gluon.Block]
    torch: Callable[[], tnn.Module]
    x: np.ndarray


TOKENS = np.random.default_rng(3).integers(0, 10, (2, 5))
CASES = {
    "dense": Case(lambda: nn.Dense(5, in_units=4), lambda: tnn.Linear(4, 5), rand(2, 4)),
    "dense_no_flatten": Case(
        lambda: nn.Dense(5, in_units=4, flatten=False), lambda: tnn.Linear(4, 5), rand(2, 3, 4)
    ),
    "conv1d": Case(
        lambda: nn.Conv1D(4, 3, strides=2, padding=1, in_channels=2),
        lambda: tnn.Conv1d(2, 4, 3, stride=2, padding=1),
        rand(2, 2, 9),
    ),
    "conv2d": Case(
        lambda: nn.Conv2D(4, (3, 2), padding=(1, 0), dilation=(1, 2), in_channels=3),
        lambda: tnn.Conv2d(3, 4, (3, 2), padding=(1, 0), dilation=(1, 2)),
        rand(2, 3, 6, 7),
    ),
    "conv3d": Case(
        lambda: nn.Conv3D(2, 2, in_channels=2), lambda: tnn.Conv3d(2, 2, 2), rand(1, 2, 4, 4, 4)
    ),
    "grouped_conv": Case(
        lambda: nn.Conv2D(6, 3, groups=2, in_channels=4),
        lambda: tnn.Conv2d(4, 6, 3, groups=2),
        rand(2, 4, 5, 5),
    ),
    "depthwise_conv": Case(
        lambda: nn.Conv2D(8, 3, padding=1, groups=4, in_channels=4),
        lambda: tnn.Conv2d(4, 8, 3, padding=1, groups=4),
        rand(2, 4, 5, 5),
    ),
    "conv_transpose": Case(
        lambda: nn.Conv2DTranspose(3, 3, strides=2, padding=1, output_padding=1, in_channels=2),
        lambda: tnn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
        rand(2, 2, 4, 5),
    ),
    "grouped_conv_transpose": Case(
        lambda: nn.Conv1DTranspose(6, 3, groups=2, in_channels=4),
        lambda: tnn.ConvTranspose1d(4, 6, 3, groups=2),
        rand(2, 4, 5),
    ),
    "embedding": Case(lambda: nn.Embedding(10, 4), lambda: tnn.Embedding(10, 4), TOKENS),
    "layer_norm": Case(
        lambda: nn.LayerNorm(in_channels=6), lambda: tnn.LayerNorm(6), rand(2, 3, 6)
    ),
    # Gluon's momentum 0.9 is torch's 0.1: the settings agree, so strict ports pass
    "batch_norm": Case(
        lambda: nn.BatchNorm(in_channels=3), lambda: tnn.BatchNorm2d(3), rand(2, 3, 4, 4)
    ),
    # gamma per group in Gluon, per channel in torch: the same function when groups == channels
    "group_norm": Case(
        lambda: nn.GroupNorm(num_groups=4), lambda: tnn.GroupNorm(4, 4), rand(2, 4, 5)
    ),
    "lstm": Case(
        lambda: rnn.LSTM(5, num_layers=2, bidirectional=True, input_size=3, layout="NTC"),
        lambda: tnn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True),
        rand(2, 4, 3),
    ),
    "lstm_projection": Case(
        lambda: rnn.LSTM(6, projection_size=4, bidirectional=True, input_size=3, layout="NTC"),
        lambda: tnn.LSTM(3, 6, proj_size=4, bidirectional=True, batch_first=True),
        rand(2, 4, 3),
    ),
    "gru": Case(
        lambda: rnn.GRU(5, num_layers=2, bidirectional=True, input_size=3, layout="NTC"),
        lambda: tnn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True),
        rand(2, 4, 3),
    ),
}
NAMES = list(CASES)
KINDS = {
    "lstm_projection": "lstm",
    "dense_no_flatten": "dense",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "grouped_conv": "conv",
    "depthwise_conv": "conv",
    "grouped_conv_transpose": "conv_transpose",
}


@pytest.mark.parametrize("name", NAMES)
def test_port_from_torch(api, name):
    case = CASES[name]
    g, t = random_gluon(case.gluon(), api), random_torch(case.torch())
    want = run_torch(t, case.x)
    assert_differ(run_gluon(g, case.x, api), want)
    report = ut.port(t, g)  # strict: the settings agree too
    close(run_gluon(g, case.x, api), want)
    assert [(p.kind, p.rule) for p in report.pairs] == [(KINDS.get(name, name), "path")]
    assert report.settings == [] and report.skipped == []


@pytest.mark.parametrize("name", NAMES)
def test_port_to_torch(api, name):
    case = CASES[name]
    g, t = random_gluon(case.gluon(), api), random_torch(case.torch())
    want = run_gluon(g, case.x, api)
    assert_differ(run_torch(t, case.x), want)
    ut.port(g, t)
    close(run_torch(t, case.x), want)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_onto_gluon_and_torch(api, name, tmp_path):
    case = CASES[name]
    g = random_gluon(case.gluon(), api)
    ut.save(ut.wrap(g), tmp_path / "g.safetensors")
    fresh = random_gluon(case.gluon(), api, seed=4)
    assert ut.load(ut.wrap(fresh), tmp_path / "g.safetensors") == ([], [])
    want, got = ut.wrap(g).state_dict(), ut.wrap(fresh).state_dict()
    assert list(got) == list(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    t = random_torch(case.torch())
    ut.load(ut.wrap(t), tmp_path / "g.safetensors")  # torch's num_batches_tracked: optional
    close(run_torch(t, case.x), run_gluon(g, case.x, api))


def test_lstm_and_gru_leaves_have_torchs_names(api):
    for gluon_rnn, torch_rnn, _ in (CASES["lstm"], CASES["gru"]):
        g, t = random_gluon(gluon_rnn(), api), torch_rnn()
        assert [(k, p.shape) for k, p in ut.wrap(g).named_parameters()] == [
            (k, tuple(p.shape)) for k, p in t.named_parameters()
        ]


def test_group_norm_with_fewer_groups_than_channels_is_not_torchs(api):
    """Gluon's GroupNorm scales per group (num_groups,), torch's per channel: no port."""
    g, t = random_gluon(nn.GroupNorm(num_groups=2), api), random_torch(tnn.GroupNorm(2, 4))
    before = ut.wrap(g).state_dict()
    with pytest.raises(
        ut.PortError,
        match=r"\(4,\)\): no destination .*GroupNorm: \w+ \(2,\).*does not fit: the shapes differ",
    ):
        ut.port(t, g)
    for key, value in ut.wrap(g).state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_a_channels_last_conv_keeps_its_native_layout(api):
    """Gluon's NHWC conv holds (out, *k, in): no layout rule says so, so it is shown as it is."""
    conv = nn.Conv2D(6, (3, 5), layout="NHWC", in_channels=2)
    conv.initialize()
    tree = ut.wrap(conv)
    assert tree.kind is None and tree["weight"].shape == (6, 3, 5, 2)


# -- models: structure, flatten, activations, ties ----------------------------------------------
def conv_dense(api: Any, seed: int = 1) -> tuple[gluon.Block, tnn.Module]:
    g = nn.Sequential()  # Gluon's Dense flattens (C, H, W) by itself: no Flatten layer
    g.add(nn.Conv2D(4, 3, in_channels=2), nn.Dense(3, in_units=4 * 3 * 4))
    t = tnn.Sequential(tnn.Conv2d(2, 4, 3), tnn.Flatten(), tnn.Linear(4 * 3 * 4, 3))
    return random_gluon(g, api, seed), random_torch(t, seed + 1)


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_conv_then_dense_matched_by_rank(api, direction):
    g, t = conv_dense(api)
    x = rand(2, 2, 5, 6)
    report = ut.port(t, g) if direction == "from_torch" else ut.port(g, t)
    close(run_gluon(g, x, api), run_torch(t, x))
    assert [(p.src, p.dst, p.rule) for p in report.pairs] == (
        [("0", "0", "path"), ("2", "1", "path")]
        if direction == "from_torch"
        else [("0", "0", "path"), ("1", "2", "path")]
    )
    assert any("flatten=True" in note for note in report.notes)


def test_dense_with_activation_against_linear_and_relu(api):
    def gluon_mlp(seed: int) -> gluon.Block:
        g = nn.Sequential()
        g.add(nn.Dense(8, activation="relu", in_units=4), nn.Dense(1, in_units=8))
        return random_gluon(g, api, seed)

    def torch_mlp(seed: int) -> tnn.Module:
        return random_torch(tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.Linear(8, 1)), seed)

    x = rand(3, 4)
    g, t = gluon_mlp(1), torch_mlp(2)
    report = ut.port(t, g)
    close(run_gluon(g, x, api), run_torch(t, x))
    assert report.rules == {"path": 2}
    g, t = gluon_mlp(3), torch_mlp(4)
    report = ut.port(g, t)
    close(run_torch(t, x), run_gluon(g, x, api))
    assert report.rules == {"path": 2}


SETTINGS = {
    "eps": (lambda: nn.BatchNorm(epsilon=1e-3, in_channels=3), lambda: tnn.BatchNorm2d(3)),
    "momentum": (lambda: nn.BatchNorm(momentum=0.99, in_channels=3), lambda: tnn.BatchNorm2d(3)),
    "padding": (lambda: nn.Conv2D(4, 3, in_channels=3), lambda: tnn.Conv2d(3, 4, 3, padding=1)),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_setting_that_differs(api, setting):
    make_gluon, make_torch = SETTINGS[setting]
    g, t = random_gluon(make_gluon(), api), random_torch(make_torch())
    before = ut.wrap(g).state_dict()
    with pytest.raises(ut.PortError, match=setting):
        ut.port(t, g)
    for key, value in ut.wrap(g).state_dict().items():  # nothing written
        np.testing.assert_array_equal(value, before[key])
    report = ut.port(t, g, strict=False)
    assert len(report.settings) == 1 and report.settings[0].startswith(f"(root): {setting} is")
    np.testing.assert_array_equal(ut.wrap(g)["weight"].numpy(), t.weight.detach().numpy())


def test_a_tie_ported_from_torch_is_kept(api):
    shared = tnn.Linear(4, 4)
    t = random_torch(tnn.Sequential(shared, tnn.ReLU(), shared))
    dense = nn.Dense(4, in_units=4)
    g = nn.Sequential()
    g.add(dense, nn.Activation("relu"), dense)
    g = random_gluon(g, api)
    report = ut.port(t, g)
    assert report.ties_kept == [("0.weight", "2.weight"), ("0.bias", "2.bias")]
    assert not report.ties_split and g[0].weight is g[2].weight
    x = rand(2, 4)
    close(run_gluon(g, x, api), run_torch(t, x))


# -- Keras 3 on its torch backend, in this environment too -------------------------------------
def test_port_with_keras(api):
    os.environ.setdefault("KERAS_BACKEND", "torch")  # what nox sets; keras reads it at import
    import keras

    assert keras.backend.backend() == "torch"
    k = keras.Sequential(
        [
            keras.Input((5, 6, 2)),
            keras.layers.Conv2D(4, 3),
            keras.layers.Flatten(),  # (H, W, C) order: the dense kernel is permuted canonically
            keras.layers.Dense(3),
        ]
    )
    rng = np.random.default_rng(5)
    for layer in k.layers:
        layer.set_weights([rng.uniform(-0.5, 0.5, w.shape) for w in layer.get_weights()])
    x = rand(2, 2, 5, 6)

    def run_keras() -> np.ndarray:
        return keras.ops.convert_to_numpy(k(x.transpose(0, 2, 3, 1)))

    g, _ = conv_dense(api)
    report = ut.port(k, g)
    close(run_gluon(g, x, api), run_keras())
    assert report.rules == {"path": 2}
    g, _ = conv_dense(api, seed=6)
    ut.port(g, k)
    close(run_keras(), run_gluon(g, x, api))
