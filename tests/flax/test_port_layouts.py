"""The layout of the activations between layers of a Flax model: unknown, never guessed.

Flax flattens and reshapes inside a module's ``__call__``, which unitree cannot read: a
dense layer reading the flatten of a conv output (its input a multiple > 1 of the conv's
channels), or whose output a conv reads reshaped, has an unknown layout. The read says so
(``View.unknown``), a port refuses it under ``strict``, naming both layers, and the user
decides it (``layouts=``). Every expected value is the torch model's own output on the same
input (Flax reads it channels-last).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut
from unitree._tree import view_of

T = torch.nn
X = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype("float32")  # torch's NCHW
X_LAST = np.ascontiguousarray(np.moveaxis(X, 1, -1))  # the same images, as Flax reads them


def torch_cnn() -> T.Module:
    """Conv (4 channels of a 4x4 map), ReLU, Flatten (C, H, W), Linear(64, 5), random."""
    model = T.Sequential(T.Conv2d(3, 4, 3), T.ReLU(), T.Flatten(), T.Linear(64, 5)).eval()
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape))))
    return model


def torch_out(model: T.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


class PortingGuideCNN(nnx.Module):
    """As Flax's porting guide writes it: transposed to (C, H, W) before the reshape, so the
    dense layer reads PyTorch's order."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(64, 5, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        h = jnp.transpose(nnx.relu(self.conv(x)), (0, 3, 1, 2))
        return self.fc(h.reshape(h.shape[0], -1))


class ChannelsLastCNN(PortingGuideCNN):
    """Flattened in Flax's own (H, W, C) order."""

    def __call__(self, x: Any) -> Any:
        h = nnx.relu(self.conv(x))
        return self.fc(h.reshape(h.shape[0], -1))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        h = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))
        return nn.Dense(5)(h.reshape(h.shape[0], -1))


def unknown_of(tree: ut.ParamTree) -> dict[str, Any]:
    view = view_of(tree)
    return {
        ".".join(map(str, path)): view.unknown(p) for path, p in view.leaves() if view.unknown(p)
    }


def nnx_out(tree: ut.ParamTree) -> np.ndarray:
    return np.asarray(tree.native(X_LAST))


@pytest.mark.parametrize(
    ("model", "right"), [(PortingGuideCNN, "channels_first"), (ChannelsLastCNN, "channels_last")]
)
def test_nnx_conv_flatten_dense_is_unknown_and_the_user_decides(model: Any, right: str) -> None:
    tree = ut.wrap(model(nnx.Rngs(0)))
    unknown = unknown_of(tree)
    assert list(unknown) == ["fc.weight"]  # the kernel: the bias is per output feature
    u = unknown["fc.weight"]
    assert u.default == "channels_last"  # what unitree assumed before: checkpoints unchanged
    assert "'fc'" in u.reason and "'conv'" in u.reason
    t = torch_cnn()
    before = {k: np.array(v) for k, v in tree.state_dict().items()}
    with pytest.raises(ut.PortError) as e:
        ut.port(t, tree)  # strict: refused, naming both layers, nothing written
    assert "3.weight" in str(e.value) and "fc.weight" in str(e.value)
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), before[k])
    ut.port(t, tree, layouts={"fc": right})
    assert_close(nnx_out(tree), torch_out(t, X), ulps=PORT_ULPS)
    wrong = "channels_last" if right == "channels_first" else "channels_first"
    ut.port(t, tree, layouts={"fc": wrong})
    assert_differ(nnx_out(tree), torch_out(t, X))


def test_linen_compact_conv_flatten_dense_is_unknown() -> None:
    module = LinenCNN()
    tree = ut.wrap(module, module.init(jax.random.key(0), X_LAST))
    unknown = unknown_of(tree)
    assert list(unknown) == ["Dense_0.weight"]
    assert "'Dense_0'" in unknown["Dense_0.weight"].reason
    assert "'Conv_0'" in unknown["Dense_0.weight"].reason
    t = torch_cnn()
    with pytest.raises(ut.PortError, match=r"Dense_0\.weight"):
        ut.port(t, tree)
    # compact submodules report no settings, which strict refuses too: the layout decided,
    # the rest copied as it matches
    ut.port(t, tree, layouts={"Dense_0": "channels_last"}, strict=False)
    assert_close(np.asarray(module.apply(tree.variables, X_LAST)), torch_out(t, X), ulps=PORT_ULPS)


class PooledCNN(nnx.Module):
    """A global mean before the dense layer: it reads the channels alone, nothing to decide."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 4, (3, 3), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x: Any) -> Any:
        return self.fc(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))


def test_a_dense_layer_reading_the_channels_alone_is_decided() -> None:
    tree = ut.wrap(PooledCNN(nnx.Rngs(0)))
    assert not unknown_of(tree)
    t = T.Sequential(
        T.Conv2d(3, 4, 3), T.ReLU(), T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(4, 5)
    )
    with torch.no_grad():
        for p in t.parameters():
            p.uniform_(-0.5, 0.5)
    ut.port(t, tree)
    assert_close(nnx_out(tree), torch_out(t.eval(), X), ulps=PORT_ULPS)


# -- the mirror: a dense layer whose output is reshaped into the map a conv reads -------------
Z = np.random.default_rng(3).standard_normal((2, 6)).astype("float32")


class Decoder(nnx.Module):
    """Linear(6, 48), reshaped to a (4, 4, 3) channels-last map, ReLU, Conv(3 -> 2)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc = nnx.Linear(6, 48, rngs=rngs)
        self.conv = nnx.Conv(3, 2, (3, 3), padding="VALID", rngs=rngs)

    def __call__(self, z: Any) -> Any:
        return self.conv(nnx.relu(self.fc(z).reshape(z.shape[0], 4, 4, 3)))


def test_nnx_dense_reshape_conv_is_unknown_and_the_user_decides() -> None:
    tree = ut.wrap(Decoder(nnx.Rngs(0)))
    unknown = unknown_of(tree)
    assert sorted(unknown) == ["fc.bias", "fc.weight"]  # the output axis: kernel and bias
    assert unknown["fc.weight"].default == "channels_first"  # what unitree did before: nothing
    assert "'fc'" in unknown["fc.weight"].reason and "'conv'" in unknown["fc.weight"].reason
    t = T.Sequential(T.Linear(6, 48), T.Unflatten(1, (3, 4, 4)), T.ReLU(), T.Conv2d(3, 2, 3))
    with torch.no_grad():
        for p in t.parameters():
            p.uniform_(-0.5, 0.5)
    with pytest.raises(ut.PortError, match=r"fc\.weight"):
        ut.port(t, tree)
    ut.port(t, tree, layouts={"fc": "channels_last"})  # the reshape above is channels-last
    want = np.moveaxis(torch_out(t.eval(), Z), 1, -1)
    assert_close(np.asarray(tree.native(Z)), want, ulps=PORT_ULPS)
