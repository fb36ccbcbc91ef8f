"""A conv's padding is compared by meaning between PyTorch and flax, and fails closed.

The expectation is PyTorch's own output on the same input (flax reads it channels last). Flax's
``'SAME'`` at stride 2 pads 0 before and 1 after on an even input, PyTorch's ``padding=1`` 1
and 1: the same shapes, other values, so that port is refused, whether the flax conv is
declared where its settings can be read (``setup``, NNX) or made by a ``@nn.compact`` method,
whose settings exist only during a call (unknown: refused). At stride 1 ``'SAME'`` is
PyTorch's symmetric k // 2 (and its ``padding='same'``, the extra one after for an even
kernel): those ports go through, with PyTorch's outputs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

torch.set_num_threads(1)
T = torch.nn


def image(seed: int = 0, size: int = 8, channels: int = 3) -> np.ndarray:
    """A channels-last batch of 2 (flax's layout), even-sized: 'SAME' at stride 2 pads 0, 1."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, size, size, channels)).astype(np.float32)


def torch_conv(*args: Any, **kwargs: Any) -> T.Sequential:
    torch.manual_seed(0)  # random weights and bias, seeded
    return T.Sequential(T.Conv2d(*args, **kwargs))


def torch_out(model: T.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch's own output, channels first in and out; returned channels last."""
    with torch.no_grad():
        return model(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1).numpy()


class CompactConv(nn.Module):
    """The conv made inside a compact method: its settings exist only while it runs."""

    features: int
    strides: int = 1
    padding: Any = "SAME"

    @nn.compact
    def __call__(self, x: Any) -> Any:
        return nn.Conv(self.features, (3, 3), strides=self.strides, padding=self.padding)(x)


class SetupConv(nn.Module):
    """The same conv declared in setup: its definition holds its settings."""

    features: int
    strides: int = 1
    padding: Any = "SAME"

    def setup(self) -> None:
        self.conv = nn.Conv(self.features, (3, 3), strides=self.strides, padding=self.padding)

    def __call__(self, x: Any) -> Any:
        return self.conv(x)


def linen(module: nn.Module, x: np.ndarray) -> ut.ParamTree:
    return ut.wrap(module, module.init(jax.random.key(1), x))


def linen_out(tree: ut.ParamTree, x: np.ndarray) -> np.ndarray:
    return np.asarray(tree.native.apply(tree.variables, x))


def nnx_conv(**kwargs: Any) -> ut.ParamTree:
    return ut.wrap(nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(1), **kwargs)))


def nnx_out(tree: ut.ParamTree, x: np.ndarray) -> np.ndarray:
    return np.asarray(tree.native(x))


def close(flax_y: np.ndarray, torch_y: np.ndarray) -> None:
    assert_close(flax_y, torch_y, ulps=PORT_ULPS)


# -- refused: stride 2, 'SAME' against PyTorch's padding 1 ----------------------------------------
STRIDE_2: dict[str, tuple[Callable[[np.ndarray], ut.ParamTree], Callable[..., np.ndarray]]] = {
    "linen compact": (lambda x: linen(CompactConv(4, strides=2), x), linen_out),
    "linen setup": (lambda x: linen(SetupConv(4, strides=2), x), linen_out),
    "nnx": (lambda x: nnx_conv(strides=2), nnx_out),
}


@pytest.mark.parametrize("where", list(STRIDE_2))
def test_same_at_stride_2_is_not_padding_1(where: str) -> None:
    """torch Conv2d(3, 4, 3, stride=2, padding=1) into flax's Conv(4, (3, 3), strides=2): the
    port is refused, naming padding, and nothing is written. Copied anyway (strict=False), the
    outputs differ from PyTorch's: the refusal guards a real difference."""
    x = image()
    src = torch_conv(3, 4, 3, stride=2, padding=1)
    make, out = STRIDE_2[where]
    dst = make(x)
    before = {k: np.array(v) for k, v in dst.state_dict().items()}
    with pytest.raises(ut.PortError, match="padding"):
        ut.port(src, dst)
    for key, value in dst.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    ut.port(src, dst, strict=False)
    want = torch_out(src, x)
    got = out(dst, x)
    assert got.shape == want.shape  # the same shapes: only the values tell them apart
    assert_differ(got, want)


