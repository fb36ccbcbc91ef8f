"""The Gluon adapter against MXNet Gluon 1.9.1's own answers, on both array APIs."""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn
from safetensors.numpy import save_file
from unitree.conformance.cases import mlp_gradients
from unitree_checks import assert_close, assert_differ, assert_read_once

import unitree as ut

# The unused heads of Net: a hybridized block warns about them on every first call.
pytestmark = pytest.mark.filterwarnings("ignore:Parameter .* is not used:UserWarning")

X = np.random.default_rng(0).random((2, 4), dtype=np.float32)


def mlp_want(tree: ut.ParamTree, x: np.ndarray) -> tuple[float, list, float, list]:
    """The loss sum(mlp(x)) and its gradients by hand in float64, and their scales: the same
    sums over the absolute values of their terms (float32's rounding is relative to those)."""
    values = [p.numpy() for p in tree.parameters()]
    return (*mlp_gradients(*values, x), *mlp_gradients(*map(np.abs, values), x))


def mlp(hybrid: bool = False, **init: object) -> gluon.Block:
    net = nn.HybridSequential() if hybrid else nn.Sequential()
    net.add(nn.Dense(8, in_units=4), nn.Activation("relu"), nn.Dense(1, in_units=8))
    net.initialize(**init)
    return net


class Block(nn.HybridBlock):
    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.attn = nn.Dense(6, in_units=6, flatten=False)
            self.norm = nn.LayerNorm(in_channels=6)

    def hybrid_forward(self, F, x):  # type: ignore[no-untyped-def]
        return self.norm(self.attn(x))


class Net(nn.HybridBlock):
    """Children by attribute name, nested containers, unused heads and the GPT-2 tie."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.wte = nn.Embedding(10, 6)
            self.blocks = nn.HybridSequential()
            self.blocks.add(Block(), Block())
            self.heads = nn.HybridSequential()
            self.heads.add(nn.Dense(3, in_units=6), nn.BatchNorm(in_channels=6))
            self.lm_head = nn.Dense(
                10, in_units=6, flatten=False, use_bias=False, params=self.wte.params
            )

    def hybrid_forward(self, F, ids):  # type: ignore[no-untyped-def]
        h = self.wte(ids)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(h)  # the heads stay unused


def net(hybrid: bool = False) -> Net:
    model = Net()
    model.initialize()
    if hybrid:
        model.hybridize()
    return model


IDS = np.array([[1, 2, 3], [4, 5, 6]])
NET_PATHS = [
    "wte.weight",
    "blocks.0.attn.weight",
    "blocks.0.attn.bias",
    "blocks.0.norm.weight",
    "blocks.0.norm.bias",
    "blocks.1.attn.weight",
    "blocks.1.attn.bias",
    "blocks.1.norm.weight",
    "blocks.1.norm.bias",
    "heads.0.weight",
    "heads.0.bias",
    "heads.1.weight",
    "heads.1.bias",
]


def value(param: gluon.Parameter, ctx: mx.Context | None = None) -> np.ndarray:
    return param.data(ctx).asnumpy()


# -- paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid", [False, True])
def test_sequential_positions(api, hybrid):
    model = mlp(hybrid)
    tree = ut.wrap(model)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.weight", (8, 4)),
        ("0.bias", (8,)),
        ("2.weight", (1, 8)),
        ("2.bias", (1,)),
    ]
    assert tree[2].weight.native is model[2].weight and tree["0.bias"].native is model[0].bias
    assert tree[0].type_name == "Dense" and tree[0].kind == "dense"
    assert tree[1].type_name == "Activation" and list(tree[1].named_parameters()) == []
    assert tree[-1] is tree[2] and len(tree) == 3
    assert tree.backend == "gluon" and tree.native is model


def test_children_by_attribute_name_nested_in_registration_order(api):
    model = net()
    tree = ut.wrap(model)
    assert [k for k, _ in tree.named_parameters()] == NET_PATHS
    assert [k for k, _ in tree.named_buffers()] == ["heads.1.running_mean", "heads.1.running_var"]
    assert [k for k, _ in tree.named_modules()] == [
        "",
        "wte",
        "blocks",
        "blocks.0",
        "blocks.0.attn",
        "blocks.0.norm",
        "blocks.1",
        "blocks.1.attn",
        "blocks.1.norm",
        "heads",
        "heads.0",
        "heads.1",
        "lm_head",
    ]
    assert tree["blocks.1.norm.weight"].native is model.blocks[1].norm.gamma
    assert tree.blocks[1].attn.bias.native is model.blocks[1].attn.bias
    assert tree.heads[1].kind == "batch_norm" and tree.wte.kind == "embedding"


def test_paths_are_gluon_structural_names(api):
    """Every leaf occurrence, as Gluon's own save_parameters names them (aliases included)."""
    model = net()
    tree = ut.wrap(model)
    structural = model._collect_params_with_prefix()
    everything = [k for k, _ in tree.named_parameters(remove_duplicate=False)]
    everything += [k for k, _ in tree.named_buffers(remove_duplicate=False)]
    canonical = {"gamma": "weight", "beta": "bias"}  # LayerNorm and BatchNorm, as torch names them
    gluon_paths = {
        k.rpartition(".")[0] + "." + canonical.get(k.rpartition(".")[2], k.rpartition(".")[2]): p
        for k, p in structural.items()
    }
    assert sorted(everything) == sorted(gluon_paths)
    for path, p in gluon_paths.items():
        assert tree[path].native is p, path


