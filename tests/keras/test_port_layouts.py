"""The layout of the activations between layers, read from a Keras model's own layers.

A dense layer reading the flatten of a conv output holds its input axis in the order the
activations reach it; unitree reads that order from the model's parameterless layers
(``Flatten`` and its ``data_format``, ``Permute``, ``Reshape``, poolings) and, where a step
is opaque (a ``Lambda``, a subclassed model's ``call``), says the layout is unknown. The
same the other way: a dense layer whose output a ``Reshape`` turns into the feature map a
conv reads. Every expected value is the torch model's own output on the same input (Keras
reads it channels-last, as a user would give it).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch import nn
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut
from unitree._tree import view_of

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_rng() -> None:
    global RNG
    RNG = np.random.default_rng(0)


def to_numpy(t: Any) -> np.ndarray:
    if BACKEND == "tensorflow":
        return np.array(t.numpy())
    if BACKEND == "jax":
        return np.array(t)
    return t.detach().cpu().numpy().copy()


def randomize_torch(model: nn.Module) -> None:
    with torch.no_grad():
        for _, t in model.named_parameters():
            t.copy_(torch.from_numpy(RNG.uniform(-0.5, 0.5, tuple(t.shape))))


def randomize_keras(model: keras.Model) -> None:
    for v in model.weights:
        value = RNG.uniform(0.5, 1.5, tuple(v.shape)) if "variance" in v.name else None
        v.assign(
            (RNG.uniform(-0.5, 0.5, tuple(v.shape)) if value is None else value).astype(v.dtype)
        )


def torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def close(actual: np.ndarray, desired: np.ndarray) -> None:
    assert_close(actual, desired, ulps=PORT_ULPS)


X = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype("float32")  # torch's NCHW
X_LAST = np.ascontiguousarray(np.moveaxis(X, 1, -1))  # the same images, as Keras reads them


def torch_cnn() -> nn.Module:
    """Conv (4 channels of a 4x4 map), ReLU, Flatten (C, H, W), Linear(64, 5)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


