"""A torch conv net against its twins in Keras (on jax), flax linen and NNX, run natively and
compared layer by layer (``unitree._check``): channels-first conv outputs against
channels-last ones after moving the axis, a perturbed layer named first, the final difference
as each framework computes it, and every model left in the mode it was in."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import keras
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx

import unitree as ut
from unitree._canon import layers
from unitree._check import DIFFERS, NOT_COMPARABLE, OK, compare_models, describe_mismatch
from unitree._tree import view_of

torch.set_num_threads(1)  # tiny models: threads only cost here

MOVED = "channels-last moved to channels-first"


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


def torch_net() -> TorchNet:
    torch.manual_seed(0)
    net = TorchNet()
    with torch.no_grad():  # biases away from zero: a bias left out must show
        for m in (net.conv1, net.conv2, net.head):
            m.bias.normal_()
    return net


def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def weights(net: TorchNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of each layer in the channels-last frameworks' layouts."""
    conv = [m.weight.detach().numpy().transpose(2, 3, 1, 0) for m in (net.conv1, net.conv2)]
    dense = net.head.weight.detach().numpy().T
    biases = [m.bias.detach().numpy() for m in (net.conv1, net.conv2, net.head)]
    return [(np.ascontiguousarray(k), b) for k, b in zip([*conv, dense], biases)]


# -- the twins, each given the torch net's values through its own framework's API ----------
def keras_sequential(values: list[tuple[np.ndarray, np.ndarray]]) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),  # relu folded in
            keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    for layer, (k, b) in zip([model.layers[0], model.layers[1], model.layers[3]], values):
        layer.set_weights([k, b])
    return model


class KerasNet(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same")
        self.conv2 = keras.layers.Conv2D(6, 3, padding="same")
        self.head = keras.layers.Dense(5)

    def call(self, x: Any) -> Any:
        x = keras.ops.relu(self.conv2(keras.ops.relu(self.conv1(x))))
        return self.head(keras.ops.mean(x, axis=(1, 2)))


def keras_subclassed(values: list[tuple[np.ndarray, np.ndarray]]) -> keras.Model:
    model = KerasNet()
    model(np.zeros((1, 8, 8, 3), np.float32))  # build
    for layer, (k, b) in zip([model.conv1, model.conv2, model.head], values):
        layer.set_weights([k, b])
    return model


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x: Any) -> Any:
        x = nn.relu(nn.Conv(4, (3, 3), padding=1)(x))
        x = nn.relu(nn.Conv(6, (3, 3), padding=1)(x))
        return nn.Dense(5)(x.mean(axis=(1, 2)))


def linen(values: list[tuple[np.ndarray, np.ndarray]]) -> ut.ParamTree:
    names = ["Conv_0", "Conv_1", "Dense_0"]
    params = {
        n: {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)} for n, (k, b) in zip(names, values)
    }
    return ut.wrap(LinenNet(), {"params": params})


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), padding=1, rngs=rngs)
        self.head = nnx.Linear(6, 5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)  # in training mode it would change the output

    def __call__(self, x: Any) -> Any:
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.head(self.drop(x.mean(axis=(1, 2))))


def nnx_net(values: list[tuple[np.ndarray, np.ndarray]]) -> NnxNet:
    model = NnxNet(nnx.Rngs(0))
    for m, (k, b) in zip([model.conv1, model.conv2, model.head], values):
        m.kernel.set_value(jnp.asarray(k))
        m.bias.set_value(jnp.asarray(b))
    return model


# The native output of each twin, and the second conv's kernel, perturbed natively.
def keras_run(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(nhwc(x), training=False))


def linen_run(tree: ut.ParamTree, x: np.ndarray) -> np.ndarray:
    return np.asarray(tree.native.apply(tree.variables, nhwc(x)))


def nnx_run(model: NnxNet, x: np.ndarray) -> np.ndarray:
    model.eval()
    try:
        return np.asarray(model(nhwc(x)))
    finally:
        model.train()


def keras_perturb(model: Any) -> None:
    conv2 = model.layers[1] if isinstance(model, keras.Sequential) else model.conv2
    k = np.array(keras.ops.convert_to_numpy(conv2.kernel.value))
    k[1, 1, 2, 3] += 0.5
    conv2.kernel.assign(k)


def linen_perturb(tree: ut.ParamTree) -> ut.ParamTree:
    params = dict(tree.variables["params"])
    conv = dict(params["Conv_1"])
    conv["kernel"] = conv["kernel"].at[1, 1, 2, 3].add(0.5)
    params["Conv_1"] = conv
    return ut.wrap(LinenNet(), {"params": params})


def nnx_perturb(model: NnxNet) -> None:
    k = model.conv2.kernel.get_value()
    model.conv2.kernel.set_value(k.at[1, 1, 2, 3].add(0.5))


TWINS: dict[str, tuple[Callable[..., Any], Callable[..., np.ndarray], Callable[..., Any]]] = {
    "keras": (keras_sequential, keras_run, keras_perturb),
    "keras-subclassed": (keras_subclassed, keras_run, keras_perturb),
    "linen": (linen, linen_run, linen_perturb),
    "nnx": (nnx_net, nnx_run, nnx_perturb),
}


