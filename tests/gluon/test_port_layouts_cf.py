"""Ports between channels-first frameworks (Gluon, PyTorch) whose models flatten or reshape in
different orders.

Gluon's ``Flatten`` (and its ``Dense``, which flattens its own input) flattens (C, H, W), as
PyTorch's does; a torch model that permutes its map to (H, W, C) in a module of its own before
``Flatten`` holds its ``Linear``'s input axis in the other order, and a Gluon model reshaping
in a custom block says nothing either. The read follows both models through their own layers
and says where it cannot see: a port refuses such a layout under ``strict``, and ``check=``
decides it by the outputs. These are the property test's minimal examples 7 and 8. Every
expected value is the source model's own output on the same input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mxnet as mx
import numpy as np
import pytest
import torch
from mxnet import npx
from mxnet.gluon import nn
from unitree_checks import PORT_ULPS, assert_close

import unitree as ut

T = torch.nn
X = np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype("float32")
Z = np.random.default_rng(2).standard_normal((2, 4)).astype("float32")


@pytest.fixture(autouse=True)
def classic_arrays() -> Iterator[None]:
    """These models are of classic ``mx.nd`` arrays, whatever a test before chose; restored."""
    was = mx.util.is_np_array(), mx.util.is_np_shape()
    npx.reset_np()
    yield
    mx.util.set_np(shape=was[1], array=was[0])


class Permute(T.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class PermuteFlatten(T.Module):
    """To (H, W, C), then flattened: one module of the user's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class Reshape(nn.HybridBlock):
    """A user's reshape block: its hybrid_forward is its own."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.reshape(x, shape=(0, *self.shape))


def gluon_model(*blocks: Any, seed: int, shape: tuple[int, ...]) -> nn.HybridSequential:
    model = nn.HybridSequential()
    model.add(*blocks)
    model.initialize()
    rng = np.random.default_rng(seed)
    for p in model.collect_params().values():
        p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape).astype("float32")))
    model(mx.nd.zeros((2, *shape)))
    return model


def torch_model(*modules: T.Module, seed: int) -> T.Module:
    model = T.Sequential(*modules)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype("float32")))
    return model.eval()


def gluon_out(model: Any, x: np.ndarray) -> np.ndarray:
    return model(mx.nd.array(x)).asnumpy()


def torch_out(model: T.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def gluon_weights(model: Any) -> list[np.ndarray]:
    return [p.data().asnumpy().copy() for p in model.collect_params().values()]


def torch_weights(model: T.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


# 7: Gluon flattens (C, H, W); torch permutes to (H, W, C) in a module, then flattens
def gluon_cnn(dense_flattens: bool) -> Any:
    blocks = [nn.Conv2D(2, 2, in_channels=1)]
    if not dense_flattens:
        blocks.append(nn.Flatten())
    blocks.append(nn.Dense(3, in_units=8))  # flatten=True: it flattens a map itself
    return gluon_model(*blocks, seed=3, shape=(1, 3, 3))


def torch_permute_cnn() -> T.Module:
    return torch_model(T.Conv2d(1, 2, 2), Permute(0, 2, 3, 1), T.Flatten(), T.Linear(8, 3), seed=4)


@pytest.mark.parametrize("dense_flattens", [False, True])
def test_gluon_into_torch_flattening_channels_last_is_refused_then_checked(
    dense_flattens: bool,
) -> None:
    g, t = gluon_cnn(dense_flattens), torch_permute_cnn()
    before = torch_weights(t)
    with pytest.raises(ut.PortError) as e:
        ut.port(g, t)
    assert "unknown" in str(e.value) and "check=" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(torch_weights(t), before))  # nothing written
    report = ut.port(g, t, check=X)
    assert report.check is not None and report.check.ok
    assert any("(destination): channels_last" in note for note in report.notes)
    assert_close(torch_out(t, X), gluon_out(g, X), ulps=PORT_ULPS)


def test_torch_flattening_channels_last_into_gluon_is_refused_then_checked() -> None:
    t, g = torch_permute_cnn(), gluon_cnn(dense_flattens=False)
    before = gluon_weights(g)
    with pytest.raises(ut.PortError, match="unknown"):
        ut.port(t, g)
    assert all(np.array_equal(a, b) for a, b in zip(gluon_weights(g), before))
    report = ut.port(t, g, check=X)
    assert report.check is not None and report.check.ok
    assert_close(gluon_out(g, X), torch_out(t, X), ulps=PORT_ULPS)


def test_gluon_and_torch_flattening_alike_port_without_a_check() -> None:
    """Gluon's Dense flattening a map itself, and torch's nn.Flatten: both (C, H, W)."""
    g = gluon_cnn(dense_flattens=True)
    t = torch_model(T.Conv2d(1, 2, 2), T.Flatten(), T.Linear(8, 3), seed=5)
    ut.port(g, t)
    assert_close(torch_out(t, X), gluon_out(g, X), ulps=PORT_ULPS)


# 8: Gluon reshapes the Dense output to (C, L) in a block; torch unflattens to (L, C), permutes
def test_gluon_reshape_into_torch_unflatten_and_permute_is_refused_then_checked() -> None:
    g = gluon_model(
        nn.Dense(6, in_units=4), Reshape((2, 3)), nn.Conv1D(2, 1, in_channels=2), seed=6, shape=(4,)
    )
    t = torch_model(
        T.Linear(4, 6), T.Unflatten(1, (3, 2)), Permute(0, 2, 1), T.Conv1d(2, 2, 1), seed=7
    )
    before = torch_weights(t)
    with pytest.raises(ut.PortError) as e:
        ut.port(g, t)
    assert "0.weight" in str(e.value) and "unknown" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(torch_weights(t), before))
    report = ut.port(g, t, check=Z)
    assert report.check is not None and report.check.ok
    assert_close(torch_out(t, Z), gluon_out(g, Z), ulps=PORT_ULPS)


# -- what the read says of Gluon's own blocks --------------------------------------------------
class Transpose(nn.HybridBlock):
    def __init__(self, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.axes = axes

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.transpose(x, axes=self.axes)


def unknown_of(model: Any) -> dict[str, Any]:
    from unitree._tree import view_of

    view = view_of(ut.wrap(model))
    return {
        ".".join(map(str, path)): u
        for path, p in view.leaves()
        if (u := view.unknown(p)) is not None
    }


def test_gluon_blocks_the_read_sees_and_those_it_cannot() -> None:
    conv = lambda: nn.Conv2D(2, 2, in_channels=1)  # noqa: E731
    shape = (1, 3, 3)
    seen = [
        gluon_model(conv(), nn.Flatten(), nn.Dense(3, in_units=8), seed=1, shape=shape),
        gluon_model(conv(), nn.Dense(3, in_units=8), seed=1, shape=shape),  # Dense flattens
        gluon_model(
            conv(),
            nn.BatchNorm(in_channels=2),
            nn.Activation("relu"),
            nn.MaxPool2D(1),
            nn.Dropout(0.5),
            nn.Dense(3, in_units=8),
            seed=1,
            shape=shape,
        ),
    ]
    for model in seen:
        assert unknown_of(model) == {}
    unseen = gluon_model(
        conv(), Transpose((0, 2, 3, 1)), nn.Dense(3, in_units=8), seed=1, shape=shape
    )
    unknown = unknown_of(unseen)
    assert list(unknown) == ["2.weight"] and unknown["2.weight"].default == "channels_first"
    assert "Transpose" in unknown["2.weight"].reason and "'0'" in unknown["2.weight"].reason


def test_a_gluon_checkpoint_with_an_unknown_layout_round_trips_exactly(tmp_path: Any) -> None:
    """The unknown layout keeps Gluon's own: ut.save then ut.load gives back every value."""
    make = lambda seed: gluon_model(  # noqa: E731
        nn.Conv2D(2, 2, in_channels=1),
        Transpose((0, 2, 3, 1)),
        nn.Dense(3, in_units=8),
        seed=seed,
        shape=(1, 3, 3),
    )
    saved, loaded = make(1), make(2)
    ut.save(saved, tmp_path / "model.safetensors")
    ut.load(loaded, tmp_path / "model.safetensors")
    for a, b in zip(gluon_weights(loaded), gluon_weights(saved)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(gluon_out(loaded, X), gluon_out(saved, X))
    # the file holds Gluon's own arrays: torch's twin (which flattens (H, W, C) too) loads it
    t = torch_model(T.Conv2d(1, 2, 2), PermuteFlatten(), T.Linear(8, 3), seed=3)
    ut.load(t, tmp_path / "model.safetensors")
    assert_close(torch_out(t, X), gluon_out(saved, X), ulps=PORT_ULPS)
