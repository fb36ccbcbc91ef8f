"""The flax adapter on NNX modules, against NNX's own answers."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from unitree_checks import assert_close

import unitree as ut

X = np.random.default_rng(0).random((2, 4), dtype=np.float32)


def mlp(seed: int = 0) -> nnx.Sequential:
    rngs = nnx.Rngs(seed)
    return nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.relu, nnx.Linear(8, 1, rngs=rngs))


def tied(seed: int = 0) -> nnx.Sequential:
    rngs = nnx.Rngs(seed)
    shared = nnx.Linear(8, 8, rngs=rngs)
    first, last = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)
    return nnx.Sequential(first, nnx.relu, shared, nnx.relu, shared, nnx.relu, last)


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.attn = nnx.Linear(6, 6, rngs=rngs)
        self.norm = nnx.LayerNorm(6, rngs=rngs)


class Net(nnx.Module):
    """Lists and dicts of submodules, nesting, a batch norm, dropout, and the GPT-2 tie."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.wte = nnx.Embed(10, 6, rngs=rngs)
        self.blocks = nnx.List([Block(rngs), Block(rngs)])
        self.heads = nnx.Dict(
            {"cls": nnx.Linear(6, 3, rngs=rngs), "bn": nnx.BatchNorm(6, rngs=rngs)}
        )
        self.extra = nnx.data([nnx.Linear(6, 6, rngs=rngs)])  # a plain list, as data
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.lm_head = nnx.Linear(6, 10, use_bias=False, rngs=rngs)
        self.lm_head.kernel = self.wte.embedding  # one nnx.Param at two places

    def __call__(self, ids: jax.Array) -> jax.Array:
        h = self.wte(ids)
        for block in self.blocks:
            h = block.norm(block.attn(h))
        return h @ self.lm_head.kernel[...].T  # the tied head: (10, 6) used as (6, 10)


IDS = np.array([[1, 2, 3], [4, 5, 6]])


# -- paths and structure ----------------------------------------------------------------------
def test_sequential_positions_and_picture():
    net = mlp()
    tree = ut.wrap(net)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.weight", (8, 4)),
        ("0.bias", (8,)),
        ("2.weight", (1, 8)),
        ("2.bias", (1,)),
    ]
    assert tree.native is net and tree[2].native is net.layers[2] and tree[1].native is nnx.relu
    assert tree[2].weight.native is net.layers[2].kernel
    assert str(tree).splitlines()[:3] == ["Sequential", "├─ 0: Linear", "│  ├─ weight (8, 4)"]


def test_attributes_lists_dicts_and_nesting():
    net = Net(nnx.Rngs(0))
    tree = ut.wrap(net)
    assert [k for k, _ in tree.named_parameters()] == [
        "wte.weight",
        "blocks.0.attn.weight",
        "blocks.0.attn.bias",
        "blocks.0.norm.weight",
        "blocks.0.norm.bias",
        "blocks.1.attn.weight",
        "blocks.1.attn.bias",
        "blocks.1.norm.weight",
        "blocks.1.norm.bias",
        "heads.cls.weight",
        "heads.cls.bias",
        "heads.bn.weight",
        "heads.bn.bias",
        "extra.0.weight",
        "extra.0.bias",
    ]
    assert [k for k, _ in tree.named_buffers()] == ["heads.bn.running_mean", "heads.bn.running_var"]
    assert tree.blocks.type_name == "List" and tree.heads.type_name == "Dict"
    assert tree.extra.type_name == "list" and tree.drop.type_name == "Dropout"
    assert list(tree.drop.named_parameters()) == list(tree.drop.named_buffers()) == []  # rng state
    assert tree["blocks.1.attn.bias"].native is net.blocks[1].attn.bias


def test_shared_submodule_is_found_through_nnx_identity():
    net = tied()
    tree = ut.wrap(net)
    assert tree[2].weight is tree[4].weight and tree.ties() == [
        ("2.weight", "4.weight"),
        ("2.bias", "4.bias"),
    ]
    # as nnx.state lists them: each shared variable once, at its first path
    state_paths = {path[:2] for path, _ in nnx.to_flat_state(nnx.state(net, nnx.Param))}
    assert {("layers", int(k.split(".")[0])) for k, _ in tree.named_parameters()} == state_paths
    assert [k for k, _ in tree.named_modules()] == ["", "0", "1", "2", "3", "5", "6"]


def test_shared_param_objects_are_one_leaf():
    net = Net(nnx.Rngs(0))
    tree = ut.wrap(net)
    assert tree["lm_head.weight"] is tree["wte.weight"]
    assert tree.ties() == [("wte.weight", "lm_head.weight")]
    assert "lm_head.weight" not in tree.state_dict()