def hand_pairs(src: Any, dst: Any) -> list[tuple[str, Any, str, Any]]:
    """The two models' layers side by side: both list theirs in one order (conv1, conv2, head)."""
    ls, ld = layers(view_of(src)), layers(view_of(dst))
    assert len(ls) == len(ld)
    return [(a.path, a.module, b.path, b.module) for a, b in zip(ls, ld)]


def torch_out(net: TorchNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(params=list(TWINS))
def twin(request: pytest.FixtureRequest) -> str:
    return request.param


def test_the_twin_agrees_layer_by_layer_after_moving_the_channels_axis(twin: str):
    make, run, _ = TWINS[twin]
    net = torch_net()
    dst = make(weights(net))
    x = images()
    c = compare_models(view_of(net), view_of(dst), hand_pairs(net, dst), x, dst_inputs=nhwc)
    assert c.ok and c.layers_ok, str(c)
    assert [(r.status, r.note) for r in c.rows] == [(OK, MOVED), (OK, MOVED), (OK, "")]
    expected = np.max(np.abs(torch_out(net, x) - run(dst, x)))
    np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)
    assert c.output_difference <= c.output.tolerance


def test_a_perturbed_layer_is_named_first(twin: str):
    make, run, perturb = TWINS[twin]
    net = torch_net()
    dst = make(weights(net))
    dst = perturb(dst) or dst  # linen: new variables, a new tree
    x = images()
    ps = hand_pairs(net, dst)
    c = compare_models(view_of(net), view_of(dst), ps, x, dst_inputs=nhwc)
    assert not c.ok
    assert [r.status for r in c.rows] == [OK, DIFFERS, DIFFERS]
    assert c.first_difference is not None
    assert (c.first_difference.src, c.first_difference.dst) == (ps[1][0], ps[1][2])
    expected = np.max(np.abs(torch_out(net, x) - run(dst, x)))
    assert expected > 1e-2
    np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)
    assert f"{ps[1][0]} -> {ps[1][2]}" in describe_mismatch(c)


def test_the_models_are_left_in_their_mode():
    net = torch_net()
    net.train()
    model = nnx_net(weights(net))
    assert model.drop.deterministic is False  # training mode, as built
    c = compare_models(
        view_of(net), view_of(model), hand_pairs(net, model), images(), dst_inputs=nhwc
    )
    assert c.ok  # dropout was off for the run
    assert net.training and model.drop.deterministic is False
    assert type(model.conv1).__dict__["__call__"] is nnx.Conv.__dict__["__call__"]
    keras_model = keras_subclassed(weights(net))
    compare_models(
        view_of(net), view_of(keras_model), hand_pairs(net, keras_model), images(), dst_inputs=nhwc
    )
    assert "call" not in vars(keras_model.conv1)


class LinenBatchNet(nn.Module):
    @nn.compact
    def __call__(self, x: Any, train: bool) -> Any:
        x = nn.Dense(4)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)


def test_a_linen_model_in_training_mode_needs_its_argument():
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        src[1].running_mean.normal_()
        src[1].running_var.uniform_(0.5, 2.0)
    lin, bn = src
    variables = {
        "params": {
            "Dense_0": {
                "kernel": jnp.asarray(lin.weight.detach().numpy().T),
                "bias": jnp.asarray(lin.bias.detach().numpy()),
            },
            "BatchNorm_0": {
                "scale": jnp.asarray(bn.weight.detach().numpy()),
                "bias": jnp.asarray(bn.bias.detach().numpy()),
            },
        },
        "batch_stats": {
            "BatchNorm_0": {
                "mean": jnp.asarray(bn.running_mean.numpy()),
                "var": jnp.asarray(bn.running_var.numpy()),
            }
        },
    }
    tree = ut.wrap(LinenBatchNet(), variables)
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    ps = hand_pairs(src, tree)
    with pytest.raises(ut.UnsupportedError, match="train=False"):
        compare_models(view_of(src), view_of(tree), ps, x, dst_kwargs={"train": True})
    c = compare_models(view_of(src), view_of(tree), ps, x, dst_kwargs={"train": False})
    assert c.ok and [r.status for r in c.rows] == [OK, OK], str(c)
    expected = np.max(
        np.abs(torch_out(src, x) - np.asarray(tree.native.apply(tree.variables, x, train=False)))
    )
    np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)


def test_a_layer_against_an_unrelated_one_is_not_comparable():
    net = torch_net()
    model = nnx_net(weights(net))
    ps = hand_pairs(net, model)
    crossed = [(ps[0][0], ps[0][1], ps[2][2], ps[2][3])]  # a conv's images against a dense's vector
    c = compare_models(view_of(net), view_of(model), crossed, images(), dst_inputs=nhwc)
    assert c.rows[0].status == NOT_COMPARABLE and c.first_difference is None