def test_paths_never_use_the_global_prefix_names(api):
    first = ut.wrap(mlp())
    for _ in range(3):  # bump Gluon's process-global name counters
        nn.Dense(2)
        nn.Sequential()
    second = mlp()
    tree = ut.wrap(second)
    assert [k for k, _ in tree.named_parameters()] == [k for k, _ in first.named_parameters()]
    assert second[0].weight.name != first[0].weight.native.name  # Gluon's names did change
    assert all("dense" not in k for k in tree.state_dict())


# -- hybridized ----------------------------------------------------------------------------------
def test_hybridized_blocks_read_and_write(api):
    model = net(hybrid=True)
    ids = api.array(IDS)
    before = model(ids).asnumpy()
    tree = ut.wrap(model)
    assert [k for k, _ in tree.named_parameters()] == NET_PATHS
    tree["blocks.1.norm.bias"].set(
        np.full(6, 2.0, np.float32)
    )  # in place: the cached graph sees it
    after = model(ids).asnumpy()
    assert_differ(before, after)
    assert_close(after, model.lm_head(model.blocks(model.wte(ids))).asnumpy())


def test_tie_after_hybridize_drops_the_cached_graphs(api):
    inner = nn.HybridSequential()
    inner.add(nn.Dense(8, in_units=4), nn.Dense(8, in_units=8), nn.Dense(8, in_units=8))
    outer = nn.HybridSequential()
    outer.add(inner)  # the graph is cached by the outer block, and by the inner one
    outer.initialize()
    outer.hybridize()
    x = api.array(X)
    outer(x)
    inner(x)
    tree = ut.wrap(outer)
    tree.tie("0.1", "0.2")
    assert inner[2].weight is inner[1].weight and inner[2].bias is inner[1].bias
    (W0, b0), (W1, b1) = ([value(p) for p in (d.weight, d.bias)] for d in (inner[0], inner[1]))

    def three(x, W0, b0, W1, b1):  # type: ignore[no-untyped-def]
        return ((x @ W0.T + b0) @ W1.T + b1) @ W1.T + b1

    values = [np.asarray(a, np.float64) for a in (X, W0, b0, W1, b1)]
    want, scale = three(*values), three(*map(np.abs, values))  # float64; the terms' magnitudes
    assert_close(outer(x).asnumpy(), want, scale=scale)
    assert_close(inner(x).asnumpy(), want, scale=scale)
    names = list(outer.collect_params())  # what a Trainer takes: the dropped parameters are gone
    assert len(names) == 4 and inner[2].weight.name in names


