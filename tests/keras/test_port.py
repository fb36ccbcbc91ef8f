"""``ut.port``, ``ut.save`` and ``ut.load`` between Keras and PyTorch, layer kind by layer kind.

Each case builds the same function twice, as a small Keras model and as a small torch model
with the same hyper-parameters (epsilons set equal: Keras's default is 1e-3, torch's 1e-5), and
checks that after a port, in either direction, both frameworks compute the same outputs on the
same input; and that a canonical checkpoint written from Keras reads back into Keras unchanged
and into torch with equal outputs. Keras runs channels-last, torch channels-first: inputs and
outputs are transposed here, as a user would. The same file runs on every Keras backend.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch import nn
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_rng() -> None:
    """Each test draws the same inputs and values, whatever ran before it."""
    global RNG
    RNG = np.random.default_rng(0)


def close(actual: np.ndarray, desired: np.ndarray) -> None:
    """One function computed by Keras and by torch, each summing in its own order: equal up to
    float32 rounding of the largest output."""
    assert_close(actual, desired, ulps=PORT_ULPS)


def to_numpy(t: Any) -> np.ndarray:
    """A backend tensor as numpy, through the backend's own API."""
    if BACKEND == "tensorflow":
        return np.array(t.numpy())
    if BACKEND == "jax":
        return np.array(t)
    return t.detach().cpu().numpy().copy()


class Torch(nn.Module):
    """One torch layer at path "0" (as in a Keras model), called as its kind needs."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.add_module("0", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self._modules["0"]
        if isinstance(layer, nn.MultiheadAttention):
            return layer(x, x, x, need_weights=False)[0]
        if isinstance(layer, (nn.LSTM, nn.GRU)):
            return layer(x)[0]  # the whole sequence, as return_sequences=True
        return layer(x)


class Case(NamedTuple):
    keras: Callable[[], keras.Layer]  # the Keras layer
    torch: Callable[[], nn.Module]  # the torch layer with the same hyper-parameters
    shape: tuple[int, ...]  # the Keras input's shape (channels last)
    channels: bool = False  # a channels axis to move for torch (last in Keras, 1 in torch)
    ints: int = 0  # token ids below this instead of floats


CASES = {
    "dense": Case(lambda: layers.Dense(3), lambda: nn.Linear(5, 3), (2, 5)),
    "conv1d": Case(lambda: layers.Conv1D(3, 3), lambda: nn.Conv1d(4, 3, 3), (2, 7, 4), True),
    "conv2d": Case(
        lambda: layers.Conv2D(3, (3, 2), strides=(2, 1)),
        lambda: nn.Conv2d(4, 3, (3, 2), stride=(2, 1)),
        (2, 7, 6, 4),
        True,
    ),
    "conv3d": Case(lambda: layers.Conv3D(2, 2), lambda: nn.Conv3d(3, 2, 2), (2, 4, 3, 5, 3), True),
    "conv_dilated_same": Case(
        lambda: layers.Conv1D(3, 3, padding="same", dilation_rate=2),
        lambda: nn.Conv1d(4, 3, 3, padding="same", dilation=2),
        (2, 8, 4),
        True,
    ),
    "grouped_conv": Case(
        lambda: layers.Conv2D(6, 3, groups=2),
        lambda: nn.Conv2d(4, 6, 3, groups=2),
        (2, 5, 5, 4),
        True,
    ),
    # torch's depthwise conv is a conv with one group per input channel
    "depthwise_conv": Case(
        lambda: layers.DepthwiseConv2D(3, depth_multiplier=2),
        lambda: nn.Conv2d(4, 8, 3, groups=4),
        (2, 5, 5, 4),
        True,
    ),
    "conv_transpose": Case(
        lambda: layers.Conv2DTranspose(3, (3, 2), strides=2),
        lambda: nn.ConvTranspose2d(4, 3, (3, 2), stride=2),
        (2, 3, 4, 4),
        True,
    ),
    # Keras's "same" for stride 2, kernel 4: PyTorch's padding 1
    "conv_transpose_same": Case(
        lambda: layers.Conv1DTranspose(3, 4, strides=2, padding="same"),
        lambda: nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1),
        (2, 5, 4),
        True,
    ),
    "embedding": Case(
        lambda: layers.Embedding(10, 4), lambda: nn.Embedding(10, 4), (2, 5), ints=10
    ),
    "layer_norm": Case(
        lambda: layers.LayerNormalization(epsilon=1e-5),
        lambda: nn.LayerNorm(6, eps=1e-5),
        (2, 5, 6),
    ),
    # momentum 0.9 in Keras is 0.1 in torch; inference mode: the running statistics are used
    "batch_norm": Case(
        lambda: layers.BatchNormalization(epsilon=1e-5, momentum=0.9),
        lambda: nn.BatchNorm2d(4, eps=1e-5, momentum=0.1),
        (2, 3, 3, 4),
        True,
    ),
    "group_norm": Case(
        lambda: layers.GroupNormalization(groups=2, epsilon=1e-5),
        lambda: nn.GroupNorm(2, 4, eps=1e-5),
        (2, 3, 3, 4),
        True,
    ),
    # Keras's LSTM has one bias per gate where torch has two: ported into Keras, it holds their
    # sum; ported from Keras, torch's bias_hh is zero. Same gate order i, f, g, o.
    "lstm": Case(
        lambda: layers.LSTM(6, return_sequences=True),
        lambda: nn.LSTM(4, 6, batch_first=True),
        (2, 5, 4),
    ),
    # reset_after=True (Keras's default) is torch's formulation: the reset gate multiplies the
    # recurrent term after its bias, so both biases are kept (Keras's (2, 3H) bias).
    "gru": Case(
        lambda: layers.GRU(6, return_sequences=True, reset_after=True),
        lambda: nn.GRU(4, 6, batch_first=True),
        (2, 5, 4),
    ),
    # key_dim = embed_dim / num_heads: torch's head size, and the same 1/sqrt(head size) scale
    "attention": Case(
        lambda: layers.MultiHeadAttention(num_heads=2, key_dim=3),
        lambda: nn.MultiheadAttention(6, 2, batch_first=True),
        (2, 5, 6),
    ),
}


def keras_model(case: Case) -> keras.Model:
    """The Keras layer alone in a functional model (path "0"), called once: built."""
    x = keras.Input(case.shape[1:], dtype="int32" if case.ints else "float32")
    layer = case.keras()
    model = keras.Model(
        x, layer(x, x) if isinstance(layer, layers.MultiHeadAttention) else layer(x)
    )
    model(sample(case))
    return model


def sample(case: Case) -> np.ndarray:
    if case.ints:
        return RNG.integers(0, case.ints, case.shape).astype("int32")
    return RNG.standard_normal(case.shape).astype("float32")


def randomize_keras(model: keras.Model) -> None:
    """Random values for every variable, set through Keras's API: moving variances positive."""
    for v in model.weights:
        value = RNG.uniform(-0.5, 0.5, tuple(v.shape))
        if "variance" in v.name:
            value = RNG.uniform(0.5, 1.5, tuple(v.shape))
        v.assign(value.astype(v.dtype))


