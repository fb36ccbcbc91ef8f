"""A torch MLP against its Keras twin (``Dense(16, activation="relu")``: the activation folded
in), run natively and compared layer by layer (``unitree._check``) on every Keras backend: each
Keras layer is caught before its activation, as torch's ``Linear`` gives it; a perturbed layer
is named first; the final difference is what both frameworks compute."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch
from torch import nn

from unitree._canon import layers
from unitree._check import DIFFERS, OK, compare_models
from unitree._tree import view_of


def torch_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def keras_twin(src: nn.Sequential, subclassed: bool) -> keras.Model:
    if subclassed:
        model: keras.Model = Mlp()
    else:
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(2),
            ]
        )
    model(np.zeros((1, 4), np.float32))  # built
    dense = [m for m in src if isinstance(m, nn.Linear)]
    for layer, m in zip(twin_layers(model), dense):
        layer.set_weights([m.weight.detach().numpy().T, m.bias.detach().numpy()])
    return model


class Mlp(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = [
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
        ]
        self.out = keras.layers.Dense(2)

    def call(self, x: Any) -> Any:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def twin_layers(model: keras.Model) -> list[Any]:
    return [*model.blocks, model.out] if isinstance(model, Mlp) else list(model.layers)


def hand_pairs(src: Any, dst: Any) -> list[tuple[str, Any, str, Any]]:
    ls, ld = layers(view_of(src)), layers(view_of(dst))
    assert len(ls) == len(ld) == 3
    return [(a.path, a.module, b.path, b.module) for a, b in zip(ls, ld)]


def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def natively(src: nn.Module, dst: keras.Model, x: np.ndarray) -> float:
    with torch.no_grad():
        a = src(torch.from_numpy(x)).numpy()
    b = dst.predict(x, verbose=0)  # Keras's own inference, as numpy
    return float(np.max(np.abs(a - b)))


def test_a_keras_twin_agrees_layer_by_layer_before_its_activations():
    src = torch_mlp()
    for subclassed in (False, True):
        dst = keras_twin(src, subclassed)
        x = inputs()
        c = compare_models(view_of(src), view_of(dst), hand_pairs(src, dst), x)
        assert c.ok and [r.status for r in c.rows] == [OK, OK, OK], str(c)
        np.testing.assert_allclose(c.output_difference, natively(src, dst, x), rtol=1e-6, atol=1e-7)
        assert all("call" not in vars(layer) for layer in twin_layers(dst))  # wrappers gone
        assert twin_layers(dst)[0].activation is keras.activations.relu  # put back


def test_a_perturbed_keras_layer_is_named_first():
    src = torch_mlp()
    for subclassed in (False, True):
        dst = keras_twin(src, subclassed)
        middle = twin_layers(dst)[1]
        k = middle.kernel.numpy().copy()
        k[2, 3] += 0.5
        middle.kernel.assign(k)
        x = inputs()
        ps = hand_pairs(src, dst)
        c = compare_models(view_of(src), view_of(dst), ps, x)
        assert [r.status for r in c.rows] == [OK, DIFFERS, DIFFERS]
        assert (c.first_difference.src, c.first_difference.dst) == (ps[1][0], ps[1][2])
        expected = natively(src, dst, x)
        assert expected > 1e-2
        np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)