# -- deferred initialization ---------------------------------------------------------------------
def test_deferred_initialization_until_the_first_forward(api):
    model = nn.Sequential()
    model.add(nn.Dense(8, activation="relu"), nn.Dense(1))  # the deck: no in_units
    model.initialize()
    tree = ut.wrap(model)
    w = tree["0.weight"]
    assert w.shape is None and tree["0.bias"].shape == (8,)
    assert "weight (uninitialized)" in str(tree) and w.device == "cpu"
    with pytest.raises(
        ut.UninitializedError, match=r"0\.weight is not initialized.*Run the model once"
    ):
        w.numpy()
    with pytest.raises(ut.UninitializedError, match="Run the model once"):
        _ = w.data
    with pytest.raises(ut.UninitializedError):
        tree.state_dict()
    zeros = {"0.weight": np.zeros((8, 4)), "0.bias": np.zeros(8)}
    zeros.update({"1.weight": np.zeros((1, 8)), "1.bias": np.zeros(1)})
    with pytest.raises(ut.StateDictError, match="not initialized"):
        tree.load_state_dict(zeros)
    model(api.array(X))
    assert w.shape == (8, 4) and tree["0.weight"] is w
    np.testing.assert_array_equal(w.numpy(), value(model[0].weight))


def test_backward_as_the_first_call_of_a_deferred_hybridized_model(api):
    model = nn.HybridSequential()
    model.add(nn.Dense(8, activation="relu"), nn.Dense(1))
    model.initialize()
    model.hybridize()
    tree = ut.wrap(model)
    tree.backward(lambda y: y.sum(), X)  # numpy in: the array API and context are the model's
    assert tree["0.weight"].shape == (8, 4) and tree["0.weight"].grad.shape == (8, 4)
    assert type(model[0].weight.data()) is api.type


def test_before_initialize_says_to_call_it(api):
    tree = ut.wrap(nn.Sequential())  # nothing to read
    assert list(tree.named_parameters()) == []
    model = nn.Dense(8, in_units=4)  # shapes known, no values yet
    tree = ut.wrap(model)
    assert tree["weight"].shape == (8, 4)
    with pytest.raises(ut.UninitializedError, match=r"initialize\(\)"):
        tree["weight"].numpy()


# -- layer kinds against Gluon's own values ------------------------------------------------------
def test_dense_conv_embedding_layer_norm(api):
    model = nn.HybridSequential()
    model.add(
        nn.Conv2D(6, 5, in_channels=3),
        nn.Flatten(),
        nn.Dense(4, in_units=6 * 4 * 4),
        nn.LayerNorm(in_channels=4),
    )
    emb = nn.Embedding(100, 16)
    model.initialize()
    emb.initialize()
    tree, etree = ut.wrap(model), ut.wrap(emb)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.weight", (6, 3, 5, 5)),
        ("0.bias", (6,)),
        ("2.weight", (4, 96)),
        ("2.bias", (4,)),
        ("3.weight", (4,)),
        ("3.bias", (4,)),
    ]
    assert [tree[i].kind for i in range(4)] == ["conv", None, "dense", "layer_norm"]
    for path, native in [
        ("0.weight", model[0].weight),
        ("2.weight", model[2].weight),
        ("3.weight", model[3].gamma),
        ("3.bias", model[3].beta),
    ]:
        assert tree[path].native is native
        np.testing.assert_array_equal(tree[path].numpy(), value(native), err_msg=path)
    assert etree.kind == "embedding" and etree["weight"].shape == (100, 16)
    np.testing.assert_array_equal(etree["weight"].numpy(), value(emb.weight))
    assert {p.dtype for p in tree.parameters()} == {"float32"}