def randomize_torch(model: nn.Module) -> None:
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            if t.is_floating_point():
                low = 0.5 if name.endswith("running_var") else -0.5
                t.copy_(torch.from_numpy(RNG.uniform(low, low + 1, tuple(t.shape))))


def run_keras(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return to_numpy(model(x))  # no training argument: inference, as the deck calls models


def run_torch(model: nn.Module, x: np.ndarray, channels: bool) -> np.ndarray:
    """The torch model on the Keras input: channels moved to axis 1 and back."""
    model.eval()
    t = torch.from_numpy(np.moveaxis(x, -1, 1) if channels else x)
    if not t.is_floating_point():
        t = t.long()
    with torch.no_grad():
        y = model(t).numpy()
    return np.moveaxis(y, 1, -1) if channels else y


# -- every layer kind, both directions and through a checkpoint ------------------------------
@pytest.mark.parametrize("name", CASES)
def test_port_torch_to_keras(name: str) -> None:
    case = CASES[name]
    src, dst, x = Torch(case.torch()), keras_model(case), sample(case)
    randomize_torch(src)
    want = run_torch(src, x, case.channels)
    assert_differ(run_keras(dst, x), want)  # Keras's own init: another function
    report = ut.port(src, dst)
    assert [(p.src, p.dst) for p in report.pairs] == [("0", "0")] and report.settings == []
    close(run_keras(dst, x), want)


@pytest.mark.parametrize("name", CASES)
def test_port_keras_to_torch(name: str) -> None:
    case = CASES[name]
    src, dst, x = keras_model(case), Torch(case.torch()), sample(case)
    randomize_keras(src)
    want = run_keras(src, x)
    assert_differ(run_torch(dst, x, case.channels), want)
    report = ut.port(src, dst)
    assert report.tensors == len(ut.wrap(dst).state_dict()) - (name == "batch_norm")  # no counter
    close(run_torch(dst, x, case.channels), want)


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_round_trip(name: str, tmp_path: Any) -> None:
    case = CASES[name]
    model, fresh, x = keras_model(case), keras_model(case), sample(case)
    randomize_keras(model)
    path = tmp_path / f"{name}.safetensors"
    ut.save(ut.wrap(model), path)
    ut.load(ut.wrap(fresh), path)
    # Keras's own variables are the same values, and so is every canonical tensor
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(to_numpy(b.value), to_numpy(a.value), err_msg=b.path)
    want, got = ut.wrap(model).state_dict(), ut.wrap(fresh).state_dict()
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    other = Torch(case.torch())
    ut.load(ut.wrap(other), path)
    close(run_torch(other, x, case.channels), run_keras(model, x))


# -- a dense layer fed by the flatten of a conv output --------------------------------------
FLATTENED = {
    # Keras flattens (H, W, C), torch (C, H, W): the dense input axis is permuted
    "conv": (
        lambda: [layers.Conv2D(4, 3), layers.MaxPooling2D(2)],
        lambda: [nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)],
        16,
        False,
    ),
    # channels_first flattens as torch does: nothing to permute
    # 5 channels against a 4 x 4 map: with as many channels as columns, Keras 3.15 on
    # TensorFlow adds a channels_first conv's bias along the columns (checked against torch)
    "conv_channels_first": (
        lambda: [layers.Conv2D(5, 3, data_format="channels_first"), layers.Activation("relu")],
        lambda: [nn.Conv2d(3, 5, 3), nn.ReLU()],
        80,
        True,
    ),
    "conv_transpose": (
        lambda: [layers.Conv2DTranspose(2, 2, strides=2), layers.ReLU()],
        lambda: [nn.ConvTranspose2d(3, 2, 2, stride=2), nn.ReLU()],
        288,
        False,
    ),
    "depthwise_conv": (
        lambda: [layers.DepthwiseConv2D(3, depth_multiplier=2)],
        lambda: [nn.Conv2d(3, 6, 3, groups=3)],
        96,
        False,
    ),
}
FLATTEN_CASES = [
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "conv_channels_first",
]


