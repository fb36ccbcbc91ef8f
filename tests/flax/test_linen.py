"""The flax adapter on linen modules, against Flax's own answers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
from unitree_checks import assert_close, assert_differ, assert_read_once, mlp_output

import unitree as ut

X = np.random.default_rng(0).random((2, 4), dtype=np.float32)


def init(module: nn.Module, *args: object, seed: int = 0) -> dict:
    return module.init(jax.random.key(seed), *args)


def deck_tied(seed: int = 0) -> tuple[nn.Module, dict]:
    shared = nn.Dense(8)
    net = nn.Sequential([nn.Dense(8), nn.relu, shared, nn.relu, shared, nn.relu, nn.Dense(1)])
    return net, init(net, X, seed=seed)


def conv_reference(x_nc: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """torch's conv (channels first, weight (out, in, *k), no padding), by jax.lax."""
    n = weight.ndim - 2
    spatial = "DHW"[-n:]
    y = jax.lax.conv_general_dilated(
        x_nc,
        weight,
        (1,) * n,
        "VALID",
        dimension_numbers=(f"NC{spatial}", f"OI{spatial}", f"NC{spatial}"),
    )
    return np.asarray(y) + bias.reshape(-1, *(1,) * n)


# -- paths and structure ----------------------------------------------------------------------
def test_sequential_positions_count_the_relu():
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    variables = init(net, X)
    tree = ut.wrap(net, variables)
    assert list(variables["params"]) == ["layers_0", "layers_2"]  # no layers_1: nn.relu
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.weight", (8, 4)),
        ("0.bias", (8,)),
        ("2.weight", (1, 8)),
        ("2.bias", (1,)),
    ]
    assert len(tree) == 3 and tree[1].type_name == "relu" and list(tree[1].named_parameters()) == []
    assert tree.native is net and tree[2].native is net.layers[2] and tree[1].native is nn.relu
    assert tree[2].kind == "dense" and tree[2].type_name == "Dense"


def test_shared_instance_is_one_parameter_set_at_both_positions():
    net, variables = deck_tied()
    assert len(variables["params"]) == 3  # the deck's check
    tree = ut.wrap(net, variables)
    assert tree[2].weight is tree[4].weight and tree[2].bias is tree[4].bias
    assert tree.ties() == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    assert [k for k, _ in tree.named_parameters()] == [
        f"{i}.{leaf}" for i in (0, 2, 6) for leaf in ("weight", "bias")
    ]
    assert [k for k, _ in tree.named_modules()] == ["", "0", "1", "2", "3", "5", "6"]
    assert "   ├─ weight (8, 8) = 2.weight" in str(tree).replace("│", " ")


def test_shared_instance_lives_where_linen_adopted_it():
    # linen adopts a field's modules in the order of their keys sorted as strings:
    # the module shared by positions 2 and 10 is stored under layers_10, not layers_2
    shared = nn.Dense(3)
    layers: list = [nn.Dense(3) for _ in range(12)]
    layers[2] = layers[10] = shared
    net = nn.Sequential(layers)
    variables = init(net, np.ones((1, 3), np.float32))
    assert "layers_2" not in variables["params"] and "layers_10" in variables["params"]
    bound = net.bind(variables)
    assert bound.layers[2].scope.path == bound.layers[10].scope.path == ("layers_10",)
    tree = ut.wrap(net, variables)
    assert tree[2].weight is tree[10].weight
    np.testing.assert_array_equal(
        tree[2].weight.numpy(), np.asarray(variables["params"]["layers_10"]["kernel"]).T
    )
    # traversal by position, not by jax's key order (layers_10 before layers_2)
    order = [k for k, _ in tree.named_parameters() if k.endswith("weight")]
    assert order == [f"{i}.weight" for i in range(12) if i != 10]