def test_batch_norm_buffers(api):
    model = nn.HybridSequential()
    model.add(nn.Dense(3, in_units=4), nn.BatchNorm(in_channels=3))
    model.initialize()
    tree = ut.wrap(model)
    assert [k for k, _ in tree[1].named_parameters()] == ["weight", "bias"]
    assert [(k, p.shape, p.dtype) for k, p in tree[1].named_buffers()] == [
        ("running_mean", (3,), "float32"),
        ("running_var", (3,), "float32"),
    ]
    mean = tree["1.running_mean"]
    assert mean.is_buffer and not mean.trainable and mean.native.grad_req == "null"
    assert tree["1.weight"].trainable and tree["1.weight"].native is model[1].gamma
    tree.backward(lambda y: (y * y).sum(), X)  # Gluon updates running stats in backward
    assert np.abs(mean.numpy()).sum() > 0
    np.testing.assert_array_equal(mean.numpy(), value(model[1].running_mean))
    np.testing.assert_array_equal(tree["1.running_var"].numpy(), value(model[1].running_var))
    assert mean.grad is None and tree["1.weight"].grad is not None
    assert "running_mean (3,) [buffer]" in str(tree)
    assert list(tree.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    ]


def test_frozen_parameter_is_a_parameter_not_trainable(api):
    model = mlp()
    model[0].weight.grad_req = "null"
    tree = ut.wrap(model)
    assert "0.weight" in dict(tree.named_parameters())
    assert not tree["0.weight"].trainable and tree["0.bias"].trainable
    tree.backward(lambda y: y.sum(), X)
    assert tree["0.weight"].grad is None and tree["0.bias"].grad is not None


def test_picture_of_a_nested_model(api):
    assert str(ut.wrap(net()).blocks[1]) == "\n".join(
        [
            "Block",
            "├─ attn: Dense",
            "│  ├─ weight (6, 6)",
            "│  └─ bias (6,)",
            "└─ norm: LayerNorm",
            "   ├─ weight (6,)",
            "   └─ bias (6,)",
        ]
    )
    assert str(ut.wrap(net())).endswith("└─ lm_head: Dense\n   └─ weight (10, 6) = wte.weight")


# -- reading and writing ---------------------------------------------------------------------------
def test_numpy_is_a_read_only_view_on_cpu(api):
    model = mlp()
    a = ut.wrap(model)["0.weight"].numpy()
    assert not a.flags.writeable
    model[0].weight.data()[1, 2] = 7  # a native in-place write shows through the view
    mx.nd.waitall()
    assert a[1, 2] == 7


def test_writes_seen_by_every_alias_and_by_gluon(api):
    model = net()
    tree = ut.wrap(model)
    handle = model.wte.weight.data()
    assert tree["wte.weight"].data is handle and type(handle) is api.type  # np or nd, as built
    tree["lm_head.weight"][3, 2] = 100
    assert handle[3, 2].asnumpy().item() == 100 and tree["wte.weight"][3, 2] == 100
    assert value(model.lm_head.weight)[3, 2] == 100
    tree["wte.weight"].set(np.ones((10, 6), np.float32))
    assert model.wte.weight.data() is handle  # in place: the same array
    np.testing.assert_array_equal(value(model.lm_head.weight), np.ones((10, 6)))
    tree["blocks.0.norm.bias"].set(api.array(np.full(6, 3.0)))  # a native array is accepted too
    assert value(model.blocks[0].norm.beta).sum() == 18
    tree["wte.weight"][[1, 3], ::2] = -1  # fancy indexing: numpy's semantics
    want = np.ones((10, 6), np.float32)
    want[[1, 3], ::2] = -1
    np.testing.assert_array_equal(value(model.wte.weight), want)
    tree["blocks.0.attn.bias"][-1] = 5
    assert value(model.blocks[0].attn.bias)[-1] == 5