@pytest.mark.parametrize("name", FLATTEN_CASES)
@pytest.mark.parametrize("direction", ["torch_to_keras", "keras_to_torch"])
def test_dense_after_flatten(name: str, direction: str, tmp_path: Any) -> None:
    keras_layers, torch_layers, features, channels_first = FLATTENED[name]
    x = RNG.standard_normal((2, 6, 6, 3)).astype("float32")
    xt = np.moveaxis(x, -1, 1).copy()
    kx = xt if channels_first else x  # a channels_first Keras conv reads torch's layout
    k = keras.Sequential([keras.Input(kx.shape[1:]), *keras_layers()])
    k.add(layers.Flatten())
    k.add(layers.Dense(5))
    k(kx)
    t = nn.Sequential(*torch_layers(), nn.Flatten(), nn.Linear(features, 5)).eval()
    if direction == "torch_to_keras":
        randomize_torch(t)
        ut.port(t, k)
    else:
        randomize_keras(k)
        ut.port(k, t)
    with torch.no_grad():
        want = t(torch.from_numpy(xt)).numpy()
    close(run_keras(k, kx), want)
    # the canonical checkpoint means the same: torch's own state_dict, key for key
    ut.save(ut.wrap(k), tmp_path / "k.safetensors")
    other = nn.Sequential(*torch_layers(), nn.Flatten(), nn.Linear(features, 5)).eval()
    ut.load(ut.wrap(other), tmp_path / "k.safetensors")
    for key, value in t.state_dict().items():  # copies, permuted: the same bits
        np.testing.assert_array_equal(other.state_dict()[key].numpy(), value.numpy(), key)


