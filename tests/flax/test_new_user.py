"""What a new user meets first, on Flax: public functions take an NNX model itself, a linen
tree keeps its variables, and every path unitree prints indexes the tree again."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import linen, nnx

import unitree as ut

X = np.random.default_rng(0).random((2, 4), dtype=np.float32)


def nnx_mlp(seed: int) -> nnx.Sequential:
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 1, rngs=rngs))


def test_nnx_save_load_and_summary_take_the_model_itself(tmp_path):
    src, dst = nnx_mlp(0), nnx_mlp(1)
    ut.save(src, tmp_path / "m.safetensors")
    assert ut.load(dst, tmp_path / "m.safetensors") == ([], [])
    np.testing.assert_array_equal(np.asarray(dst(X)), np.asarray(src(X)))
    assert "0.weight  Linear  (8, 4)  float32  32" in repr(ut.summary(src))


def test_linen_needs_its_variables_and_a_tree_keeps_them(tmp_path):
    net = linen.Sequential([linen.Dense(8), linen.relu, linen.Dense(1)])
    variables = net.init(jax.random.key(0), X)
    tree = ut.wrap(net, variables)
    with pytest.raises(ut.UnsupportedModelError, match="a tree already holds its variables"):
        ut.wrap(tree, variables)  # used to return the tree and drop the variables silently
    with pytest.raises(ut.UnsupportedModelError, match="variables"):
        ut.save(net, tmp_path / "m.safetensors")  # a linen module alone has no values
    ut.save(tree, tmp_path / "m.safetensors")
    other = ut.wrap(net, net.init(jax.random.key(1), X))
    ut.load(other, tmp_path / "m.safetensors")
    np.testing.assert_array_equal(
        np.asarray(net.apply(other.variables, X)), np.asarray(net.apply(variables, X))
    )


class NnxHeads(nnx.Module):
    def __init__(self, key: str, rngs: nnx.Rngs) -> None:
        self.heads = nnx.Dict({key: nnx.Linear(4, 2, rngs=rngs), "c": nnx.Linear(4, 3, rngs=rngs)})


class LinenHeads(linen.Module):
    key: str

    def setup(self) -> None:
        self.heads = {self.key: linen.Dense(2), "c": linen.Dense(3)}

    def __call__(self, x):  # type: ignore[no-untyped-def]
        return self.heads[self.key](x).sum() + self.heads["c"](x).sum()


def linen_tree(key: str) -> ut.ParamTree:
    net = LinenHeads(key)
    return ut.wrap(net, net.init(jax.random.key(0), X))


@pytest.mark.parametrize("key", ["a.b", ""])
@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_a_dict_key_no_path_could_reach_is_refused(api, key):
    """A key holding a '.' printed a path that tree[...] could not find again."""
    tree = ut.wrap(NnxHeads(key, nnx.Rngs(0))) if api == "nnx" else linen_tree(key)
    with pytest.raises(ut.UnsupportedModelError, match=f"named {key!r} under 'heads'"):
        list(tree.named_parameters())


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_every_printed_path_indexes_the_tree(api):
    tree = ut.wrap(NnxHeads("a_b", nnx.Rngs(0))) if api == "nnx" else linen_tree("a_b")
    paths = [path for path, _ in tree.named_parameters()]
    assert paths == ["heads.a_b.weight", "heads.a_b.bias", "heads.c.weight", "heads.c.bias"]
    assert all(tree[path] is p for path, p in tree.named_parameters())