# -- every layer kind against NNX's values ---------------------------------------------------------
def test_linear_embed_layer_norm_batch_norm():
    net = Net(nnx.Rngs(0))
    tree = ut.wrap(net)
    np.testing.assert_array_equal(
        tree["heads.cls.weight"].numpy(), np.asarray(net.heads["cls"].kernel).T
    )
    np.testing.assert_array_equal(tree["wte.weight"].numpy(), net.wte.embedding[...])
    norm = net.blocks[0].norm
    np.testing.assert_array_equal(tree["blocks.0.norm.weight"].numpy(), norm.scale[...])
    np.testing.assert_array_equal(tree["blocks.0.norm.bias"].numpy(), norm.bias[...])
    bn = net.heads["bn"]
    for ours, theirs in [
        ("weight", bn.scale),
        ("bias", bn.bias),
        ("running_mean", bn.mean),
        ("running_var", bn.var),
    ]:
        p = tree.heads.bn[ours]
        assert p.native is theirs
        np.testing.assert_array_equal(p.numpy(), theirs[...])
    assert not tree["heads.bn.running_var"].trainable and tree["heads.bn.weight"].trainable


@pytest.mark.parametrize("k", [(3,), (3, 2), (2, 3, 2)])
def test_conv_kernel_is_out_in_spatial(k):
    n = len(k)
    conv = nnx.Conv(3, 4, k, padding="VALID", rngs=nnx.Rngs(0))
    tree = ut.wrap(conv)
    kernel = np.asarray(conv.kernel[...])
    assert kernel.shape == (*k, 3, 4) and tree.weight.shape == (4, 3, *k) and tree.kind == "conv"
    np.testing.assert_array_equal(tree.weight.numpy(), kernel.transpose(n + 1, n, *range(n)))
    x = np.random.default_rng(1).random((2, *(5,) * n, 3), dtype=np.float32)
    spatial = "DHW"[-n:]

    def torch_conv(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        y = jax.lax.conv_general_dilated(
            np.moveaxis(x, -1, 1),
            weight,
            (1,) * n,
            "VALID",
            dimension_numbers=(f"NC{spatial}", f"OI{spatial}", f"NC{spatial}"),
        )
        return np.moveaxis(np.asarray(y), 1, -1) + bias

    W, b = tree.weight.numpy(), tree.bias.numpy()
    scale = torch_conv(np.abs(W), np.abs(b))  # x > 0: the terms' magnitudes
    assert_close(np.asarray(conv(jnp.asarray(x))), torch_conv(W, b), scale=scale)


# -- writes ------------------------------------------------------------------------------------
def test_writes_are_seen_by_every_alias():
    net = tied()
    tree = ut.wrap(net)
    kernel = net.layers[2].kernel
    tree[4].weight[0, 3] = 100.0
    assert net.layers[2].kernel is kernel  # the same variable, a new array in it
    assert float(net.layers[4].kernel[3, 0]) == 100.0 and tree[2].weight[0, 3] == 100.0
    net2 = Net(nnx.Rngs(0))
    t2 = ut.wrap(net2)
    t2["lm_head.weight"].set(np.ones((10, 6), np.float32))
    assert float(net2.wte.embedding[...].sum()) == 60


def test_load_state_dict_and_checkpoints(tmp_path):
    src, dst = tied(0), tied(1)
    ut.wrap(dst).load_state_dict(ut.wrap(src).state_dict())
    np.testing.assert_array_equal(dst(X), src(X))
    ut.save(ut.wrap(src), tmp_path / "m.safetensors")
    fresh = tied(2)
    assert ut.load(ut.wrap(fresh), tmp_path / "m.safetensors") == ([], [])
    np.testing.assert_array_equal(fresh(X), src(X))


def test_errors_leave_the_model_unchanged():
    net = mlp()
    tree = ut.wrap(net)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    arrays = [net.layers[0].kernel.get_value(), net.layers[2].bias.get_value()]
    bad = {k: v * 0 for k, v in before.items()}
    bad["2.weight"] = np.zeros((2, 8), np.float32)
    with pytest.raises(ut.StateDictError, match=r"2\.weight: shape \(2, 8\) in the source"):
        tree.load_state_dict(bad)
    with pytest.raises(ut.ShapeError):
        tree[0].weight.set(np.zeros((4, 8)))
    assert (
        net.layers[0].kernel.get_value() is arrays[0]
        and net.layers[2].bias.get_value() is arrays[1]
    )


def test_tie_natively():
    rngs = nnx.Rngs(0)
    net = nnx.Sequential(
        nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)
    )
    tree = ut.wrap(net)
    tree.tie(1, 2)
    assert net.layers[2].kernel is net.layers[1].kernel and net.layers[2].bias is net.layers[1].bias
    assert tree.ties() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    graph = [p for p, _ in nnx.to_flat_state(nnx.state(net, nnx.Param))]
    assert graph == [
        ("layers", 0, "bias"),
        ("layers", 0, "kernel"),
        ("layers", 1, "bias"),
        ("layers", 1, "kernel"),
    ]
    with pytest.raises(
        ut.ShapeError, match=r"weight: \(8, 4\) float32 in 0, \(8, 8\) float32 in 1"
    ):
        tree.tie(0, 1)
    tree.tie("0.bias", "1.bias")  # one leaf
    assert net.layers[1].bias is net.layers[0].bias