def test_writes_reach_every_context():
    model = mlp(ctx=[mx.cpu(0), mx.cpu(1)])  # data parallel on two contexts
    p = ut.wrap(model)["2.weight"]
    assert p.device == "cpu"
    p.set(np.full((1, 8), 2.0, np.float32))
    p[0, 3] = 9
    for ctx in (mx.cpu(0), mx.cpu(1)):
        np.testing.assert_array_equal(value(model[2].weight, ctx)[0], [2, 2, 2, 9, 2, 2, 2, 2])


def test_a_write_failing_on_one_context_puts_back_the_others(monkeypatch):
    """A data-parallel parameter is one array per context: if writing the second fails,
    the first takes its old value back."""
    import unitree.adapters.gluon as adapter

    model = mlp(ctx=[mx.cpu(0), mx.cpu(1)])
    p = ut.wrap(model)["2.weight"]
    before = [value(model[2].weight, ctx) for ctx in (mx.cpu(0), mx.cpu(1))]

    class Failing:
        def __init__(self, array):
            self.array = array

        def __setitem__(self, index, v):
            raise mx.base.MXNetError("out of memory on cpu(1)")

        def __getattr__(self, name):
            return getattr(self.array, name)

    real = adapter._arrays
    monkeypatch.setattr(adapter, "_arrays", lambda leaf: [real(leaf)[0], Failing(real(leaf)[1])])
    for write in (
        lambda: p.set(np.full((1, 8), 2.0, np.float32)),
        lambda: p.__setitem__((0, 3), 9),
    ):
        with pytest.raises(mx.base.MXNetError, match="out of memory"):
            write()
        for ctx, old in zip((mx.cpu(0), mx.cpu(1)), before):
            np.testing.assert_array_equal(value(model[2].weight, ctx), old)