def test_position_order_survives_sorted_variables():
    net = nn.Sequential([nn.Dense(2) for _ in range(12)])
    variables = jax.tree_util.tree_map(lambda a: a, init(net, np.ones((1, 2), np.float32)))
    assert list(variables["params"])[:3] == ["layers_0", "layers_1", "layers_10"]  # jax sorted it
    tree = ut.wrap(net, variables)
    assert [k for k, _ in tree.named_parameters()][::2] == [f"{i}.weight" for i in range(12)]


class Attn(nn.Module):
    def setup(self) -> None:
        self.proj = nn.Dense(6)
        self.norm = nn.LayerNorm()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


class Net(nn.Module):
    """setup-defined submodules, a list and a dict of them, nesting, and a compact head."""

    def setup(self) -> None:
        self.wte = nn.Embed(10, 6)
        self.blocks = [Attn(), Attn()]
        self.heads = {"cls": nn.Dense(3), "bn": nn.BatchNorm(use_running_average=True)}
        self.scale = self.param("scale", nn.initializers.ones, (6,))

    def __call__(self, ids: jax.Array) -> jax.Array:
        h = self.wte(ids)
        for block in self.blocks:
            h = block(h)
        return self.heads["cls"](self.heads["bn"](h) * self.scale)


class Inner(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm()(nn.Dense(3)(x))


class Compact(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(11):
            x = nn.Dense(3)(x)
        x = Inner()(x)
        return Attn()(x)


IDS = np.array([[1, 2, 3], [4, 5, 6]])


def test_setup_lists_dicts_and_nesting():
    net = Net()
    variables = init(net, IDS)
    tree = ut.wrap(net, variables)
    params = variables["params"]
    assert [k for k, _ in tree.named_parameters()] == [
        "scale",
        "wte.weight",
        "blocks.0.proj.weight",
        "blocks.0.proj.bias",
        "blocks.0.norm.weight",
        "blocks.0.norm.bias",
        "blocks.1.proj.weight",
        "blocks.1.proj.bias",
        "blocks.1.norm.weight",
        "blocks.1.norm.bias",
        "heads.cls.weight",
        "heads.cls.bias",
        "heads.bn.weight",
        "heads.bn.bias",
    ]
    assert [k for k, _ in tree.named_buffers()] == ["heads.bn.running_mean", "heads.bn.running_var"]
    np.testing.assert_array_equal(
        tree["blocks.1.proj.weight"].numpy(), np.asarray(params["blocks_1"]["proj"]["kernel"]).T
    )
    assert tree.blocks.type_name == "list" and tree.heads.type_name == "dict"
    assert tree.blocks[1].proj.type_name == "Dense" and tree.heads.bn.kind == "batch_norm"
    assert tree.blocks[0].native.scope.path == ("blocks_0",)  # bound by setup


def test_compact_submodules_in_call_order():
    net = Compact()
    variables = init(net, np.ones((1, 3), np.float32))
    tree = ut.wrap(net, variables)
    assert [seg for seg, _ in tree.named_modules()][1:] == [
        *(f"Dense_{i}" for i in range(11)),
        "Inner_0",
        "Inner_0.Dense_0",
        "Inner_0.LayerNorm_0",
        "Attn_0",
        "Attn_0.proj",
        "Attn_0.norm",
    ]
    assert tree.Dense_10.type_name == "Dense" and tree.Dense_10.kind == "dense"
    assert tree.Inner_0.type_name == "Inner" and tree.Inner_0.kind is None
    assert tree.Dense_0.native is None  # it exists only during a call
    np.testing.assert_array_equal(
        tree["Inner_0.Dense_0.weight"].numpy(),
        np.asarray(variables["params"]["Inner_0"]["Dense_0"]["kernel"]).T,
    )
    np.testing.assert_array_equal(
        tree["Inner_0.LayerNorm_0.weight"].numpy(),
        variables["params"]["Inner_0"]["LayerNorm_0"]["scale"],
    )
    # a module made in a compact method has no instance outside a call, so the submodules its
    # setup makes are known only from the variables: linen's leaf names and layouts
    assert tree.Attn_0.type_name == "Attn" and tree.Attn_0.proj.type_name == "Module"
    assert [k for k, _ in tree.Attn_0.named_parameters()][:2] == ["proj.kernel", "proj.bias"]
    # sorted as strings by jax's tree functions: each family of names back in call order
    again = ut.wrap(net, jax.tree_util.tree_map(lambda a: a, variables))
    dense = [k for k, _ in again.named_modules() if k.startswith("Dense_")]
    assert dense == [f"Dense_{i}" for i in range(11)]


class Pair(nn.Module):
    left: nn.Module
    right: nn.Module

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.right(self.left(x))


class SetupTie(nn.Module):
    def setup(self) -> None:
        self.enc = nn.Dense(4)
        self.dec = self.enc  # one module under two attributes

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dec(self.enc(x))


@pytest.mark.parametrize(
    ("make", "paths", "tied"),
    [
        (lambda d: Pair(d, d), ["left", "right"], True),
        (
            lambda d: Pair(nn.Sequential([d, nn.relu]), nn.Sequential([d])),
            ["left.0", "right.0"],
            True,
        ),
        (lambda d: nn.Sequential([Attn(), nn.relu, Attn()]), ["0.proj", "2.proj"], False),
        (lambda d: SetupTie(), ["enc", "dec"], True),
    ],
)
def test_instances_and_scopes_agree_with_linen_bind(make, paths, tied):
    net = make(nn.Dense(4))
    variables = init(net, X)
    tree = ut.wrap(net, variables)
    bound = net.bind(variables)
    for path in paths:
        module = bound
        for seg in path.split("."):
            module = module.layers[int(seg)] if seg.isdigit() else getattr(module, seg)
        np.testing.assert_array_equal(
            tree[f"{path}.weight"].numpy(), np.asarray(module.variables["params"]["kernel"]).T
        )
    a, b = (tree[f"{path}.weight"] for path in paths)
    assert (a is b) is tied and bool(tree.ties()) is tied
    out = net.apply(variables, X)
    bias = tree[f"{paths[-1]}.bias"]
    bias.set(np.arange(bias.shape[0], dtype=np.float32))  # through the last alias
    assert_differ(net.apply(tree.variables, X), out)


def test_wrap_a_bound_module_reads_its_definition():
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    variables = init(net, X)
    tree = ut.wrap(net.bind(variables), variables)
    assert [k for k, _ in tree.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    np.testing.assert_array_equal(tree.native.apply(tree.variables, X), net.apply(variables, X))


class Head(nn.Module):  # at module level: its source is read for the class of name="out"
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(2, name="out")(x)


def test_explicitly_named_compact_submodule_is_known_from_its_source():
    variables = init(Head(), X)
    tree = ut.wrap(Head(), variables)
    assert tree.out.type_name == "Dense" and tree.out.kind == "dense"
    assert [k for k, _ in tree.named_parameters()] == ["out.weight", "out.bias"]
    kernel = np.asarray(variables["params"]["out"]["kernel"])
    np.testing.assert_array_equal(tree["out.weight"].numpy(), kernel.T)  # PyTorch's (out, in)


def test_a_compact_name_given_by_a_variable_shows_no_class():
    class Head(nn.Module):
        name_of_out: str = "out"

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(2, name=self.name_of_out)(x)

    tree = ut.wrap(Head(), init(Head(), X))
    assert tree.out.type_name == "Module" and tree.out.kind is None
    assert [k for k, _ in tree.named_parameters()] == ["out.kernel", "out.bias"]


# -- every layer kind against Flax's values -------------------------------------------------------
def test_dense_kernel_is_transposed():
    layer = nn.Dense(5)
    variables = init(layer, X)
    tree = ut.wrap(layer, variables)
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (4, 5) and tree.weight.shape == (5, 4)
    np.testing.assert_array_equal(tree.weight.numpy(), kernel.T)
    W, b = tree.weight.numpy().astype(np.float64), tree.bias.numpy()
    assert_close(  # by hand in float64; X > 0: the scale is the sums of the terms' magnitudes
        np.asarray(layer.apply(variables, X)), X @ W.T + b, scale=X @ np.abs(W.T) + np.abs(b)
    )


@pytest.mark.parametrize("k", [(3,), (3, 2), (2, 3, 2)])
def test_conv_kernel_is_out_in_spatial(k):
    n = len(k)
    x = np.random.default_rng(1).random((2, *(5,) * n, 3), dtype=np.float32)  # channels last
    conv = nn.Conv(4, k, padding="VALID")
    variables = init(conv, x)
    tree = ut.wrap(conv, variables)
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (*k, 3, 4) and tree.weight.shape == (4, 3, *k)
    np.testing.assert_array_equal(tree.weight.numpy(), kernel.transpose(n + 1, n, *range(n)))
    W, b = tree.weight.numpy(), tree.bias.numpy()
    ours = conv_reference(np.moveaxis(x, -1, 1), W, b)
    scale = conv_reference(np.moveaxis(x, -1, 1), np.abs(W), np.abs(b))  # x > 0: the terms'
    got = np.asarray(conv.apply(variables, x))
    assert_close(got, np.moveaxis(ours, 1, -1), scale=np.moveaxis(scale, 1, -1))


def test_embed_layer_norm_batch_norm():
    class M(nn.Module):
        @nn.compact
        def __call__(self, ids: jax.Array) -> jax.Array:
            h = nn.Embed(10, 6)(ids)
            h = nn.LayerNorm()(h)
            return nn.BatchNorm(use_running_average=False)(h)

    variables = init(M(), IDS)
    params, stats = variables["params"], variables["batch_stats"]
    tree = ut.wrap(M(), variables)
    np.testing.assert_array_equal(tree.Embed_0.weight.numpy(), params["Embed_0"]["embedding"])
    for ours, theirs in [("weight", "scale"), ("bias", "bias")]:
        np.testing.assert_array_equal(tree.LayerNorm_0[ours].numpy(), params["LayerNorm_0"][theirs])
        np.testing.assert_array_equal(tree.BatchNorm_0[ours].numpy(), params["BatchNorm_0"][theirs])
    for ours, theirs in [("running_mean", "mean"), ("running_var", "var")]:
        p = tree.BatchNorm_0[ours]
        assert p.is_buffer and not p.trainable
        np.testing.assert_array_equal(p.numpy(), stats["BatchNorm_0"][theirs])
    assert [k for k, _ in tree.BatchNorm_0.named_parameters()] == ["weight", "bias"]
    assert list(tree.state_dict())[-4:] == [
        "BatchNorm_0.weight",
        "BatchNorm_0.bias",
        "BatchNorm_0.running_mean",
        "BatchNorm_0.running_var",
    ]


# -- writes ------------------------------------------------------------------------------------
def test_writes_build_new_variables_that_apply_uses():
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    variables = init(net, X)
    before = np.asarray(variables["params"]["layers_2"]["kernel"]).copy()
    tree = ut.wrap(net, variables)
    list(tree.named_parameters())
    list(tree.named_parameters())  # checks the fingerprint of what the first traversal read
    fp = tree._fp
    tree[2].weight[0, 3] = 100.0
    tree[2].bias.set(np.array([5.0]))
    new = tree.variables
    assert new is not variables and new["params"]["layers_0"] is variables["params"]["layers_0"]
    assert float(new["params"]["layers_2"]["kernel"][3, 0]) == 100.0
    np.testing.assert_array_equal(variables["params"]["layers_2"]["kernel"], before)  # untouched
    values = [p.numpy() for p in tree.parameters()]  # by hand in float64, and float32's scale
    want, scale = mlp_output(*values, X), mlp_output(*map(np.abs, values), X)
    assert_close(net.apply(new, X), want, scale=scale)
    list(tree.named_parameters())
    assert tree._fp is fp  # a write keeps the structure: no re-read


def test_load_state_dict_and_checkpoints(tmp_path):
    net, variables = deck_tied(seed=0)
    _, other = deck_tied(seed=1)
    src, dst = ut.wrap(net, variables), ut.wrap(net, other)
    dst.load_state_dict({"4.weight": src[2].weight.numpy(), **src.state_dict()})
    np.testing.assert_array_equal(net.apply(dst.variables, X), net.apply(variables, X))
    assert dst.ties() == src.ties() and dst[4].weight is dst[2].weight
    ut.save(src, tmp_path / "m.safetensors")
    fresh = ut.wrap(net, deck_tied(seed=2)[1])
    assert ut.load(fresh, tmp_path / "m.safetensors") == ([], [])
    np.testing.assert_array_equal(net.apply(fresh.variables, X), net.apply(variables, X))


def test_frozen_variables_stay_frozen():
    net = nn.Dense(2)
    tree = ut.wrap(net, FrozenDict(init(net, X)))
    tree.bias[0] = 1.0
    assert (
        isinstance(tree.variables, FrozenDict) and float(tree.variables["params"]["bias"][0]) == 1
    )


def test_errors_leave_the_variables_unchanged():
    net, variables = deck_tied()
    tree = ut.wrap(net, variables)
    bad = {k: v * 0 for k, v in tree.state_dict().items()}
    bad["6.weight"] = np.zeros((2, 8), np.float32)
    with pytest.raises(ut.StateDictError, match=r"6\.weight: shape \(2, 8\)"):
        tree.load_state_dict(bad)
    with pytest.raises(ut.ShapeError):
        tree[0].weight.set(np.zeros((4, 8)))
    with pytest.raises(TypeError, match=r"not a numeric array|expected a numeric value"):
        tree[0].bias[0] = "one"
    assert tree.variables is variables


def test_partitioned_params_read_unboxed_and_stay_boxed():
    layer = nn.Dense(3, kernel_init=nn.with_partitioning(nn.initializers.ones, (None, "model")))
    variables = init(layer, X)
    tree = ut.wrap(layer, variables)
    assert tree.weight.shape == (3, 4) and tree.weight.numpy().sum() == 12
    tree.weight[0, 0] = 7
    box = tree.variables["params"]["kernel"]
    assert isinstance(box, nn.Partitioned) and box.names == (None, "model")
    assert float(box.value[0, 0]) == 7 and tree.weight.native is box


def test_tie_explains_that_linen_shares_through_the_definition():
    net = nn.Sequential([nn.Dense(4), nn.Dense(4), nn.Dense(4)])
    tree = ut.wrap(net, init(net, X))
    before = tree.variables
    with pytest.raises(NotImplementedError, match="definition"):
        tree.tie(1, 2)
    assert tree.ties() == [] and tree.variables is before


# -- values, dtypes, devices ------------------------------------------------------------------------
def test_numpy_is_a_read_only_view_of_the_jax_array():
    layer = nn.Dense(3)
    variables = init(layer, X)
    tree = ut.wrap(layer, variables)
    kernel = variables["params"]["kernel"]
    w = tree.weight.numpy()
    assert np.shares_memory(w, np.asarray(kernel)) and not w.flags.writeable
    assert tree.weight.data is kernel and tree.weight.native is kernel
    assert tree.weight.device == "cpu" and ut.wrap(layer, variables).weight.dtype == "float32"


def test_bfloat16():
    layer = nn.Dense(3, param_dtype=jnp.bfloat16)
    tree = ut.wrap(layer, init(layer, X))
    p = tree.weight
    assert p.dtype == "bfloat16" and tree.variables["params"]["kernel"].dtype == jnp.bfloat16
    p[1, 2] = 1.5
    assert float(tree.variables["params"]["kernel"][2, 1]) == 1.5
    assert tree.variables["params"]["kernel"].dtype == jnp.bfloat16
    zeros = {k: v.astype(np.float32) * 0 for k, v in tree.state_dict().items()}
    tree.load_state_dict(zeros, cast=True)  # float32 into bfloat16 rounds: asked for
    assert float(jnp.abs(tree.variables["params"]["kernel"]).sum()) == 0


# -- gradients ----------------------------------------------------------------------------------------
def loss_fn(y: jax.Array) -> jax.Array:
    return (y**2).mean()


def test_backward_matches_jax_grad_and_accumulates():
    net = Net()
    variables = init(net, IDS)
    tree = ut.wrap(net, variables)
    assert all(p.grad is None for p in tree.parameters())
    loss = tree.backward(loss_fn, IDS)
    want_loss, want = jax.value_and_grad(
        lambda p: loss_fn(net.apply({**variables, "params": p}, IDS))
    )(variables["params"])
    assert_close(loss, float(want_loss))  # the same computation, a mean of squares
    assert_close(
        tree["blocks.0.proj.weight"].grad, np.asarray(want["blocks_0"]["proj"]["kernel"]).T
    )
    assert_close(tree["scale"].grad, want["scale"])
    assert tree["heads.bn.running_mean"].grad is None  # a buffer
    tree.backward(loss_fn, IDS)
    assert_close(tree["wte.weight"].grad, 2 * np.asarray(want["wte"]["embedding"]))


def test_tied_gradient_is_the_sum_of_both_uses():
    net, variables = deck_tied()
    layers = [nn.Dense(8), nn.relu, nn.Dense(8), nn.relu, nn.Dense(8), nn.relu, nn.Dense(1)]
    untied = nn.Sequential(layers)
    t, u = ut.wrap(net, variables), ut.wrap(untied, init(untied, X))
    u.load_state_dict({path: t[path].numpy() for path, _ in u.named_parameters()})
    t.backward(lambda y: y.sum(), X)
    u.backward(lambda y: y.sum(), X)
    assert_close(t[2].weight.grad, u[2].weight.grad + u[4].weight.grad)


def test_backward_updates_batch_statistics_in_training_mode():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x))

    variables = init(M(), X)
    tree = ut.wrap(M(), variables)
    tree.backward(lambda y: y.sum(), X)
    _, updates = M().apply(variables, X, mutable=["batch_stats"])
    assert_close(  # the same computation
        tree.BatchNorm_0.running_mean.numpy(), updates["batch_stats"]["BatchNorm_0"]["mean"]
    )
    assert tree.BatchNorm_0.running_mean.numpy().any()


def test_backward_checks_the_loss():
    layer = nn.Dense(2)
    tree = ut.wrap(layer, init(layer, X))
    with pytest.raises(TypeError, match="jax scalar"):
        tree.backward(lambda y: y, X)
    assert tree.bias.grad is None


# -- wrapping ----------------------------------------------------------------------------------------
def test_wrap_asks_for_the_variables():
    net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    with pytest.raises(ut.UnsupportedModelError, match=r"ut\.wrap\(module, variables\)"):
        ut.wrap(net)
    with pytest.raises(ut.UnsupportedModelError, match="params collection alone"):
        ut.wrap(net, init(net, X)["params"])
    with pytest.raises(ut.UnsupportedModelError, match="params collection alone"):
        ut.wrap(Compact(), init(Compact(), np.ones((1, 3), np.float32))["params"])
    with pytest.raises(ut.UnsupportedModelError, match="variables dict"):
        ut.wrap(net, [1, 2])
    with pytest.raises(ut.UnsupportedModelError, match="holds its own variables"):
        ut.wrap(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {})


def test_second_traversal_is_cached(monkeypatch):
    net = Net()
    assert_read_once(ut.wrap(net, init(net, IDS)), monkeypatch)


def test_a_linen_module_defined_under_flax_nnx_is_read_as_linen():
    """nnx.bridge.ToLinen is a linen Module whose class lives in flax.nnx: the adapter is found
    by its base class, and its values are linen's own variables."""
    from flax.nnx import bridge

    m = bridge.ToLinen(nnx.Linear, args=(2, 3))
    variables = m.init(jax.random.key(0), np.ones((1, 2), np.float32))
    tree = ut.wrap(m, variables)
    assert tree.variables is variables
    kernel = np.asarray(variables["params"]["kernel"])
    np.testing.assert_array_equal(tree["kernel"].numpy(), kernel)
