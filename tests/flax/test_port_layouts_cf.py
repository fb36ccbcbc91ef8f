"""A torch model that flattens (or unflattens) channels-last, ported to and from Keras and NNX.

PyTorch's own ``Flatten`` flattens (C, H, W); a torch model ported from Keras often permutes
its map to (H, W, C) first, in a module of its own (whose ``forward`` unitree cannot read) or
in a custom ``forward``. Its ``Linear`` then holds its input axis in (H, W, C) order, and
reading it as canonical would port a silently different model. The read says the layout is
unknown; a port refuses it under ``strict``, naming both layers, and ``check=`` (each
candidate tried, the outputs compared) or ``layouts=`` decides it. These are the property
test's minimal examples (torch ``Conv2d -> Permute(0, 2, 3, 1) module -> Flatten -> Linear``
into Keras's plain ``Flatten``, and the like). Every expected value is the source model's own
output on the same input (Keras and NNX read it channels-last).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import keras
import numpy as np
import pytest
import torch
from flax import nnx
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

T = torch.nn
L = keras.layers
X = np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype("float32")  # NCHW
Z = np.random.default_rng(2).standard_normal((2, 4)).astype("float32")


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def ncl(y: Any) -> np.ndarray:
    """A channels-last output (N, L, C) as torch gives it, (N, C, L)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(y), -1, 1))


class Permute(T.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class KerasFlattenLikeTorch(T.Module):
    """A CNN written as a class, flattening channels-last in its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = T.Conv2d(1, 2, 2)
        self.fc = T.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x).permute(0, 2, 3, 1), 1))


def random_torch(model: T.Module, seed: int) -> T.Module:
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype("float32")))
    return model.eval()


def random_keras(model: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.uniform(-0.5, 0.5, tuple(v.shape)).astype("float32"))
    return model


def torch_permute_cnn(seed: int = 3) -> T.Module:
    return random_torch(
        T.Sequential(T.Conv2d(1, 2, 2), Permute(0, 2, 3, 1), T.Flatten(), T.Linear(8, 3)), seed
    )


def keras_cnn(seed: int = 4) -> Any:
    """Keras's own flatten: (H, W, C)."""
    model = keras.Sequential([keras.Input((3, 3, 1)), L.Conv2D(2, 2), L.Flatten(), L.Dense(3)])
    return random_keras(model, seed)


def torch_out(model: T.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def keras_out(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x)))


def keras_weights(model: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def torch_weights(model: T.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize(
    "make", [torch_permute_cnn, lambda: random_torch(KerasFlattenLikeTorch(), 3)]
)
def test_torch_flattening_channels_last_into_keras_is_refused_then_checked(make: Any) -> None:
    t, k = make(), keras_cnn()
    before = keras_weights(k)
    with pytest.raises(ut.PortError) as e:
        ut.port(t, k)  # strict: the torch Linear's layout is unknown
    message = str(e.value)
    assert "unknown" in message and "check=" in message and "layouts=" in message
    assert all(np.array_equal(a, b) for a, b in zip(keras_weights(k), before))  # nothing written
    report = ut.port(t, k, check=ut.Check(X, dst_inputs=nhwc))
    assert report.check is not None and report.check.ok
    assert any("(source): channels_last" in note for note in report.notes)
    assert_close(keras_out(k, nhwc(X)), torch_out(t, X), ulps=PORT_ULPS)


def test_layouts_decides_the_torch_side_without_running_anything() -> None:
    t = torch_permute_cnn()
    k = keras_cnn()
    ut.port(t, k, layouts={"3": "channels_last"})  # the torch Linear's input: (H, W, C)
    assert_close(keras_out(k, nhwc(X)), torch_out(t, X), ulps=PORT_ULPS)
    ut.port(t, k, layouts={"3": "channels_first"})  # the other candidate: a different model
    assert_differ(keras_out(k, nhwc(X)), torch_out(t, X))


def test_keras_into_torch_flattening_channels_last_is_refused_then_checked() -> None:
    k, t = keras_cnn(), torch_permute_cnn()
    before = torch_weights(t)
    with pytest.raises(ut.PortError, match="unknown"):
        ut.port(k, t)
    assert all(np.array_equal(a, b) for a, b in zip(torch_weights(t), before))
    report = ut.port(k, t, check=ut.Check(nhwc(X), dst_inputs=lambda x: np.moveaxis(x, -1, 1)))
    assert report.check is not None and report.check.ok
    assert_close(torch_out(t, X), keras_out(k, nhwc(X)), ulps=PORT_ULPS)


class NnxChannelsLast(nnx.Module):
    """NNX's own flatten, (H, W, C), inside its __call__: unknown to the read too."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(1, 2, (2, 2), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        h = self.conv(x)
        return self.fc(h.reshape(h.shape[0], -1))


def test_unknown_on_both_sides_is_decided_by_the_check() -> None:
    t, n = torch_permute_cnn(), NnxChannelsLast(nnx.Rngs(0))
    with pytest.raises(ut.PortError, match="unknown"):
        ut.port(t, n)
    report = ut.port(t, n, check=ut.Check(X, dst_inputs=nhwc))
    assert report.check is not None and report.check.ok
    assert_close(np.asarray(n(jnp.asarray(nhwc(X)))), torch_out(t, X), ulps=PORT_ULPS)


def test_torch_flattening_as_pytorch_does_ports_without_a_check() -> None:
    """nn.Flatten right after the conv: decided, PyTorch's order, no check needed."""
    t = random_torch(T.Sequential(T.Conv2d(1, 2, 2), T.Flatten(), T.Linear(8, 3)), 3)
    k = keras_cnn()
    ut.port(t, k)
    assert_close(keras_out(k, nhwc(X)), torch_out(t, X), ulps=PORT_ULPS)


# -- the mirror: a Linear unflattened to (L, C), then permuted for its Conv1d ----------------
def torch_decoder(seed: int = 5) -> T.Module:
    model = T.Sequential(
        T.Linear(4, 6), T.Unflatten(1, (3, 2)), Permute(0, 2, 1), T.Conv1d(2, 2, 1)
    )
    return random_torch(model, seed)


def keras_decoder(seed: int = 6) -> Any:
    """Dense, then Reshape((L, C)): Keras's own channels-last map for its Conv1D."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(6), L.Reshape((3, 2)), L.Conv1D(2, 1)])
    return random_keras(model, seed)


def test_torch_unflattening_channels_last_into_keras_is_refused_then_checked() -> None:
    t, k = torch_decoder(), keras_decoder()
    before = keras_weights(k)
    with pytest.raises(ut.PortError) as e:
        ut.port(t, k)
    assert "0.weight" in str(e.value) and "unknown" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(keras_weights(k), before))
    report = ut.port(t, k, check=ut.Check(Z, dst_outputs=ncl))
    assert report.check is not None and report.check.ok
    assert_close(ncl(keras_out(k, Z)), torch_out(t, Z), ulps=PORT_ULPS)