def test_errors_leave_the_model_unchanged(api):
    model = mlp()
    tree = ut.wrap(model)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    with pytest.raises(ut.ShapeError, match=r"expected shape \(1, 8\)"):
        tree["2.weight"].set(np.zeros((2, 8)))
    with pytest.raises(ut.ValueTypeError):
        tree["2.weight"][0, 0] = "abc"
    with pytest.raises(ut.ShapeError):
        tree["2.weight"][5, 0] = 1
    bad = {k: np.zeros_like(v) for k, v in before.items()}
    bad["2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ut.StateDictError, match=r"2\.bias: shape \(3,\) in the source"):
        tree.load_state_dict(bad)
    with pytest.raises(ut.ShapeError, match="Cannot tie"):
        tree.tie(0, 2)
    with pytest.raises(ut.ValueTypeError, match="MXNet scalar"):
        tree.backward(lambda y: y, X)
    assert all(p.grad is None for p in tree.parameters())
    assert model[2].weight is tree["2.weight"].native and tree.ties() == []
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(ut.UnsupportedModelError, match=r"Expected an mxnet\.gluon\.Block"):
        ut.wrap(api.array([1.0]))


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("hybrid", [False, True])
def test_backward_matches_hand_computed_gradients_and_accumulates(api, hybrid):
    model = mlp(hybrid)
    if hybrid:
        model.hybridize()
    tree = ut.wrap(model)
    assert all(p.grad is None for p in tree.parameters())
    want_loss, grads, loss_scale, scales = mlp_want(tree, X)
    loss = tree.backward(lambda y: y.sum(), X)
    assert isinstance(loss, float)
    assert_close(loss, want_loss, scale=loss_scale)
    for (path, p), g, s in zip(tree.named_parameters(), grads, scales):
        assert_close(p.grad, g, scale=s, err_msg=path)
    tree.backward(lambda y: y.sum(), X)  # accumulates, as torch does
    for (path, p), g, s in zip(tree.named_parameters(), grads, scales):
        assert_close(p.grad, 2 * g, scale=2 * s, err_msg=path)
        assert_close(p.native.grad().asnumpy(), 2 * g, scale=2 * s, err_msg=path)
    for p in model.collect_params().values():  # Gluon's own reset resets p.grad too
        p.grad()[:] = 0
    assert not tree["0.weight"].grad.any()


def test_backward_with_grad_req_add_is_not_counted_twice(api):
    model = mlp()
    model.collect_params().setattr("grad_req", "add")
    tree = ut.wrap(model)
    _, grads, _, scales = mlp_want(tree, X)
    tree.backward(lambda y: y.sum(), X)
    tree.backward(lambda y: y.sum(), X)
    assert_close(tree["0.weight"].grad, 2 * grads[0], scale=2 * scales[0])


def test_backward_through_a_nested_model(api):
    model = net(hybrid=True)
    ref = net()
    ut.wrap(ref).load_state_dict(ut.wrap(model).state_dict())
    tree = ut.wrap(model)
    ids = IDS  # integer ids stay integers (classic nd.array would make them float32)

    def loss_fn(logits):
        return (logits * logits).mean()

    loss = tree.backward(loss_fn, ids)
    with autograd.record():
        ref_loss = loss_fn(ref(api.array(ids, dtype="int64")))
    ref_loss.backward()
    assert_close(loss, ref_loss.asnumpy().item())  # a mean of squares: no cancellation
    for path, p in tree.named_parameters():
        native = ut.wrap(ref)[path].native.grad().asnumpy()
        assert_close(p.grad, native, err_msg=path)
    assert not tree["heads.0.weight"].grad.any()  # unused: zeros, not a stale value


def test_a_parameter_used_twice_gets_the_sum(api):
    def build(tied: bool) -> gluon.Block:
        shared = nn.Dense(8, in_units=8)
        again = shared if tied else nn.Dense(8, in_units=8)
        model = nn.Sequential()
        model.add(nn.Dense(8, in_units=4), shared, nn.Activation("relu"), again, nn.Dense(1))
        model.initialize()
        model(api.array(X))
        return model

    t, u = ut.wrap(build(True)), ut.wrap(build(False))
    assert t[1] is not t[3] and t[1].weight is t[3].weight  # nodes per path, one parameter
    assert t.ties() == [("1.weight", "3.weight"), ("1.bias", "3.bias")]
    assert [k for k, _ in t.named_modules()] == ["", "0", "1", "2", "4"]
    u.load_state_dict({k: t[k].numpy() for k, _ in u.named_parameters()})
    t.backward(lambda y: y.sum(), X)
    u.backward(lambda y: y.sum(), X)
    for leaf in ("weight", "bias"):
        total = u[1][leaf].grad + u[3][leaf].grad
        assert_close(t[1][leaf].grad, total, err_msg=leaf)


class Switch(nn.Block):
    """Runs one of two heads: the other one is not part of that pass's graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Dense(1, in_units=4)
        self.b = nn.Dense(1, in_units=4)
        self.which = "a"

    def forward(self, x):  # type: ignore[no-untyped-def]
        return getattr(self, self.which)(x)


def test_a_parameter_a_pass_does_not_use_keeps_its_sum(api):
    model = Switch()
    model.initialize()
    tree = ut.wrap(model)
    tree.backward(lambda y: y.sum(), X)
    first = tree["a.weight"].grad.copy()
    assert_close(first, X.sum(0, keepdims=True, dtype=np.float64))  # X > 0: no cancellation
    assert tree["b.weight"].grad is None or not tree["b.weight"].grad.any()
    model.which = "b"
    tree.backward(lambda y: y.sum(), X)  # Gluon leaves a's buffer stale: it must not count twice
    np.testing.assert_array_equal(tree["a.weight"].grad, first)  # untouched
    assert_close(tree["b.weight"].grad, first)


def test_backward_that_fails_changes_no_gradient(api):
    model = mlp()
    tree = ut.wrap(model)
    tree.backward(lambda y: y.sum(), X)
    before = tree["0.weight"].grad.copy()

    def broken(y):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        tree.backward(broken, X)
    np.testing.assert_array_equal(tree["0.weight"].grad, before)


def test_gradient_sums_over_contexts():
    model = mlp(ctx=[mx.cpu(0), mx.cpu(1)])
    tree = ut.wrap(model)
    _, grads, _, scales = mlp_want(tree, X)
    tree.backward(lambda y: y.sum(), X)  # the whole batch on the first context
    assert_close(tree["0.weight"].grad, grads[0], scale=scales[0])
    assert not model[0].weight.grad(mx.cpu(1)).asnumpy().any()


# -- ties ------------------------------------------------------------------------------------------
def test_params_sharing_is_a_tie(api):
    shared = nn.Dense(8, in_units=8)
    clone = nn.Dense(8, in_units=8, params=shared.params)
    model = nn.Sequential()
    model.add(nn.Dense(8, in_units=4), shared, clone)
    model.initialize()
    tree = ut.wrap(model)
    assert model[1] is not model[2] and tree[1].weight is tree[2].weight
    assert tree.ties() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    assert [k for k, _ in tree.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert list(tree.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_tie_natively(api):
    model = nn.Sequential()
    model.add(nn.Dense(8, in_units=4), nn.Dense(8, in_units=8), nn.Dense(8, in_units=8))
    model.initialize()
    tree = ut.wrap(model)
    tree.tie(1, 2)
    assert model[2].weight is model[1].weight and model[2].bias is model[1].bias
    assert tree.ties() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    assert len(list(model.collect_params())) == 4
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.1})
    tree.backward(lambda y: y.sum(), X)
    trainer.step(1)  # a Trainer made after the tie updates the shared parameter once
    tree["1.bias"][0] = 7
    assert value(model[2].bias)[0] == 7


def test_tie_buffers_too(api):
    model = nn.HybridSequential()
    model.add(nn.BatchNorm(in_channels=3), nn.BatchNorm(in_channels=3))
    model.initialize()
    model.hybridize()
    model(api.array(X[:, :3]))
    tree = ut.wrap(model)
    tree.tie(0, 1)
    assert model[1].running_mean is model[0].running_mean
    assert ("0.running_mean", "1.running_mean") in tree.ties()
    assert [k for k, _ in tree.named_buffers()] == ["0.running_mean", "0.running_var"]


def test_tie_mismatch_changes_nothing(api):
    model = mlp()
    tree = ut.wrap(model)
    with pytest.raises(
        ut.ShapeError, match=r"weight: \(8, 4\) float32 in 0, \(1, 8\) float32 in 2"
    ):
        tree.tie(0, 2)
    assert model[2].weight.shape == (1, 8) and tree.ties() == []


# -- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_round_trip_with_ties_and_buffers(api, tmp_path):
    def build() -> gluon.Block:
        shared = nn.Dense(3, in_units=3)
        model = nn.HybridSequential()
        model.add(nn.Dense(3, in_units=4), nn.BatchNorm(in_channels=3), shared, shared)
        model.initialize(mx.init.Normal(1.0))
        return model

    src, dst = build(), build()
    tree = ut.wrap(src)
    tree.backward(lambda y: y.sum(), X)  # running statistics move off their initial values
    ut.save(tree, tmp_path / "m.safetensors")
    with ut._files.Checkpoint(tmp_path / "m.safetensors") as ckpt:
        assert list(ckpt.paths()) == [k for k in tree.state_dict()]
        assert ckpt.ties() == [("2.weight", "3.weight"), ("2.bias", "3.bias")]
        assert ckpt.metadata["backend"] == "gluon"
    assert ut.load(ut.wrap(dst), tmp_path / "m.safetensors") == ([], [])
    x = api.array(X)
    assert_close(dst(x).asnumpy(), src(x).asnumpy())  # the same values, the same computation
    assert dst[2].weight is dst[3].weight  # the tie survives


def test_torch_layout_checkpoint_means_the_same_function(api, tmp_path):
    """A file as torch's BatchNorm writes it (num_batches_tracked and all), read onto Gluon:
    canonical names map onto gamma/beta/running stats, and the output is torch's formula."""
    rng = np.random.default_rng(1)
    state = {
        "0.weight": rng.standard_normal((3, 4)),
        "0.bias": rng.standard_normal(3),
        "1.weight": rng.random(3) + 0.5,
        "1.bias": rng.standard_normal(3),
        "1.running_mean": rng.standard_normal(3),
        "1.running_var": rng.random(3) + 0.5,
    }
    state = {k: v.astype(np.float32) for k, v in state.items()}
    meta = {"format": "unitree", "format_version": "1", "backend": "torch", "ties": "[]"}
    save_file(
        {**state, "1.num_batches_tracked": np.array(3, np.int64)},
        str(tmp_path / "t.safetensors"),
        metadata=meta,
    )
    model = nn.HybridSequential()
    model.add(nn.Dense(3, in_units=4), nn.BatchNorm(in_channels=3))
    model.initialize()
    tree = ut.wrap(model)
    # torch's batch-norm counter, which Gluon lacks, is no error even under strict: reported
    assert ut.load(tree, tmp_path / "t.safetensors") == ([], ["1.num_batches_tracked"])
    s = {k: v.astype(np.float64) for k, v in state.items()}  # torch's formula, in float64
    h = X @ s["0.weight"].T + s["0.bias"]
    std = np.sqrt(s["1.running_var"] + 1e-5)
    want = (h - s["1.running_mean"]) / std * s["1.weight"] + s["1.bias"]
    # the same terms' magnitudes: float32's rounding is relative to them
    h_scale = X @ np.abs(s["0.weight"]).T + np.abs(s["0.bias"]) + np.abs(s["1.running_mean"])
    scale = h_scale / std * np.abs(s["1.weight"]) + np.abs(s["1.bias"])
    assert_close(model(api.array(X)).asnumpy(), want, scale=scale)


# -- the rest of the contract --------------------------------------------------------------------
def test_devices_and_structure_changes(api):
    gpus = [f"gpu:{i}" for i in range(mx.context.num_gpus())]
    assert ut.wrap(mlp())._adapter.devices() == ["cpu", *gpus]
    model = mlp()
    tree = ut.wrap(model)
    old = tree[2].weight
    model.extra = nn.Dense(2, in_units=1)
    assert "extra.weight" in dict(tree.named_parameters()) and tree[2].weight is old


def test_second_traversal_is_cached(api, monkeypatch):
    model = net()
    assert_read_once(ut.wrap(model), monkeypatch)


def test_summary_and_lstm_canonical_names(api):
    lstm = gluon.rnn.LSTM(5, input_size=3)
    lstm.initialize()
    tree = ut.wrap(lstm)
    assert tree.kind == "lstm"
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("weight_ih_l0", (20, 3)),
        ("weight_hh_l0", (20, 5)),
        ("bias_ih_l0", (20,)),
        ("bias_hh_l0", (20,)),
    ]
    assert tree["weight_ih_l0"].native is lstm.l0_i2h_weight
    assert "parameters: 200" in str(ut.summary(tree))


def test_unitree_conformance_writes_the_gluon_column(tmp_path, monkeypatch):
    from unitree._cli import main

    monkeypatch.setenv("UNITREE_CHECKPOINTS", str(tmp_path))
    report = tmp_path / "matrix.json"
    assert (
        main(["conformance", "--backend", "gluon", "--device", "cpu", "--report", str(report)]) == 0
    )
    cells = json.loads(report.read_text())["cells"]
    assert {c["status"] for c in cells} == {"pass"} and len(cells) >= 10
