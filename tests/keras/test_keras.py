"""The Keras adapter against Keras's own answers, on whichever backend KERAS_BACKEND names.

The nox sessions keras-tensorflow, keras-jax and keras-torch run this same file,
once per backend.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers
from unitree.conformance.cases import mlp_gradients
from unitree_checks import assert_close, assert_differ, assert_read_once

import unitree as ut

BACKEND = keras.backend.backend()
X = np.random.default_rng(0).random((2, 4), dtype=np.float32)

if BACKEND == "tensorflow":
    import tensorflow as tf
elif BACKEND == "jax":
    import jax
else:
    import torch


def numpy(t: object) -> np.ndarray:
    """A backend tensor or Keras variable as numpy, through the backend's own API."""
    if isinstance(t, keras.Variable):
        t = t.value
    if BACKEND == "tensorflow":
        return np.array(t.numpy())
    if BACKEND == "jax":
        return np.array(t)
    return t.detach().cpu().numpy().copy()


def native_grads(model: keras.Layer, loss_fn, *inputs) -> list[np.ndarray | None]:  # type: ignore[no-untyped-def]
    """Keras's own gradients of ``loss_fn(model(*inputs))``, one per ``model.trainable_variables``."""
    variables = model.trainable_variables
    if BACKEND == "tensorflow":
        with tf.GradientTape() as tape:
            loss = loss_fn(model(*inputs))
        grads = tape.gradient(loss, variables)
        return [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]
    if BACKEND == "jax":
        state = [v.value for v in model.non_trainable_variables]

        def f(values: list) -> object:
            return loss_fn(model.stateless_call(values, state, *inputs)[0])

        return [np.asarray(g) for g in jax.grad(f)([v.value for v in variables])]
    loss = loss_fn(model(*inputs))
    grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
    return [None if g is None else g.numpy() for g in grads]


def total(y: object) -> object:
    return keras.ops.sum(y)


def squares(y: object) -> object:
    return keras.ops.mean(keras.ops.square(y))


def mlp() -> keras.Sequential:
    keras.utils.set_random_seed(0)
    net = keras.Sequential([layers.Dense(8), layers.ReLU(), layers.Dense(1)])
    net(X)
    return net


class Block(keras.layers.Layer):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.attn = layers.Dense(6)
        self.norm = layers.LayerNormalization()

    def call(self, h: object) -> object:
        return self.norm(self.attn(h))