# -- settings, structure, ties, rollback -------------------------------------------------------
SETTINGS = {
    # Keras's default epsilon (1e-3) against torch's (1e-5)
    "eps": (lambda: layers.LayerNormalization(epsilon=1e-3), lambda: nn.LayerNorm(6), (2, 5, 6)),
    # Keras's default momentum 0.99 is torch's 0.01, not its default 0.1
    "momentum": (
        lambda: layers.BatchNormalization(epsilon=1e-5),
        lambda: nn.BatchNorm1d(6),
        (2, 6),
    ),
    "padding": (lambda: layers.Conv1D(3, 3, padding="same"), lambda: nn.Conv1d(6, 3, 3), (2, 5, 6)),
    "stride": (lambda: layers.Conv1D(3, 3, strides=2), lambda: nn.Conv1d(6, 3, 3), (2, 5, 6)),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_settings_differences_refused_when_strict_reported_otherwise(setting: str) -> None:
    keras_layer, torch_layer, shape = SETTINGS[setting]
    k = keras.Sequential([keras.Input(shape[1:]), keras_layer()])
    t = Torch(torch_layer())
    randomize_torch(t)
    before = [to_numpy(v.value) for v in k.weights]
    with pytest.raises(ut.PortError, match=f"{setting} is"):
        ut.port(t, k)
    for v, value in zip(k.weights, before):  # nothing written
        np.testing.assert_array_equal(to_numpy(v.value), value)
    report = ut.port(t, k, strict=False)
    assert len(report.settings) == 1 and f"0: {setting} is" in report.settings[0]
    np.testing.assert_array_equal(ut.wrap(k)["0.weight"].numpy(), t.state_dict()["0.weight"])


def test_settings_values() -> None:
    adapter = ut.wrap(layers.Dense(1))._adapter
    causal = layers.Conv1D(2, 3, padding="causal", dilation_rate=2)
    assert adapter.settings(causal) == {
        "stride": (1,),
        "dilation": (2,),
        "groups": 1,
        "padding": ((4, 0),),  # everything before: (kernel - 1) * dilation
        "padding_mode": "zeros",
        "input_dilation": (1,),
        "kernel_mask": False,
        "data_format": "channels_last",
    }
    # Keras's "same" transposed conv: stride 2, kernel 4 is torch's padding 1; kernel 3 would
    # crop and pad at once, which torch cannot say
    same = layers.Conv2DTranspose(2, (4, 3), strides=2, padding="same")
    assert adapter.settings(same)["padding"] == "same"
    even = layers.Conv2DTranspose(2, 4, strides=2, padding="same", data_format="channels_first")
    assert adapter.settings(even) == {
        "stride": (2, 2),
        "dilation": (1, 1),
        "groups": 1,
        "padding": ((1, 1), (1, 1)),
        "output_padding": (0, 0),
        "padding_mode": "zeros",
        "input_dilation": (1, 1),
        "kernel_mask": False,
        "data_format": "channels_first",
    }
    valid = layers.Conv1DTranspose(2, 2, strides=3)  # output padded to max(kernel, stride)
    assert adapter.settings(valid)["output_padding"] == (1,)
    bn = adapter.settings(layers.BatchNormalization())
    assert bn["eps"] == 1e-3 and bn["momentum"] == pytest.approx(0.01)
    assert adapter.settings(layers.GroupNormalization(groups=2)) == {
        "eps": 1e-3,
        "scale": True,
        "center": True,
        "groups": 2,
    }
    assert adapter.settings(layers.GRU(3, reset_after=False))["reset_after"] is False
    assert adapter.settings(layers.MultiHeadAttention(3, 2)) == {
        "num_heads": 3,
        "add_zero_attn": False,
        "attention_axes": None,
        "attention_fn": "dot_product_attention",
        "gated": False,
    }
    assert adapter.settings(layers.Dense(2)) == {}


# Settings that change results and that the parameter shapes do not show: both adapters must
# report them, or the port goes through and computes something else.
UNSEEN = {
    # 3 heads of 2 against 2 heads of 3: the same (18, 6) in_proj_weight
    "num_heads": Case(
        lambda: layers.MultiHeadAttention(num_heads=3, key_dim=2),
        lambda: nn.MultiheadAttention(6, 2, batch_first=True),
        (2, 5, 6),
    ),
    # 2 groups of 2 channels against 4 groups of 1: the same (4,) weight and bias
    "groups": Case(
        lambda: layers.GroupNormalization(groups=2, epsilon=1e-5),
        lambda: nn.GroupNorm(4, 4),
        (2, 5, 4),
        True,
    ),
    "activation": Case(
        lambda: layers.LSTM(6, activation="relu", return_sequences=True),
        lambda: nn.LSTM(4, 6, batch_first=True),
        (2, 5, 4),
    ),
}
UNSEEN_CASES = [
    "num_heads",
    "groups",
    "activation",
]


@pytest.mark.parametrize("setting", UNSEEN_CASES)
def test_settings_the_shapes_do_not_show(setting: str) -> None:
    case = UNSEEN[setting]
    k, t, x = keras_model(case), Torch(case.torch()), sample(case)
    randomize_torch(t)
    ut.port(t, k, strict=False)
    assert_differ(run_keras(k, x), run_torch(t, x, case.channels))  # another function
    with pytest.raises(ut.PortError, match=f"{setting} is"):
        ut.port(t, k)


def test_gru_without_reset_after_is_refused() -> None:
    """reset_after=False applies the reset gate before the recurrent kernel: no torch GRU does."""
    case = Case(
        lambda: layers.GRU(6, return_sequences=True, reset_after=False),
        lambda: nn.GRU(4, 6, batch_first=True),
        (2, 5, 4),
    )
    k, t = keras_model(case), Torch(case.torch())
    before = [to_numpy(v.value) for v in k.weights]
    for src, dst in ((t, k), (k, t)):
        with pytest.raises(ut.PortError, match="does not fit"):
            ut.port(src, dst)
    for v, value in zip(k.weights, before):
        np.testing.assert_array_equal(to_numpy(v.value), value)


def test_functional_model_against_torch_sequential_by_rank() -> None:
    """Position k of each is its k-th layer with parameters: torch's ReLU takes a position."""
    x = keras.Input((4,))
    h = layers.Dense(8, activation="relu")(x)  # torch spells the ReLU as a layer of its own
    k = keras.Model(x, layers.Dense(3)(h))
    t = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = RNG.standard_normal((2, 4)).astype("float32")
    report = ut.port(t, k)
    assert [(p.src, p.dst, p.rule) for p in report.pairs] == [
        ("0", "0", "path"),
        ("2", "1", "path"),
    ]
    close(run_keras(k, data), run_torch(t, data, False))
    randomize_keras(k)
    assert ut.port(k, t).rules == {"path": 2}
    close(run_torch(t, data, False), run_keras(k, data))


def tied_torch(tied: bool = True) -> nn.Sequential:
    shared = nn.Linear(5, 5)
    other = shared if tied else nn.Linear(5, 5)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), shared, nn.ReLU(), other, nn.Linear(5, 2))