def test_variables_is_for_linen():
    with pytest.raises(NotImplementedError, match=r"nnx\.state"):
        ut.wrap(mlp()).variables  # noqa: B018


# -- values, dtypes, devices ------------------------------------------------------------------------
def test_numpy_is_a_read_only_view():
    net = mlp()
    p = ut.wrap(net)[0].weight
    w = p.numpy()
    assert np.shares_memory(w, np.asarray(net.layers[0].kernel)) and not w.flags.writeable
    assert p.data is net.layers[0].kernel.get_value() and p.device == "cpu"


def test_bfloat16():
    lin = nnx.Linear(2, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    p = ut.wrap(lin).weight
    assert p.dtype == "bfloat16"
    np.testing.assert_array_equal(
        p.numpy().astype(np.float32), np.asarray(lin.kernel[...], np.float32).T
    )
    p[0, 1] = 1.5
    assert float(lin.kernel[1, 0]) == 1.5 and lin.kernel[...].dtype == jnp.bfloat16


# -- gradients ----------------------------------------------------------------------------------------
def loss_fn(y: jax.Array) -> jax.Array:
    return (y**2).mean()


def test_backward_matches_nnx_grad_and_accumulates():
    net = Net(nnx.Rngs(0))
    ref = Net(nnx.Rngs(0))
    tree = ut.wrap(net)
    assert all(p.grad is None for p in tree.parameters())
    loss = tree.backward(loss_fn, IDS)
    want_loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(jnp.asarray(IDS))))(ref)
    assert_close(loss, float(want_loss))  # the same computation, a mean of squares
    assert_close(
        tree["blocks.1.attn.weight"].grad, np.asarray(grads["blocks"][1]["attn"]["kernel"][...]).T
    )
    # the tied embedding: one gradient, the sum over both uses, as nnx.grad gives it
    # (NNX keeps it at the first path in its own order, sorted: lm_head before wte)
    assert_close(tree["wte.weight"].grad, grads["lm_head"]["kernel"][...])
    np.testing.assert_array_equal(tree["heads.cls.weight"].grad, 0)  # unused: zeros, as in jax
    assert tree["heads.bn.running_mean"].grad is None
    tree.backward(loss_fn, IDS)
    assert_close(tree["wte.weight"].grad, 2 * np.asarray(grads["lm_head"]["kernel"][...]))


def test_tied_gradient_is_the_sum_of_both_uses():
    t = tied()
    rngs = nnx.Rngs(1)
    u = nnx.Sequential(
        *(
            nnx.Linear(i, o, rngs=rngs) if i else nnx.relu
            for i, o in [(4, 8), (0, 0), (8, 8), (0, 0), (8, 8), (0, 0), (8, 1)]
        )
    )
    tt, tu = ut.wrap(t), ut.wrap(u)
    tu.load_state_dict({path: tt[path].numpy() for path, _ in tu.named_parameters()})
    tt.backward(lambda y: y.sum(), X)
    tu.backward(lambda y: y.sum(), X)
    assert_close(tt[2].weight.grad, tu[2].weight.grad + tu[4].weight.grad)


def test_backward_in_training_mode_updates_batch_statistics():
    rngs = nnx.Rngs(0)
    net = nnx.Sequential(nnx.Linear(4, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs))
    tree = ut.wrap(net)
    tree.backward(lambda y: y.sum(), X)
    assert tree[1].running_mean.numpy().any()  # NNX carried the update back into the model
    mean = net.layers[1].mean
    assert tree[1].running_mean.native is mean


def test_gradients_go_with_the_model():
    net = mlp()
    tree = ut.wrap(net)
    tree.backward(lambda y: y.sum(), X)
    ids = {id(p.native) for p in tree.parameters()}
    grads = tree._adapter._grads  # NNX variables have no room for a gradient: the adapter keeps it
    assert ids <= set(grads)
    del net, tree
    gc.collect()
    assert not ids & set(grads)


def test_backward_checks_the_loss():
    tree = ut.wrap(mlp())
    with pytest.raises(TypeError, match="jax scalar"):
        tree.backward(lambda y: y, X)


def test_wrap_rejects_other_flax_objects():
    with pytest.raises(ut.UnsupportedModelError, match=r"nnx\.Module, or a linen Module"):
        ut.wrap(nnx.Rngs(0))
