"""A conv's padding is compared by meaning between PyTorch and Keras, and fails closed.

The expectation is PyTorch's own output on the same input (Keras reads it channels last).
Keras's ``padding="same"`` at stride 1 with a kernel of 3 pads 1 and 1, PyTorch's
``padding=1``: one function, spelled two ways, ported. At stride 2 on an even input it pads 0
before and 1 after: refused against ``padding=1``. A reflect-padded torch conv is refused
against Keras's zero padding.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import torch
from keras import layers
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

T = torch.nn
BACKEND = keras.backend.backend()


def image(seed: int = 0, size: int = 8, channels: int = 3) -> np.ndarray:
    """A channels-last batch of 2 (Keras's layout), even-sized: "same" at stride 2 pads 0, 1."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, size, size, channels)).astype(np.float32)


def torch_conv(*args: Any, **kwargs: Any) -> T.Sequential:
    torch.manual_seed(0)  # random weights and bias, seeded
    return T.Sequential(T.Conv2d(*args, **kwargs))


def torch_out(model: T.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch's own output, channels first in and out; returned channels last."""
    with torch.no_grad():
        return model(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1).numpy()


def keras_conv(x: np.ndarray, **kwargs: Any) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(x.shape[1:]), layers.Conv2D(3, 3, **kwargs)])
    model(x)
    return model


def keras_out(model: keras.Model, x: np.ndarray) -> np.ndarray:
    y = model(x)
    if BACKEND == "torch":
        return y.detach().cpu().numpy()
    return np.array(y)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.weights]


def test_same_at_stride_1_is_torch_padding_1() -> None:
    """torch Conv2d(3, 3, 3, padding=1) into Keras Conv2D(3, 3, padding="same"): ported strictly,
    Keras's outputs are PyTorch's."""
    x = image()
    src = torch_conv(3, 3, 3, padding=1)
    dst = keras_conv(x, padding="same")
    report = ut.port(src, dst)
    assert report.settings == []
    assert_close(keras_out(dst, x), torch_out(src, x), ulps=PORT_ULPS)


def test_same_at_stride_2_is_not_torch_padding_1() -> None:
    """torch Conv2d(3, 3, 3, stride=2, padding=1) into Keras Conv2D(3, 3, strides=2,
    padding="same"): refused naming padding, nothing written; copied anyway, the outputs
    differ from PyTorch's (the same shapes)."""
    x = image()
    src = torch_conv(3, 3, 3, stride=2, padding=1)
    dst = keras_conv(x, strides=2, padding="same")
    before = weights(dst)
    with pytest.raises(ut.PortError, match="padding"):
        ut.port(src, dst)
    for value, old in zip(weights(dst), before):
        np.testing.assert_array_equal(value, old)
    ut.port(src, dst, strict=False)
    got, want = keras_out(dst, x), torch_out(src, x)
    assert got.shape == want.shape
    assert_differ(got, want)


def test_a_reflect_padded_conv_is_not_a_zero_padded_one() -> None:
    """torch Conv2d(padding=1, padding_mode="reflect") into Keras's "same" (zeros): refused,
    naming padding_mode; copied anyway, the outputs differ from PyTorch's."""
    x = image()
    src = torch_conv(3, 3, 3, padding=1, padding_mode="reflect")
    dst = keras_conv(x, padding="same")
    with pytest.raises(ut.PortError, match="padding_mode"):
        ut.port(src, dst)
    ut.port(src, dst, strict=False)
    assert_differ(keras_out(dst, x), torch_out(src, x))


def test_what_the_keras_adapter_reports() -> None:
    """A norm that keeps a leaf it does not apply says so; the rest of the vocabulary is fixed
    in Keras and reported as such."""
    adapter = ut.wrap(layers.Dense(1))._adapter
    rms = adapter.settings(layers.LayerNormalization(rms_scaling=True))
    assert rms == {"eps": 1e-3, "scale": True, "center": False, "rms_scaling": True, "axes": (-1,)}
    norm = adapter.settings(layers.BatchNormalization(scale=False))
    assert (norm["scale"], norm["center"]) == (False, True)
    assert adapter.settings(layers.Embedding(3, 2, mask_zero=True)) == {
        "max_norm": None,
        "mask_zero": True,
    }
    lstm = adapter.settings(layers.LSTM(2, go_backwards=True))
    assert lstm["reverse"] is True and lstm["stateful"] is False
    conv = adapter.settings(layers.Conv2D(2, 3, padding="same"))
    assert conv["padding"] == "same" and conv["padding_mode"] == "zeros"