def keras_cnn(*between: Any, flatten: Any = None) -> keras.Model:
    """The same in Keras: conv, relu, ``between``, a flatten, dense; built."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 3),
            layers.ReLU(),
            *between,
            flatten or layers.Flatten(),
            layers.Dense(5),
        ]
    )
    model(X_LAST)
    return model


def unknown_of(model: Any) -> dict[str, Any]:
    """{path: Unknown} of every leaf whose layout unitree could not read."""
    view = view_of(ut.wrap(model))
    return {
        ".".join(map(str, path)): view.unknown(p) for path, p in view.leaves() if view.unknown(p)
    }


# -- conv -> flatten -> dense ------------------------------------------------------------------
@pytest.mark.parametrize(
    "between",
    [
        pytest.param([], id="flatten"),  # Keras's own (H, W, C) order: permuted
        pytest.param([layers.Permute((3, 1, 2))], id="permute_then_flatten"),  # (C, H, W): as is
        pytest.param([layers.MaxPooling2D(1), layers.Dropout(0.5)], id="pool_dropout_flatten"),
    ],
)
def test_torch_cnn_into_keras(between: list[Any]) -> None:
    t, k = torch_cnn(), keras_cnn(*between)
    randomize_torch(t)
    assert not unknown_of(k)  # every step between is a layer Keras describes
    ut.port(t, k)
    close(to_numpy(k(X_LAST)), torch_out(t, X))


def test_permute_before_flatten_is_not_permuted_twice() -> None:
    """The issue's example: with Permute((3, 1, 2)), the dense kernel is PyTorch's order."""
    t, k = torch_cnn(), keras_cnn(layers.Permute((3, 1, 2)))
    randomize_torch(t)
    ut.port(t, k)
    kernel = to_numpy(k.layers[-1].kernel.value)
    np.testing.assert_array_equal(kernel, t[3].weight.detach().numpy().T)


def test_keras_cnn_with_permute_into_torch() -> None:
    k, t = keras_cnn(layers.Permute((3, 1, 2))), torch_cnn()
    randomize_keras(k)
    ut.port(k, t)
    close(torch_out(t, X), to_numpy(k(X_LAST)))


def test_flatten_channels_first_of_a_channels_first_conv() -> None:
    """Keras's Flatten(data_format="channels_first") moves the channels last before it
    flattens (Flatten.call): after a channels_first conv, that is the (H, W, C) order."""
    k = keras.Sequential(
        [
            keras.Input((3, 6, 6)),
            layers.Conv2D(5, 3, data_format="channels_first"),
            layers.ReLU(),
            layers.Flatten(data_format="channels_first"),
            layers.Dense(5),
        ]
    )
    k(X)
    t = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 5))
    randomize_torch(t)
    ut.port(t, k)
    close(to_numpy(k(X)), torch_out(t, X))


def test_global_pooling_has_no_flatten_to_permute() -> None:
    k = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 3),
            layers.GlobalAveragePooling2D(),
            layers.Dense(5),
        ]
    )
    k(X_LAST)
    t = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    randomize_torch(t)
    assert not unknown_of(k)
    ut.port(t, k)
    close(to_numpy(k(X_LAST)), torch_out(t, X))


def test_a_functional_model_is_read_through_its_graph() -> None:
    inputs = keras.Input((6, 6, 3))
    h = layers.ReLU()(layers.Conv2D(4, 3)(inputs))
    h = layers.Flatten()(layers.Permute((3, 1, 2))(h))
    k = keras.Model(inputs, layers.Dense(5)(h))
    t = torch_cnn()
    randomize_torch(t)
    assert not unknown_of(k)
    ut.port(t, k)
    close(to_numpy(k(X_LAST)), torch_out(t, X))


def test_a_separable_conv_starts_a_map_of_its_own() -> None:
    """SeparableConv2D has no PyTorch twin in the tables, but its output is a channels-last map
    of its filters: the dense layer after its flatten is permuted by those channels (not by
    the conv's before it), as PyTorch's Linear after a (C, H, W) flatten would hold it."""
    k = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 1),
            layers.SeparableConv2D(5, 3),
            layers.Flatten(),
            layers.Dense(2),
        ]
    )
    k(X_LAST)
    tree = ut.wrap(k)
    assert not unknown_of(k)
    kernel = to_numpy(k.layers[-1].kernel.value).astype("float64")  # (4*4*5, 2)
    fmap = np.random.default_rng(3).standard_normal((4, 4, 5))  # the separable conv's output
    weight = tree["3.weight"].numpy().astype("float64")
    # PyTorch's Linear on the (C, H, W) flatten computes what Keras's Dense on (H, W, C) does
    np.testing.assert_allclose(
        weight @ np.moveaxis(fmap, -1, 0).reshape(-1), fmap.reshape(-1) @ kernel, atol=1e-12
    )


# -- what cannot be seen: unknown, and a port refuses it under strict --------------------------
def lambda_cnn() -> keras.Model:
    """A Lambda that transposes to (C, H, W) before the flatten: unitree cannot see it."""
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 3),
            layers.ReLU(),
            layers.Lambda(lambda x: keras.ops.transpose(x, (0, 3, 1, 2))),
            layers.Flatten(),
            layers.Dense(5),
        ]
    )


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.Conv2D(4, 3)
        self.dense = layers.Dense(5)

    def call(self, x: Any) -> Any:
        h = keras.ops.relu(self.conv(x))
        h = keras.ops.transpose(h, (0, 3, 1, 2))  # as PyTorch flattens
        return self.dense(keras.ops.reshape(h, (keras.ops.shape(h)[0], -1)))


def ops_cnn() -> keras.Model:
    """A functional model with a Keras operation (no layer) between the conv and the dense."""
    inputs = keras.Input((6, 6, 3))
    h = layers.ReLU()(layers.Conv2D(4, 3)(inputs))
    h = keras.ops.reshape(keras.ops.transpose(h, (0, 3, 1, 2)), (-1, 64))
    return keras.Model(inputs, layers.Dense(5)(h))


@pytest.mark.parametrize(
    ("make", "dense", "conv", "between"),
    [
        (lambda_cnn, "4", "0", "Lambda"),
        (Subclassed, "dense", "conv", "Subclassed"),
        (ops_cnn, "2", "0", "operation"),
    ],
)
def test_an_opaque_step_makes_the_layout_unknown(
    make: Any, dense: str, conv: str, between: str
) -> None:
    k = make()
    k(X_LAST)
    unknown = unknown_of(k)
    assert list(unknown) == [f"{dense}.weight"]  # the kernel only: the bias is per output
    u = unknown[f"{dense}.weight"]
    assert set(u.candidates) == {"channels_last", "channels_first"}
    assert u.default == "channels_last"  # what unitree assumed before: checkpoints unchanged
    assert repr(dense) in u.reason and repr(conv) in u.reason and between in u.reason
    # a port refuses it, naming both layers, and writes nothing
    t = torch_cnn()
    randomize_torch(t)
    before = [to_numpy(v.value).copy() for v in k.weights]
    with pytest.raises(ut.PortError) as e:
        ut.port(t, k)
    assert "3.weight" in str(e.value) and f"{dense}.weight" in str(e.value)
    for v, old in zip(k.weights, before):
        np.testing.assert_array_equal(to_numpy(v.value), old)


def test_the_user_decides_an_unknown_layout() -> None:
    """Each of these models flattens as PyTorch does: the channels_first candidate is right,
    the default is not."""
    k, t = lambda_cnn(), torch_cnn()
    k(X_LAST)
    randomize_torch(t)
    ut.port(t, k, layouts={"4": "channels_first"})
    close(to_numpy(k(X_LAST)), torch_out(t, X))
    ut.port(t, k, strict=False)  # the default, channels-last: not this model's function
    assert_differ(to_numpy(k(X_LAST)), torch_out(t, X))


def test_a_checkpoint_of_an_unknown_layout_round_trips(tmp_path: Any) -> None:
    """A checkpoint keeps the default candidate: the same model reads it back exactly."""
    k, other = lambda_cnn(), lambda_cnn()
    k(X_LAST)
    other(X_LAST)
    randomize_keras(k)
    ut.save(ut.wrap(k), tmp_path / "k.safetensors")
    ut.load(ut.wrap(other), tmp_path / "k.safetensors")
    for a, b in zip(k.weights, other.weights):
        np.testing.assert_array_equal(to_numpy(a.value), to_numpy(b.value))


# -- the mirror: dense -> Reshape -> conv --------------------------------------------------------
Z = np.random.default_rng(2).standard_normal((2, 6)).astype("float32")


def torch_decoder() -> nn.Module:
    """Linear(6, 4*4*3), Unflatten to (C, H, W) = (3, 4, 4), ReLU, Conv2d(3, 2, 3)."""
    return nn.Sequential(
        nn.Linear(6, 48), nn.Unflatten(1, (3, 4, 4)), nn.ReLU(), nn.Conv2d(3, 2, 3)
    )


def keras_decoder(*steps: Any) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((6,)), layers.Dense(48), *steps, layers.ReLU(), layers.Conv2D(2, 3)]
    )
    model(Z)
    return model


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([layers.Reshape((4, 4, 3))], id="reshape_hwc"),  # channels-last: permuted
        # reshaped as PyTorch does, then moved channels-last: as is
        pytest.param([layers.Reshape((3, 4, 4)), layers.Permute((2, 3, 1))], id="reshape_chw"),
    ],
)
@pytest.mark.parametrize("direction", ["torch_to_keras", "keras_to_torch"])
def test_dense_reshape_conv(steps: list[Any], direction: str) -> None:
    k, t = keras_decoder(*steps), torch_decoder()
    assert not unknown_of(k)
    if direction == "torch_to_keras":
        randomize_torch(t)
        ut.port(t, k)
    else:
        randomize_keras(k)
        ut.port(k, t)
    close(to_numpy(k(Z)), np.moveaxis(torch_out(t, Z), 1, -1))


def test_dense_norm_reshape_upsample_conv() -> None:
    """DCGAN's generator: a norm over the dense output, then an upsampling before the conv."""
    k = keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(48),
            layers.BatchNormalization(epsilon=1e-5, momentum=0.9),  # torch's 0.1
            layers.Reshape((4, 4, 3)),
            layers.UpSampling2D(2),
            layers.Conv2D(2, 3),
        ]
    )
    k(Z)
    t = nn.Sequential(
        nn.Linear(6, 48),
        nn.BatchNorm1d(48),
        nn.Unflatten(1, (3, 4, 4)),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(3, 2, 3),
    )
    randomize_torch(t)
    with torch.no_grad():
        t[1].running_mean.copy_(torch.from_numpy(RNG.uniform(-0.5, 0.5, 48)))
        t[1].running_var.copy_(torch.from_numpy(RNG.uniform(0.5, 1.5, 48)))
    ut.port(t, k)
    close(to_numpy(k(Z, training=False)), np.moveaxis(torch_out(t, Z), 1, -1))


def test_dense_lambda_conv_is_unknown() -> None:
    k = keras_decoder(layers.Lambda(lambda x: keras.ops.reshape(x, (-1, 4, 4, 3))))
    unknown = unknown_of(k)
    assert sorted(unknown) == ["0.bias", "0.weight"]
    u = unknown["0.weight"]
    assert u.default == "channels_first"  # what unitree did before: nothing
    assert "'0'" in u.reason and "'3'" in u.reason and "Lambda" in u.reason
