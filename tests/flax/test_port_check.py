"""A port that proves itself (``check=``), and ``ut.compare`` for debugging one.

The expectation is always the source model's own output on the same input.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn
from unitree_checks import PORT_ULPS, assert_close

import unitree as ut

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 1, 6, 6)).astype(np.float32)  # channels first, torch's


def nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)


def run_torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def nnx_values(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(v) for v in jax_leaves(nnx.state(model, nnx.Param))]


def jax_leaves(state) -> list:
    import jax

    return jax.tree_util.tree_leaves(state)


class TorchCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class NnxCNN(nnx.Module):
    """Flax's porting guide: transpose to NCHW before flattening, as PyTorch does."""

    def __init__(self, rngs: nnx.Rngs, torch_order: bool = True) -> None:
        self.conv = nnx.Conv(1, 2, (3, 3), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(2 * 4 * 4, 3, rngs=rngs)
        self.torch_order = torch_order

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nnx.relu(self.conv(x))
        if self.torch_order:
            h = h.transpose(0, 3, 1, 2)
        return self.fc(h.reshape(h.shape[0], -1))


@pytest.mark.parametrize("torch_order", [True, False])
def test_an_unknown_flatten_layout_is_refused_then_decided_by_the_check(torch_order):
    t, n = TorchCNN(), NnxCNN(nnx.Rngs(0), torch_order)
    before = nnx_values(n)
    with pytest.raises(
        ut.PortError, match=r"fc.*layout of the activations at the \w+ layer is unknown"
    ):
        ut.port(t, n)
    assert all(np.array_equal(a, b) for a, b in zip(nnx_values(n), before))
    report = ut.port(t, n, check=ut.Check(X, dst_inputs=nhwc))
    assert report.check is not None and report.check.ok
    chosen = "channels_first" if torch_order else "channels_last"
    assert any(f"fc.weight (destination): {chosen}" in note for note in report.notes)
    assert_close(np.asarray(n(jnp.asarray(nhwc(X)))), run_torch(t, X), ulps=PORT_ULPS)


def test_layouts_decides_an_unknown_flatten_without_running_anything():
    t, n = TorchCNN(), NnxCNN(nnx.Rngs(1), torch_order=True)
    ut.port(t, n, layouts={"fc": "channels_first"})
    assert_close(np.asarray(n(jnp.asarray(nhwc(X)))), run_torch(t, X), ulps=PORT_ULPS)
    with pytest.raises(ut.PortError, match="layouts= says 'fc' is 'sideways'"):
        ut.port(t, n, layouts={"fc": "sideways"})
    with pytest.raises(ut.PortError, match="layouts= names 'conv', which is no layer"):
        ut.port(t, n, layouts={"fc": "channels_first", "conv": "channels_first"})


class TorchTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class NnxSwapped(nnx.Module):
    """The same names, run in the other order: only the outputs can tell."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc1, self.fc2 = nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.fc1(jnp.tanh(self.fc2(x)))


def test_a_check_that_fails_puts_everything_back_and_names_the_first_layer_that_differs():
    t, n = TorchTwo(), NnxSwapped(nnx.Rngs(2))
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    before = nnx_values(n)
    with pytest.raises(
        ut.PortError,
        match=r"(?s)every value written was put back.*first matched layer whose output differs is fc1 -> fc1",
    ) as e:
        ut.port(t, n, check=x)
    assert "largest difference" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(nnx_values(n), before))
    # rename= says what the names do not; the check proves it
    swap = [("^fc1$", "tmp"), ("^fc2$", "fc1"), ("^tmp$", "fc2")]  # applied in order
    report = ut.port(t, n, check=x, rename=swap)
    assert report.check.ok
    assert_close(np.asarray(n(jnp.asarray(x))), run_torch(t, x), ulps=PORT_ULPS)


def test_compare_shows_each_layer_and_changes_nothing():
    t, n = TorchTwo(), NnxSwapped(nnx.Rngs(3))
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    ut.port(t, n)  # by name: wrong, and compare says where
    before = nnx_values(n)
    comparison = ut.compare(t, n, x)
    assert not comparison.ok
    assert comparison.first_difference is not None
    expected = np.max(np.abs(np.asarray(n(jnp.asarray(x))) - run_torch(t, x)))
    assert comparison.output.difference == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert "fc1" in str(comparison) and "fc2" in str(comparison)
    assert all(np.array_equal(a, b) for a, b in zip(nnx_values(n), before))


def test_inputs_that_cannot_tell_the_layouts_apart_prove_nothing():
    t, n = TorchCNN(), NnxCNN(nnx.Rngs(4), torch_order=True)
    with torch.no_grad():
        t.conv.bias.zero_()  # zeros in, zeros through the conv: every flatten order agrees
    zeros = np.zeros_like(X)
    before = nnx_values(n)
    with pytest.raises(ut.PortError, match="cannot be proven by these inputs"):
        ut.port(t, n, check=ut.Check(zeros, dst_inputs=nhwc))
    assert all(np.array_equal(a, b) for a, b in zip(nnx_values(n), before))