class Net(keras.Model):
    """Attributes, a list and a dict of layers, and an embedding shared with the output."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = layers.Embedding(10, 6)
        self.blocks = [Block(), Block()]
        self.heads = {"cls": layers.Dense(3), "bn": layers.BatchNormalization()}
        self.lm_head = layers.Dense(10, use_bias=False)

    def call(self, ids: object) -> object:
        h = self.wte(ids)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(h)  # the heads stay unused


IDS = np.array([[1, 2, 3], [4, 5, 6]])


def net() -> Net:
    keras.utils.set_random_seed(0)
    model = Net()
    for head in model.heads.values():  # unused by call(): built here, before Keras builds the rest
        head.build((None, 6))
    model(IDS)
    return model


NET_PICTURE = """\
Net
├─ wte: Embedding
│  └─ weight (10, 6)
├─ blocks: list
│  ├─ 0: Block
│  │  ├─ attn: Dense
│  │  │  ├─ weight (6, 6)
│  │  │  └─ bias (6,)
│  │  └─ norm: LayerNormalization
│  │     ├─ weight (6,)
│  │     └─ bias (6,)
│  └─ 1: Block
│     ├─ attn: Dense
│     │  ├─ weight (6, 6)
│     │  └─ bias (6,)
│     └─ norm: LayerNormalization
│        ├─ weight (6,)
│        └─ bias (6,)
├─ heads: dict
│  ├─ cls: Dense
│  │  ├─ weight (3, 6)
│  │  └─ bias (3,)
│  └─ bn: BatchNormalization
│     ├─ weight (6,)
│     ├─ bias (6,)
│     ├─ running_mean (6,) [buffer]
│     └─ running_var (6,) [buffer]
└─ lm_head: Dense
   └─ weight (10, 6)"""


# -- structure and paths -------------------------------------------------------------------
def test_subclassed_model_paths_and_picture():
    model = net()
    tree = ut.wrap(model)
    assert tree.backend == "keras"
    assert str(tree) == NET_PICTURE
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
        "heads.cls",
        "heads.bn",
        "lm_head",
    ]
    assert tree["blocks.1.attn.weight"].native is model.blocks[1].attn.kernel
    assert tree.blocks[0].norm.bias.native is model.blocks[0].norm.beta
    assert tree.heads["cls"].type_name == "Dense" and tree.heads.cls.kind == "dense"
    assert tree.blocks.type_name == "list" and len(tree.blocks) == 2
    assert tree.blocks.native is model.blocks and tree.native is model
    # every Keras weight once, nothing else: parameters and buffers together are model.weights
    listed = [p.native for p in (*tree.parameters(), *tree.buffers())]
    assert sorted(map(id, listed)) == sorted(map(id, model.weights))
    assert len(listed) == len(model.weights)


def test_sequential_functional_and_nested_models_are_numbered_by_position():
    inner = keras.Sequential([layers.Dense(5, name="a"), layers.Dense(5, name="b")], name="inner")
    inputs = keras.Input((4,))
    h = layers.Dense(6, name="encoder")(inputs)
    h = layers.ReLU()(h)
    h = inner(h)
    outputs = layers.Dense(1, name="head")(h)
    model = keras.Model(inputs, outputs)
    assert isinstance(model.layers[0], keras.layers.InputLayer)  # Keras counts it; paths do not
    tree = ut.wrap(model)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        ("0.weight", (6, 4)),
        ("0.bias", (6,)),
        ("2.0.weight", (5, 6)),
        ("2.0.bias", (5,)),
        ("2.1.weight", (5, 5)),
        ("2.1.bias", (5,)),
        ("3.weight", (1, 5)),
        ("3.bias", (1,)),
    ]
    assert tree[2].type_name == "Sequential" and tree[1].type_name == "ReLU"
    assert tree["2.1.bias"].native is inner.layers[1].bias


def test_paths_never_use_keras_auto_names():
    first = [k for k, _ in ut.wrap(mlp()).named_parameters()]
    for _ in range(3):  # Keras counts these in its global names: dense_7, sequential_4, ...
        keras.Sequential([layers.Dense(2), layers.Dense(2)])(X)
    model = mlp()
    assert model.layers[0].name != "dense"  # the auto-name moved on ...
    assert [k for k, _ in ut.wrap(model).named_parameters()] == first  # ... the paths did not
    assert first == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_layer_names_are_aliases_never_paths():
    inputs = keras.Input((4,))
    h = layers.Dense(6, name="encoder")(inputs)
    model = keras.Model(inputs, layers.Dense(1, name="head")(h))
    tree = ut.wrap(model)
    assert tree["encoder"] is tree[0] and tree["encoder"].path == "0"
    assert tree["encoder.weight"] is tree["0.weight"] and tree.head.bias is tree["1.bias"]
    assert [k for k, _ in tree["encoder"].named_parameters()] == ["weight", "bias"]
    assert "encoder" not in str(tree) and all(
        "encoder" not in k for k, _ in tree.named_parameters()
    )
    with pytest.raises(KeyError, match="No parameter or module at path 'decoder'"):
        tree["decoder"]


def test_a_shared_layer_is_one_parameter_set():
    shared = layers.Dense(8, activation="relu")
    model = keras.Sequential(
        [layers.Flatten(), layers.Dense(8, activation="relu"), shared, shared, layers.Dense(1)]
    )
    model(X)
    tree = ut.wrap(model)
    assert model.layers[2] is model.layers[3]  # the deck's net.layers lists it twice
    assert tree[2].weight is tree[3].weight and tree[3].weight.native is shared.kernel
    assert tree.ties() == [("2.weight", "3.weight"), ("2.bias", "3.bias")]
    assert [k for k, _ in tree.named_parameters()] == [
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert len(list(tree.parameters())) == len(model.weights)
    assert "weight (8, 8) = 2.weight" in str(tree)


def test_a_layer_called_twice_in_a_functional_model_is_listed_once():
    shared = layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    outputs = layers.Dense(1)(shared(shared(inputs)))
    model = keras.Model(inputs, outputs)
    tree = ut.wrap(model)
    assert [k for k, _ in tree.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert tree["shared"] is tree[0] and tree.ties() == []


def test_tuples_and_nested_containers_of_layers():
    class Towers(keras.layers.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.pair = (layers.Dense(2), layers.Dense(3))
            self.grid = [[layers.Dense(4)], {"x": layers.Dense(5)}]
            self.scale = 2.0  # not a layer: not a node

        def call(self, x: object) -> object:
            a, b = self.pair
            return a(x), b(x), self.grid[0][0](x), self.grid[1]["x"](x)

    towers = Towers()
    towers(X)
    tree = ut.wrap(towers)
    assert [(k, p.shape) for k, p in tree.named_parameters() if k.endswith("weight")] == [
        ("pair.0.weight", (2, 4)),
        ("pair.1.weight", (3, 4)),
        ("grid.0.0.weight", (4, 4)),
        ("grid.1.x.weight", (5, 4)),
    ]
    assert tree.pair.type_name == "tuple" and tree["grid.1"].type_name == "dict"
    assert tree["grid.1.x.bias"].native is towers.grid[1]["x"].bias


def test_every_keras_weight_once_for_layers_built_of_layers():
    """Attention, recurrent and wrapper layers keep their sublayers in (private) attributes."""
    inputs = keras.Input((5, 8))
    h = layers.MultiHeadAttention(2, 4)(inputs, inputs)
    h = layers.LSTM(6, return_sequences=True)(h)
    h = layers.Bidirectional(layers.GRU(3, return_sequences=True))(h)
    h = layers.TimeDistributed(layers.Dense(4))(h)
    h = layers.Conv1DTranspose(2, 2)(h)
    model = keras.Model(inputs, h)
    tree = ut.wrap(model)
    listed = [p.native for p in (*tree.parameters(), *tree.buffers())]
    assert sorted(map(id, listed)) == sorted(map(id, model.weights))
    assert len(listed) == len(model.weights) == 21
    paths = dict(tree.named_parameters())
    # an EinsumDense, read from its equation as PyTorch's Linear weight (heads * head_dim, E)
    kernel = keras.ops.convert_to_numpy(model.layers[1]._query_dense.kernel)
    assert kernel.shape == (8, 2, 4) and paths["0.query.weight"].shape == (8, 8)
    np.testing.assert_array_equal(paths["0.query.weight"].numpy(), kernel.reshape(8, 8).T)
    assert paths["1.cell.recurrent_kernel"].native is model.layers[2].cell.recurrent_kernel
    assert paths["2.backward_layer.cell.kernel"].shape == (6, 9)
    assert paths["3.layer.weight"].shape == (4, 6)  # a Dense inside TimeDistributed
    assert paths["4.weight"].shape == (4, 2, 2)  # transposed conv: (in, out, k)


def test_variables_keras_named_automatically_are_named_by_attribute():
    class Scale(keras.layers.Layer):
        def build(self, shape: tuple) -> None:
            self.w = self.add_weight(shape=(shape[-1],))  # Keras names it "variable_N"
            self.offset = self.add_weight(shape=(shape[-1],), name="offset")

        def call(self, x: object) -> object:
            return x * self.w + self.offset

    layer = Scale()
    layer(X)
    assert layer.w.name.startswith("variable")
    tree = ut.wrap(layer)
    assert [k for k, _ in tree.named_parameters()] == ["w", "offset"]
    assert tree["w"].native is layer.w


# -- canonical layouts, against Keras's own values -----------------------------------------------
def test_dense_weight_is_the_transposed_kernel():
    model = mlp()
    tree = ut.wrap(model)
    kernel = numpy(model.layers[0].kernel)
    assert kernel.shape == (4, 8) and tree["0.weight"].shape == (8, 4)
    np.testing.assert_array_equal(tree["0.weight"].numpy(), kernel.T)
    # canonical means what torch computes: y = x W^T + b
    W, b = tree["0.weight"].numpy().astype(np.float64), tree["0.bias"].numpy()
    scale = X @ np.abs(W.T) + np.abs(b)  # X > 0: the sums of the terms' magnitudes
    assert_close(numpy(model.layers[0](X)), X @ W.T + b, scale=scale)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_kernels_are_out_in_spatial(dims):
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[dims](6, 3)
    x = np.random.default_rng(1).random((2, *([5] * dims), 2), dtype=np.float32)
    y = numpy(conv(x))
    tree = ut.wrap(conv)
    kernel = numpy(conv.kernel)
    assert kernel.shape == (*([3] * dims), 2, 6)
    W = tree["weight"].numpy()
    assert W.shape == (6, 2, *([3] * dims)) and tree.kind == "conv"
    np.testing.assert_array_equal(W, np.moveaxis(kernel, (-1, -2), (0, 1)))
    # torch's cross-correlation with W (out, in, *k) on the channels-first input gives Keras's output
    spatial = "xyz"[:dims]
    windows = np.lib.stride_tricks.sliding_window_view(
        x, (3,) * dims, axis=tuple(range(1, dims + 1))
    )
    expr = f"b{spatial}i{spatial.upper()},oi{spatial.upper()}->b{spatial}o"
    W, bias = W.astype(np.float64), tree["bias"].numpy().astype(np.float64)
    want = np.einsum(expr, windows, W) + bias  # in float64; x > 0: below, the terms' magnitudes
    assert_close(y, want, scale=np.einsum(expr, windows, np.abs(W)) + np.abs(bias))


def test_embedding_layer_norm_and_batch_norm_leaves():
    model = net()
    tree = ut.wrap(model)
    np.testing.assert_array_equal(tree["wte.weight"].numpy(), numpy(model.wte.embeddings))
    norm = model.blocks[0].norm
    assert [(k, p.native) for k, p in tree["blocks.0.norm"].named_parameters()] == [
        ("weight", norm.gamma),
        ("bias", norm.beta),
    ]
    bn = model.heads["bn"]
    node = tree.heads.bn
    assert node.kind == "batch_norm"
    assert [(k, p.native, p.trainable) for k, p in node.named_parameters()] == [
        ("weight", bn.gamma, True),
        ("bias", bn.beta, True),
    ]
    assert [(k, p.native, p.trainable, p.is_buffer) for k, p in node.named_buffers()] == [
        ("running_mean", bn.moving_mean, False, True),
        ("running_var", bn.moving_variance, False, True),
    ]
    assert list(tree.state_dict())[-5:] == [
        "heads.bn.weight",
        "heads.bn.bias",
        "heads.bn.running_mean",
        "heads.bn.running_var",
        "lm_head.weight",
    ]
    np.testing.assert_array_equal(tree["heads.bn.running_var"].numpy(), np.ones(6))


def test_batch_norm_statistics_are_buffers_keras_updates():
    bn = layers.BatchNormalization()
    x = np.random.default_rng(2).random((8, 3), dtype=np.float32)
    bn(x, training=True)  # Keras moves the statistics towards the batch
    tree = ut.wrap(bn)
    # x > 0: no cancellation, the largest value is the scale
    assert_close(tree["running_mean"].numpy(), 0.01 * x.mean(0, dtype=np.float64))
    assert [k for k, _ in tree.named_parameters()] == ["weight", "bias"]


# -- reading and writing --------------------------------------------------------------------------
def test_numpy_is_read_only_and_a_view_where_the_backend_allows():
    model = mlp()
    p = ut.wrap(model)["0.bias"]
    a = p.numpy()
    assert not a.flags.writeable
    if BACKEND == "jax":
        assert np.shares_memory(a, np.asarray(model.layers[0].bias.value))
    elif BACKEND == "torch":
        assert np.shares_memory(a, model.layers[0].bias.value.detach().numpy())
    assert p.device == "cpu" and p.dtype == "float32"
    assert ut.wrap(model)["0.bias"].data is model.layers[0].bias.value


def test_writes_reach_the_variable_and_every_alias():
    shared = layers.Dense(3)
    model = keras.Sequential([shared, layers.ReLU(), shared])
    model(np.ones((1, 3), np.float32))
    tree = ut.wrap(model)
    kernel = shared.kernel
    tree["0.weight"][2, 1] = 100  # canonical (out, in): the kernel's [1, 2]
    assert numpy(shared.kernel)[1, 2] == 100 and tree["2.weight"][2, 1] == 100
    assert shared.kernel is kernel  # Variable.assign: the same Keras variable
    tree["2.bias"].set(np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(numpy(shared.bias), [1, 2, 3])
    tree["0.bias"].set(keras.ops.convert_to_tensor(np.full(3, 7.0, np.float32)))  # native too
    np.testing.assert_array_equal(tree["2.bias"].numpy(), [7, 7, 7])
    tree["0.weight"][0] = np.arange(3)  # a row of the canonical weight is a column of the kernel
    np.testing.assert_array_equal(numpy(shared.kernel)[:, 0], [0, 1, 2])


def test_bad_writes_change_nothing():
    model = mlp()
    tree = ut.wrap(model)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    with pytest.raises(
        ut.ShapeError, match=r"expected shape \(8, 4\), got a value of shape \(4, 8\)"
    ):
        tree["0.weight"].set(np.zeros((4, 8), np.float32))
    with pytest.raises(TypeError, match="without changing kind"):
        tree["0.bias"][0] = 1 + 2j
    bad = {**before, "2.weight": np.zeros((8, 1), np.float32)}
    with pytest.raises(ut.StateDictError, match=r"2\.weight: shape \(8, 1\) in the source"):
        tree.load_state_dict(bad)
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_state_dict_and_checkpoint_round_trip(tmp_path):
    src, dst = net(), net()
    dst_tree = ut.wrap(dst)
    dst_tree.load_state_dict({k: v * 0 for k, v in ut.wrap(src).state_dict().items()})
    assert not np.any(numpy(dst.wte.embeddings))
    ut.save(ut.wrap(src), tmp_path / "net.safetensors")
    assert ut.load(dst_tree, tmp_path / "net.safetensors") == ([], [])
    assert_close(numpy(dst(IDS)), numpy(src(IDS)))  # the same values, the same computation
    np.testing.assert_array_equal(numpy(dst.heads["bn"].moving_variance), np.ones(6))


def test_bfloat16_variables():
    dense = layers.Dense(3, dtype="bfloat16")
    dense.build((None, 2))
    p = ut.wrap(dense)["weight"]
    assert p.dtype == "bfloat16" and p.numpy().dtype.name == "bfloat16"
    p[0, 1] = 1.5
    assert numpy(keras.ops.cast(dense.kernel.value, "float32"))[1, 0] == 1.5


# -- gradients -----------------------------------------------------------------------------------------
def canonical(name: str, a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, (-1, -2), (0, 1)) if name == "kernel" else a


def test_backward_matches_keras_gradients_and_accumulates():
    model = net()
    tree = ut.wrap(model)
    assert all(p.grad is None for p in tree.parameters())
    want = dict(zip(map(id, model.trainable_variables), native_grads(model, squares, IDS)))
    loss = tree.backward(squares, IDS)
    assert_close(loss, float(numpy(squares(model(IDS)))))  # a mean of squares: no cancellation
    for path, p in tree.named_parameters():
        g = want[id(p.native)]
        if path.startswith("heads."):  # unused: TensorFlow and torch give none, jax zeros
            assert (p.grad is None) if BACKEND != "jax" else not p.grad.any(), path
            continue
        assert p.grad.shape == p.shape
        assert_close(p.grad, canonical(p.native.name, g), err_msg=path)
    tree.backward(squares, IDS)
    g = want[id(model.wte.embeddings)]
    assert_close(tree["wte.weight"].grad, 2 * g)


def test_backward_by_hand_and_input_conversion():
    model = mlp()
    tree = ut.wrap(model)
    values = [p.numpy() for p in tree.parameters()]
    x = np.random.default_rng(3).random((5, 4))  # float64 in, a float32 model
    loss = tree.backward(total, x)
    # by hand in float64, and the same sums over the terms' magnitudes: float32's scale
    want_loss, (dW1, _, dW2, db2) = mlp_gradients(*values, x)
    loss_scale, (sW1, _, sW2, _) = mlp_gradients(*map(np.abs, values), x)
    assert_close(loss, want_loss, scale=loss_scale)
    assert_close(tree["2.weight"].grad, dW2, scale=sW2)
    np.testing.assert_array_equal(tree["2.bias"].grad, db2)  # 5 ones: exact in float32
    assert_close(tree["0.weight"].grad, dW1, scale=sW1)
    with pytest.raises(TypeError, match="scalar"):
        tree.backward(lambda y: y, X)


def test_tied_gradient_is_the_sum_over_both_uses():
    shared = layers.Dense(4)
    tied = keras.Sequential([shared, layers.ReLU(), shared])
    tied(X)
    untied = keras.Sequential([layers.Dense(4), layers.ReLU(), layers.Dense(4)])
    untied(X)
    for v, w in zip(untied.weights, tied.weights * 2):
        v.assign(w.value)
    t, u = ut.wrap(tied), ut.wrap(untied)
    t.backward(total, X)
    u.backward(total, X)
    for leaf in ("weight", "bias"):
        assert_close(t[0][leaf].grad, u[0][leaf].grad + u[2][leaf].grad, err_msg=leaf)


def test_frozen_layer_is_a_parameter_without_gradient():
    model = mlp()
    model.layers[0].trainable = False
    tree = ut.wrap(model)
    assert [k for k, _ in tree.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert not tree["0.weight"].trainable and tree["2.weight"].trainable
    tree.backward(total, X)
    assert tree["0.weight"].grad is None and tree["2.weight"].grad is not None


# -- tying -------------------------------------------------------------------------------------------------
def four_dense() -> keras.Sequential:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([layers.Dense(8), layers.Dense(8), layers.Dense(8), layers.Dense(1)])
    model(X)
    return model


# Keras's own predict() converts with np.array(torch tensor), which numpy 2 warns about
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_tie_makes_keras_share_the_variables():
    model = four_dense()
    before = model.predict(X, verbose=0)  # Keras compiles a predict function: tie must drop it
    tree = ut.wrap(model)
    tree.tie(1, 2)
    a, b = model.layers[1], model.layers[2]
    assert b.kernel is a.kernel and b.bias is a.bias
    assert len(model.weights) == 6 and len(model.trainable_variables) == 6
    assert tree.ties() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    assert tree[2].weight is tree[1].weight
    tree["1.weight"][0, 0] = 5.0  # the forward pass reads the shared variable at both places
    y = numpy(model(X))
    assert_close(model.predict(X, verbose=0), y)
    assert_differ(y, before)
    if BACKEND == "torch":  # torch's view of the Keras model follows
        assert len(list(model.parameters())) == 6
    grads = native_grads(model, total, X)
    tree.backward(total, X)
    assert_close(tree["1.weight"].grad, grads[2].T)


def test_tie_is_validated_first_and_changes_nothing_when_refused():
    model = four_dense()
    tree = ut.wrap(model)
    with pytest.raises(
        ut.ShapeError, match=r"weight: \(8, 4\) float32 in 0, \(8, 8\) float32 in 1"
    ):
        tree.tie(0, 1)
    assert len(model.weights) == 8 and tree.ties() == []

    class Lookup(keras.Model):  # the GPT-2 tie: same canonical shape, transposed native layouts
        def __init__(self) -> None:
            super().__init__()
            self.wte = layers.Embedding(10, 6)
            self.out = layers.Dense(10, use_bias=False)

        def call(self, ids: object) -> object:
            return self.out(self.wte(ids))

    lookup = Lookup()
    lookup(IDS)
    tree = ut.wrap(lookup)
    kernel = lookup.out.kernel
    with pytest.raises(NotImplementedError, match="one Keras variable cannot serve two layouts"):
        tree.tie("wte.weight", "out.weight")
    assert lookup.out.kernel is kernel and tree.ties() == []


def test_tie_nested_layers_of_a_subclassed_model():
    model = net()
    tree = ut.wrap(model)
    tree.tie("blocks.0", "blocks.1")  # a Dense and a LayerNormalization inside each Block
    b0, b1 = model.blocks
    assert b1.attn.kernel is b0.attn.kernel and b1.norm.gamma is b0.norm.gamma
    assert tree.ties() == [
        ("blocks.0.attn.weight", "blocks.1.attn.weight"),
        ("blocks.0.attn.bias", "blocks.1.attn.bias"),
        ("blocks.0.norm.weight", "blocks.1.norm.weight"),
        ("blocks.0.norm.bias", "blocks.1.norm.bias"),
    ]
    assert len(model.weights) == 12
    tree.tie("heads.bn", "heads.bn")  # a module tied to itself: nothing to do
    tree.backward(squares, IDS)  # one gradient per shared variable, summed by Keras's autodiff
    want = native_grads(model, squares, IDS)
    got = dict(zip(map(id, model.trainable_variables), want))
    assert_close(tree["blocks.1.attn.weight"].grad, got[id(b0.attn.kernel)].T)


def test_tie_refuses_a_layer_whose_variables_are_not_attributes():
    class Pair(keras.layers.Layer):
        def build(self, shape: tuple) -> None:
            self.ws = [self.add_weight(shape=(2,), name="a"), self.add_weight(shape=(2,), name="b")]

        def call(self, x: object) -> object:
            return x * self.ws[0] + self.ws[1]

    model = keras.Sequential([Pair(), Pair()])
    model(np.ones((1, 2), np.float32))
    tree = ut.wrap(model)
    with pytest.raises(NotImplementedError, match="reusing the layer instance"):
        tree.tie(0, 1)
    assert tree.ties() == [] and len(model.weights) == 4


def test_tie_of_layers_not_built_yet_says_to_call_the_model():
    model = keras.Sequential([layers.Dense(8), layers.Dense(8)])
    with pytest.raises(ut.UninitializedError, match="Call the model once"):
        ut.wrap(model).tie(0, 1)


# -- lazy building -------------------------------------------------------------------------------------------
def test_layers_not_built_yet_show_unknown_shapes():
    model = keras.Sequential([layers.Dense(8), layers.ReLU(), layers.Dense(1)])
    tree = ut.wrap(model)
    assert model.weights == []
    w = tree["0.weight"]
    assert w.shape is None and not w.is_buffer
    assert "weight (uninitialized)" in str(tree)
    with pytest.raises(
        ut.UninitializedError, match=r"0\.weight is not initialized.*Run the model once"
    ):
        w.numpy()
    with pytest.raises(ut.UninitializedError):
        tree.state_dict()
    assert w.grad is None
    model(X)
    assert w.shape == (8, 4) and tree["0.weight"].shape == (8, 4)
    np.testing.assert_array_equal(w.numpy(), numpy(model.layers[0].kernel).T)
    assert str(tree) == str(ut.wrap(mlp()))


def test_batch_norm_not_built_yet_knows_its_buffers():
    tree = ut.wrap(layers.BatchNormalization(center=False))
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [("weight", None)]
    assert [k for k, _ in tree.named_buffers()] == ["running_mean", "running_var"]


# -- the rest ---------------------------------------------------------------------------------------------------
def test_wrap_rejects_what_is_not_a_layer():
    with pytest.raises(ut.UnsupportedModelError, match=r"Expected a keras\.Layer"):
        ut.wrap(keras.Variable(np.zeros(3)))


def test_second_traversal_is_cached(monkeypatch):
    model = net()
    assert_read_once(ut.wrap(model), monkeypatch)
    sequential = mlp()
    tree = ut.wrap(sequential)
    old = tree[2].weight
    sequential.pop()
    sequential.add(layers.Dense(3))
    assert tree[2].weight is not old and tree[2].weight.shape == (3, 8)  # Keras built it


def test_devices_are_named_the_keras_way():
    adapter = ut.wrap(mlp())._adapter
    assert adapter.devices()[0] == "cpu"
    assert all(d.startswith("gpu:") for d in adapter.devices()[1:])


def test_a_keras_model_is_keras_on_every_backend():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    if keras.backend.backend() == "torch":
        import torch

        assert isinstance(model, torch.nn.Module)  # also a torch module, yet not read as one
    tree = ut.wrap(model)
    assert tree.backend == "keras" and [k for k, _ in tree.named_parameters()] == [
        "0.weight",
        "0.bias",
    ]
