"""Which layer pairs with which, between torch and Keras: positions, names, order.

The expectation of every port is the source model's own output on the same input.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch import nn
from unitree_checks import PORT_ULPS, assert_close

import unitree as ut

torch.manual_seed(0)
keras.utils.set_random_seed(0)
RNG = np.random.default_rng(0)


def run_torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def run_keras(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x)))


def test_a_torch_mlp_with_relu_modules_into_keras_dense_layers_with_folded_relus():
    """The issue's example: paired 0->0, 4->1, 2->2, 6->3 before (off by 0.19)."""
    t = nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2),
    )  # fmt: skip
    k = keras.Sequential(
        [keras.Input((4,))]
        + [layers.Dense(16, activation="relu") for _ in range(3)]
        + [layers.Dense(2)]
    )
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    report = ut.port(t, k)
    assert [(p.src, p.dst) for p in report.pairs] == [
        ("0", "0"),
        ("2", "1"),
        ("4", "2"),
        ("6", "3"),
    ]
    assert_close(run_keras(k, x), run_torch(t, x), ulps=PORT_ULPS)
    for v in k.weights:  # back, from new values
        v.assign(RNG.uniform(-0.5, 0.5, tuple(v.shape)).astype(np.float32))
    ut.port(k, t)
    assert_close(run_torch(t, x), run_keras(k, x), ulps=PORT_ULPS)


class TorchAttention(nn.Module):
    """Registers k, v, q, out as BART's and OPT's torch attention does."""

    def __init__(self, e: int) -> None:
        super().__init__()
        self.k_proj, self.v_proj, self.q_proj = nn.Linear(e, e), nn.Linear(e, e), nn.Linear(e, e)
        self.out_proj = nn.Linear(e, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
        return self.out_proj(w @ v)


class TorchModel(nn.Module):
    def __init__(self, e: int) -> None:
        super().__init__()
        self.model = nn.Module()  # a prefix the other framework does not have
        self.model.attn = TorchAttention(e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.attn(x)


class KerasAttention(keras.layers.Layer):
    """Registers q, k, v, out, as Flax's BART does."""

    def __init__(self, e: int, **kw) -> None:
        super().__init__(**kw)
        self.q_proj, self.k_proj = layers.Dense(e), layers.Dense(e)
        self.v_proj, self.out_proj = layers.Dense(e), layers.Dense(e)

    def call(self, x):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        w = keras.ops.softmax(q @ keras.ops.swapaxes(k, -1, -2) / q.shape[-1] ** 0.5, -1)
        return self.out_proj(w @ v)


class KerasModel(keras.Model):
    def __init__(self, e: int) -> None:
        super().__init__()
        self.attention = KerasAttention(e)

    def call(self, x):
        return self.attention(x)


def test_same_shaped_siblings_pair_by_name_not_registration_order():
    """BART and OPT: torch registers k, v, q; Flax q, k, v; the paths differ above them."""
    t, k = TorchModel(8), KerasModel(8)
    x = RNG.standard_normal((2, 3, 8)).astype(np.float32)
    k(x)
    report = ut.port(t, k)
    pairs = {(p.src.rpartition(".")[2], p.dst.rpartition(".")[2]) for p in report.pairs}
    assert pairs == {(n, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert_close(run_keras(k, x), run_torch(t, x), ulps=PORT_ULPS)


class TwoTorch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TwoKeras(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense_b, self.dense_a = layers.Dense(4), layers.Dense(4)

    def call(self, x):
        return self.dense_a(keras.ops.relu(self.dense_b(x)))


def test_same_shaped_siblings_whose_names_differ_are_refused_and_never_picked():
    t, k = TwoTorch(), TwoKeras()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    k(x)
    before = [keras.ops.convert_to_numpy(v) for v in k.weights]
    with pytest.raises(ut.PortError, match=r"cannot decide which of fc1 .*fc2 .*dense_b .*dense_a"):
        ut.port(t, k)
    report = ut.port(t, k, strict=False)
    assert report.pairs == [] and any("cannot decide" in s for s in report.skipped)
    for v, b in zip(k.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
    # rename= decides
    ut.port(t, k, rename={"^fc1$": "dense_b", "^fc2$": "dense_a"})
    assert_close(run_keras(k, x), run_torch(t, x), ulps=PORT_ULPS)


class ThreeTorch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.extra, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(8, 3)


def test_the_structural_pass_aligns_the_whole_sequence_past_a_misfit():
    t = ThreeTorch()
    k = keras.Sequential([keras.Input((4,)), layers.Dense(8), layers.Dense(3)])
    with pytest.raises(ut.PortError, match=r"source layer extra .*no destination layer"):
        ut.port(t, k)
    report = ut.port(t, k, strict=False)
    assert [(p.src, p.dst) for p in report.pairs] == [("fc1", "0"), ("fc2", "1")]
    for layer, linear in zip(k.layers, (t.fc1, t.fc2)):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(layer.kernel), linear.weight.detach().numpy().T
        )


class CalledOutOfOrder(nn.Module):
    """Registers proj before fc and calls fc first: registration order is not call order."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.fc = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.tanh(self.fc(x)))


def test_named_layers_are_not_paired_with_positions_by_their_registration_order():
    t = CalledOutOfOrder()
    k = keras.Sequential(
        [keras.Input((16,)), layers.Dense(16, activation="tanh"), layers.Dense(16)]
    )
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    with pytest.raises(ut.PortError, match=r"cannot decide which of proj .*fc "):
        ut.port(t, k)
    with pytest.raises(ut.PortError, match="computes something else"):
        ut.port(t, k, check=x)  # paired in their order, and the outputs refuse it
    ut.port(t, k, rename={"^fc$": "0", "^proj$": "1"})
    assert_close(run_keras(k, x), run_torch(t, x), ulps=PORT_ULPS)


def test_a_nested_sequential_against_a_flat_one_pairs_in_forward_order():
    t = nn.Sequential(
        nn.Linear(16, 16),
        nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16)),
        nn.Tanh(),
        nn.Linear(16, 16),
    )
    dense = [layers.Dense(16), layers.Dense(16, activation="tanh")]
    dense += [layers.Dense(16, activation="tanh"), layers.Dense(16)]
    k = keras.Sequential([keras.Input((16,)), *dense])
    report = ut.port(t, k)
    pairs = [(p.src, p.dst) for p in report.pairs]
    assert pairs == [("0", "0"), ("1.0", "1"), ("1.2", "2"), ("3", "3")]
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    assert_close(run_keras(k, x), run_torch(t, x), ulps=PORT_ULPS)


class ScaledLinear(nn.Linear):
    """A Linear whose forward scales its weight, as StyleGAN's EqualLinear does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * 0.5, self.bias)


def test_a_subclass_that_overrides_the_call_is_no_longer_its_bases_kind():
    t = nn.Sequential(ScaledLinear(4, 4))
    k = keras.Sequential([keras.Input((4,)), layers.Dense(4)])
    with pytest.raises(ut.PortError, match=r"a ScaledLinear, a type unitree's tables do not know"):
        ut.port(t, k)
    other = nn.Sequential(ScaledLinear(4, 4))
    ut.port(t, other)  # onto its own type
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    assert_close(run_torch(other, x), run_torch(t, x), ulps=PORT_ULPS)
