"""What a new user meets first, on Keras: public functions take the model itself, and every
path unitree prints indexes the tree again."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from unitree.conformance.builders.keras import _numpy as numpy  # the backend's own API

import unitree as ut

X = np.random.default_rng(0).random((2, 4), dtype=np.float32)


def mlp(seed: int) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    net(X)
    return net


def test_save_load_and_summary_take_the_model_itself(tmp_path):
    src, dst = mlp(0), mlp(1)
    ut.save(src, tmp_path / "m.safetensors")
    assert ut.load(dst, tmp_path / "m.safetensors") == ([], [])
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(numpy(a.value), numpy(b.value))
    src.layers[0].trainable = False
    rows = str(ut.summary(src)).splitlines()
    assert rows[2].split()[0] == "0.weight" and rows[2].split()[-1] == "frozen"
    assert rows[-1].startswith("parameters: 49 (40 frozen)")


class Heads(keras.Model):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.heads = {key: keras.layers.Dense(2), "c": keras.layers.Dense(3)}

    def call(self, x):  # type: ignore[no-untyped-def]
        return self.heads["c"](next(iter(self.heads.values()))(x))


@pytest.mark.parametrize("key", ["a.b", ""])
def test_a_dict_key_no_path_could_reach_is_refused(key):
    """named_parameters() used to list 'heads.a.b.kernel', which tree[...] could not find."""
    model = Heads(key)
    model(X)
    tree = ut.wrap(model)
    with pytest.raises(ut.UnsupportedModelError, match=f"named {key!r} under 'heads'"):
        list(tree.named_parameters())


def test_every_printed_path_indexes_the_tree():
    model = Heads("a_b")
    model(X)
    tree = ut.wrap(model)
    paths = [path for path, _ in tree.named_parameters()]
    assert paths == ["heads.a_b.weight", "heads.a_b.bias", "heads.c.weight", "heads.c.bias"]
    assert all(tree[path] is p for path, p in tree.named_parameters())
    assert all(tree[path].path == path for path, _ in tree.named_modules() if path)