def test_tied_layer_stays_tied() -> None:
    shared = layers.Dense(5)  # the same layer object twice: one set of variables
    k = keras.Sequential([keras.Input((4,)), layers.Dense(5), layers.ReLU(), shared, layers.ReLU()])
    k.add(shared)
    k.add(layers.Dense(2))
    data = RNG.standard_normal((2, 4)).astype("float32")
    k(data)
    randomize_keras(k)
    t = tied_torch()
    report = ut.port(k, t)
    assert report.ties_kept == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    assert report.ties_split == []
    assert t[2] is t[4]
    close(run_torch(t, data, False), run_keras(k, data))
    randomize_torch(t)
    assert ut.port(t, k).ties_kept == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    close(run_keras(k, data), run_torch(t, data, False))
    # into separate layers: refused when strict, copied into each otherwise
    untied = tied_torch(tied=False)
    with pytest.raises(ut.PortError, match="tied in the source"):
        ut.port(k, untied)
    assert ut.port(k, untied, strict=False).ties_split == [
        ("2.weight", "4.weight"),
        ("2.bias", "4.bias"),
    ]
    close(run_torch(untied, data, False), run_keras(k, data))


def test_failed_write_puts_every_value_back(monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES["batch_norm"]
    k, t = keras_model(case), Torch(case.torch())
    randomize_torch(t)
    before = [np.array(to_numpy(v.value)) for v in k.weights]
    adapter = ut.wrap(k)._adapter
    if BACKEND == "jax":  # jax arrays are immutable: the backup is the array itself, no copy
        assert adapter.backup(k.weights[0]) is k.weights[0].value
    write, calls = adapter.write, []

    def failing(leaf: Any, value: np.ndarray, index: Any = None) -> None:
        calls.append(leaf)
        if len(calls) == 3:  # two variables written, the third fails
            raise RuntimeError("disk on fire")
        write(leaf, value, index)

    monkeypatch.setattr(adapter, "write", failing)
    # the premise: a write that can fail once validated (on the host it cannot: nothing is kept)
    monkeypatch.setattr(adapter, "write_can_fail", lambda leaf: True)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ut.port(t, k)
    monkeypatch.undo()
    assert len(calls) > 3  # two writes, the failure, then the two put back
    for v, value in zip(k.weights, before):
        np.testing.assert_array_equal(to_numpy(v.value), value, err_msg=v.path)


def test_unbuilt_recurrent_layer_cannot_be_saved(tmp_path: Any) -> None:
    model = keras.Sequential([layers.LSTM(3)])  # not called yet: no variables
    tree = ut.wrap(model)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.cell.kernel", None),
        ("0.cell.recurrent_kernel", None),
        ("0.cell.bias", None),
    ]
    with pytest.raises(ut.UninitializedError):
        ut.save(tree, tmp_path / "unbuilt.safetensors")