# -- ported: stride 1, 'SAME' is PyTorch's symmetric k // 2 ---------------------------------------
SAME: dict[str, tuple[Callable[[np.ndarray], ut.ParamTree], Callable[..., np.ndarray]]] = {
    "linen setup": (lambda x: linen(SetupConv(4), x), linen_out),
    "linen sequential": (lambda x: linen(nn.Sequential([nn.Conv(4, (3, 3))]), x), linen_out),
    "nnx": (lambda x: nnx_conv(), nnx_out),
}


@pytest.mark.parametrize("where", list(SAME))
def test_same_at_stride_1_is_padding_k_over_2(where: str) -> None:
    """torch Conv2d(3, 4, 3, stride=1, padding=1) into flax's Conv(4, (3, 3)) ('SAME'): the same
    function, ported strictly; the flax outputs are PyTorch's."""
    x = image()
    src = torch_conv(3, 4, 3, padding=1)
    make, out = SAME[where]
    dst = make(x)
    report = ut.port(src, dst)
    assert report.settings == []
    close(out(dst, x), torch_out(src, x))


def test_same_with_an_even_kernel_pads_the_extra_one_after() -> None:
    """PyTorch's padding='same' with a (2, 4) kernel pads (0, 1) and (1, 2), as flax's 'SAME'."""
    x = image()
    src = torch_conv(3, 4, (2, 4), padding="same")
    dst = linen(nn.Sequential([nn.Conv(4, (2, 4))]), x)
    ut.port(src, dst)
    close(linen_out(dst, x), torch_out(src, x))


# -- padding modes: flax's 'CIRCULAR' and 'REFLECT' are PyTorch's, by meaning ----------------------
@pytest.mark.parametrize(
    ("mode", "flax_padding"), [("circular", "CIRCULAR"), ("reflect", "REFLECT")]
)
def test_padding_modes_by_meaning(mode: str, flax_padding: str) -> None:
    """torch Conv2d(padding=1, padding_mode=mode) is flax's Conv(padding=flax_padding) with a
    kernel of 3: ported, with PyTorch's outputs; against a zero-padded 'SAME' conv, refused."""
    x = image()
    src = torch_conv(3, 4, 3, padding=1, padding_mode=mode)
    dst = nnx_conv(padding=flax_padding)
    ut.port(src, dst)
    close(nnx_out(dst, x), torch_out(src, x))
    zeros = nnx_conv()
    with pytest.raises(ut.PortError, match="padding_mode"):
        ut.port(src, zeros)
    ut.port(src, zeros, strict=False)
    assert_differ(nnx_out(zeros, x), torch_out(src, x))


def test_what_the_flax_adapter_reports() -> None:
    """The vocabulary read from a linen definition and from an NNX module; a compact
    submodule's settings cannot be read without running the model: none."""
    x = image()
    tree = linen(SetupConv(4, strides=2, padding="REFLECT"), x)
    reported = tree._adapter.settings(tree["conv"]._module)
    assert reported == {
        "padding": ((1, 1), (1, 1)),  # at any stride: the kernel's reach, split
        "padding_mode": "reflect",
        "stride": (2, 2),
        "dilation": (1, 1),
        "groups": 1,
        "input_dilation": (1, 1),
        "kernel_mask": False,
    }
    compact = linen(CompactConv(4, strides=2), x)
    assert compact._adapter.settings(compact["Conv_0"]._module) == {}
    bn = ut.wrap(nnx.BatchNorm(3, use_scale=False, rngs=nnx.Rngs(0)))
    assert bn._adapter.settings(bn._native) == {
        "eps": 1e-5,
        "scale": False,
        "center": True,
        "momentum": 0.01,  # flax's 0.99 weighs the old value
    }
    rnn = ut.wrap(nnx.RNN(nnx.LSTMCell(2, 3, rngs=nnx.Rngs(0)), reverse=True, keep_order=True))
    assert rnn._adapter.settings(rnn._native)["reverse"] == "keep_order"
