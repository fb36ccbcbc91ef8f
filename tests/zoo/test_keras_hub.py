"""KerasHub's backbones against Hugging Face's PyTorch models, weights ported by ``ut.port``.

KerasHub builds BERT, GPT-2 and Llama natively in Keras 3 from constructor arguments, and
converts Hugging Face checkpoints with one hand-written converter per architecture. Here the
same twin is built from its constructor arguments (nothing is downloaded), and
``ut.port(torch_model, backbone, rename=...)`` fills it: the ``rename=`` table below is the
only per-architecture input, and it only names which layer is which. unitree reads KerasHub's
split-head projections (``EinsumDense`` kernels (hidden, heads, head_dim), (heads, head_dim,
hidden)) as dense layers from their equations, generically.

Each test randomizes every float parameter of the PyTorch model (so a dropped or swapped
tensor cannot hide behind ones and zeros), ports, and compares the backbone's sequence output
with the PyTorch model's ``last_hidden_state`` on the same token ids; then the ported weights
with what KerasHub's own converter makes of the same model saved by ``save_pretrained``.

Where a KerasHub backbone cannot express the Hugging Face config, the config is the one it
can: ``BertBackbone`` hard-codes the tanh approximation of GELU (``gelu_approximate``), so
the BERT here uses ``hidden_act="gelu_pytorch_tanh"`` (BERT's own default, the exact erf
GELU, has no KerasHub twin).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("safetensors")

import unitree as ut  # noqa: E402
from unitree import PortError  # noqa: E402

RTOL = ATOL = 1e-4
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, POSITIONS = 99, 32, 2, 4, 2, 37, 64
IDS = np.random.default_rng(0).integers(0, VOCAB, (2, 7))

# A port ut.port cannot make yet (unitree/_port.py): it must refuse, naming the layer.
MERGE_ROWS = (
    "ut.port has no way to merge several source layers into one: KerasHub's query, key and "
    "value into GPT-2's fused c_attn"
)


def randomized(model: Any, seed: int) -> Any:
    """``model`` in eval mode, 0.05 * N(0, 1) added to every float parameter (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


@dataclass
class Case:
    """One architecture: the PyTorch model, its KerasHub twin, and which layer is which."""

    torch_model: Callable[[int], Any]  # seed -> the randomized PyTorch model (a *Model)
    backbone: Callable[[], Any]  # the KerasHub backbone, from constructor arguments
    pairs: Callable[[Any], list[tuple[str, Any]]]  # (torch layer, keras layer(s)), by backbone
    inputs: Callable[[np.ndarray], dict[str, np.ndarray]]  # the backbone's inputs
    converted: Callable[[Any, str], Any]  # (torch model, its save_pretrained folder) -> backbone
    reverse_fails: str = ""  # what ut.port lacks for the reverse port, if anything


def at(tree: Any, name: str, tail: str = "") -> str:
    """unitree's path of the backbone's layer called ``name`` (a functional model's layers
    are numbered; their Keras names are aliases), then ``tail``."""
    return tree[name].path + (f".{tail}" if tail else "")


def rename(pairs: list[tuple[str, Any]], reverse: bool = False) -> dict[str, Any]:
    """The ``rename=`` of a port: each whole source path onto its destination (a tuple: one
    source layer split into several, along their output rows)."""
    if reverse:
        return {f"^{re.escape(k)}$": t for t, k in pairs if isinstance(k, str)}
    return {f"^{re.escape(t)}$": k for t, k in pairs}


def sequence_output(out: Any) -> np.ndarray:
    out = out["sequence_output"] if isinstance(out, dict) else out
    return keras.ops.convert_to_numpy(out)


def torch_output(model: Any) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).last_hidden_state.numpy()


# -- BERT -------------------------------------------------------------------------------
def bert_torch(seed: int) -> Any:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        hidden_act="gelu_pytorch_tanh",  # BertBackbone's gelu_approximate
        layer_norm_eps=1e-12,  # BertBackbone's, fixed
        type_vocab_size=2,
    )
    return randomized(transformers.BertModel(config), seed)


def bert_backbone() -> Any:
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_sequence_length=POSITIONS,
        num_segments=2,
        dropout=0.0,
    )


def bert_pairs(tree: Any) -> list[tuple[str, Any]]:
    out = [
        ("embeddings.word_embeddings", at(tree, "token_embedding")),
        ("embeddings.position_embeddings", at(tree, "position_embedding")),
        ("embeddings.token_type_embeddings", at(tree, "segment_embedding")),
        ("embeddings.LayerNorm", at(tree, "embeddings_layer_norm")),
    ]
    for i in range(LAYERS):
        block = f"transformer_layer_{i}"
        out += [
            (f"encoder.layer.{i}.{t}", at(tree, block, k))
            for t, k in (
                ("attention.self.query", "_self_attention_layer.query"),
                ("attention.self.key", "_self_attention_layer.key"),
                ("attention.self.value", "_self_attention_layer.value"),
                ("attention.output.dense", "_self_attention_layer.attention_output"),
                ("attention.output.LayerNorm", "_self_attention_layer_norm"),
                ("intermediate.dense", "_feedforward_intermediate_dense"),
                ("output.dense", "_feedforward_output_dense"),
                ("output.LayerNorm", "_feedforward_layer_norm"),
            )
        ]
    return [*out, ("pooler.dense", at(tree, "pooled_dense"))]


def bert_inputs(ids: np.ndarray) -> dict[str, np.ndarray]:
    ones = np.ones_like(ids, dtype="int32")
    return {"token_ids": ids.astype("int32"), "segment_ids": 0 * ones, "padding_mask": ones}


def from_preset(cls: Any) -> Callable[[Any, str], Any]:
    """KerasHub's converter, as a user runs it on a local Hugging Face folder."""
    return lambda model, folder: cls.from_preset(folder)


# -- GPT-2 ------------------------------------------------------------------------------
def gpt2_torch(seed: int) -> Any:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INTERMEDIATE,
        n_positions=POSITIONS,
        activation_function="gelu_new",  # GPT2Backbone's gelu_approximate
        layer_norm_epsilon=1e-5,  # GPT2Backbone's, fixed
    )
    return randomized(transformers.GPT2Model(config), seed)


def gpt2_backbone() -> Any:
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_sequence_length=POSITIONS,
        dropout=0.0,
    )


def gpt2_pairs(tree: Any) -> list[tuple[str, Any]]:
    out = [("wte", at(tree, "token_embedding")), ("wpe", at(tree, "position_embedding"))]
    for i in range(LAYERS):
        block = f"transformer_layer_{i}"
        attention = tuple(
            at(tree, block, f"_self_attention_layer.{x}") for x in ("query", "key", "value")
        )
        out += [(f"h.{i}.attn.c_attn", attention)]  # q, k, v: the rows of the fused layer
        out += [
            (f"h.{i}.{t}", at(tree, block, k))
            for t, k in (
                ("ln_1", "_self_attention_layer_norm"),
                ("attn.c_proj", "_self_attention_layer.attention_output"),
                ("ln_2", "_feedforward_layer_norm"),
                ("mlp.c_fc", "_feedforward_intermediate_dense"),
                ("mlp.c_proj", "_feedforward_output_dense"),
            )
        ]
    return [*out, ("ln_f", at(tree, "layer_norm"))]


def token_inputs(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"token_ids": ids.astype("int32"), "padding_mask": np.ones_like(ids, dtype="int32")}


def gpt2_converted(model: Any, folder: str) -> Any:
    """KerasHub's GPT-2 converter on a backbone of the right size: its config conversion
    ignores ``n_inner`` (it builds ``intermediate_dim=4 * n_embd``), so ``from_preset``
    cannot load this model; its weight conversion can."""
    from keras_hub.src.utils.transformers import convert_gpt2
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    backbone = gpt2_backbone()
    with SafetensorLoader(folder) as loader:
        convert_gpt2.convert_weights(backbone, loader, model.config.to_dict())
    return backbone


# -- Llama ------------------------------------------------------------------------------
def llama_config() -> Any:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
    )


def llama_torch(seed: int) -> Any:
    return randomized(transformers.LlamaModel(llama_config()), seed)


def llama_backbone() -> Any:
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_query_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        rope_max_wavelength=10000.0,
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=True,  # no separate output embedding: LlamaModel has no head
    )


def llama_pairs(tree: Any) -> list[tuple[str, Any]]:
    out = [("embed_tokens", at(tree, "token_embedding"))]
    for i in range(LAYERS):
        block = f"transformer_layer_{i}"
        out += [
            (f"layers.{i}.{t}", at(tree, block, k))
            for t, k in (
                ("self_attn.q_proj", "_self_attention_layer._query_dense"),
                ("self_attn.k_proj", "_self_attention_layer._key_dense"),
                ("self_attn.v_proj", "_self_attention_layer._value_dense"),
                ("self_attn.o_proj", "_self_attention_layer._output_dense"),
                ("mlp.gate_proj", "_feedforward_gate_dense"),
                ("mlp.up_proj", "_feedforward_intermediate_dense"),
                ("mlp.down_proj", "_feedforward_output_dense"),
                ("input_layernorm", "_self_attention_layernorm"),
                ("post_attention_layernorm", "_feedforward_layernorm"),
            )
        ]
    return [*out, ("norm", at(tree, "sequence_output_layernorm"))]


def llama_converted(model: Any, folder: str) -> Any:
    """KerasHub's Llama converter reads a causal LM's checkpoint (``model.embed_tokens``...):
    the same weights saved under ``LlamaForCausalLM`` (its head tied to the embedding)."""
    lm = transformers.LlamaForCausalLM(model.config)
    lm.model.load_state_dict(model.state_dict())
    lm.save_pretrained(folder)
    return keras_hub.models.LlamaBackbone.from_preset(folder)


CASES = {
    "bert": Case(
        bert_torch,
        bert_backbone,
        bert_pairs,
        bert_inputs,
        from_preset(keras_hub.models.BertBackbone),
    ),
    "gpt2": Case(
        gpt2_torch,
        gpt2_backbone,
        gpt2_pairs,
        token_inputs,
        gpt2_converted,
        reverse_fails=MERGE_ROWS,
    ),
    "llama": Case(llama_torch, llama_backbone, llama_pairs, token_inputs, llama_converted),
}


@pytest.fixture(scope="module", params=list(CASES))
def twins(request: Any, tmp_path_factory: Any) -> tuple[Case, Any, Any]:
    """(case, the randomized PyTorch model, the backbone KerasHub's converter made of it):
    shared by the tests of one architecture, neither written to."""
    case = CASES[request.param]
    model = case.torch_model(1)
    folder = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(folder)
    return case, model, case.converted(model, folder)


def test_keras_hub_converter_reproduces_torch(twins: tuple[Case, Any, Any]) -> None:
    """The reference: KerasHub's own converter makes a twin that computes what the model does
    (so the backbone's constructor arguments express the Hugging Face config)."""
    case, model, converted = twins
    got = sequence_output(converted(case.inputs(IDS)))
    np.testing.assert_allclose(got, torch_output(model), rtol=RTOL, atol=ATOL)


def test_port_torch_to_keras_hub(twins: tuple[Case, Any, Any]) -> None:
    """ut.port with a rename= only: the backbone computes what the PyTorch model computes, and
    holds exactly the weights KerasHub's converter gives it. BERT's attention is a Keras
    MultiHeadAttention, paired by its query/key/value/attention_output parts; GPT-2's fused
    c_attn is split into KerasHub's query, key and value (a tuple in rename=)."""
    case, model, converted = twins
    backbone = case.backbone()
    report = ut.port(model, backbone, rename=rename(case.pairs(ut.wrap(backbone))))
    assert report.tensors == len(backbone.weights)
    got = sequence_output(backbone(case.inputs(IDS)))
    np.testing.assert_allclose(got, torch_output(model), rtol=RTOL, atol=ATOL)
    assert [v.path for v in backbone.weights] == [v.path for v in converted.weights]
    for mine, theirs in zip(backbone.weights, converted.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(mine.value),
            keras.ops.convert_to_numpy(theirs.value),
            err_msg=mine.path,
        )


def test_port_keras_hub_to_torch(twins: tuple[Case, Any, Any]) -> None:
    """The reverse port, the same rename= turned around: KerasHub's converted backbone into a
    PyTorch model of other values, which then computes what the backbone computes and holds
    the original model's weights. A port ut.port cannot make yet (GPT-2's: three layers into
    one) refuses and writes nothing."""
    case, model, converted = twins
    target = case.torch_model(2)
    names = rename(case.pairs(ut.wrap(converted)), reverse=True)
    if case.reverse_fails:
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(PortError, match=r"c_attn"):
            ut.port(converted, target, rename=names)
        assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
        return
    ut.port(converted, target, rename=names)
    expected = sequence_output(converted(case.inputs(IDS)))
    np.testing.assert_allclose(torch_output(target), expected, rtol=RTOL, atol=ATOL)
    original = model.state_dict()
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), original[key].numpy(), err_msg=key)


def test_an_einsum_dense_that_is_no_dense_map_has_no_kind() -> None:
    """Fail closed: an EinsumDense whose equation is no dense map (a weight per head, an axis
    summed away) is a type of no kind, and ports only onto its own type."""
    per_head = keras.layers.EinsumDense("abhd,hde->abhe", output_shape=(None, 4, 8))
    per_head.build((None, 3, 4, 8))
    dense = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de")
    dense.build((None, 3, 32))
    assert ut.wrap(per_head).kind is None
    assert ut.wrap(dense).kind == "dense"
    assert ut.wrap(dense)["weight"].shape == (32, 32)
    with pytest.raises(PortError):
        ut.port(torch.nn.Linear(8, 32), per_head)


# -- EinsumDense read as a dense layer: the rules from the equation alone -------------------
DENSE_MAPS = [
    # (equation, bias axes, input shape, kernel shape): KerasHub's and Keras's own projections
    ("abc,cde->abde", "de", (2, 3, 6), (6, 4, 5)),  # MultiHeadAttention's query
    ("abcd,cde->abe", "e", (2, 3, 4, 5), (4, 5, 6)),  # its output projection
    ("bqm,muh->bquh", None, (2, 3, 6), (6, 4, 5)),  # Llama's query
    ("bquh,uhm->bqm", None, (2, 3, 4, 5), (4, 5, 6)),  # Llama's output
    ("ab,bc->ac", "c", (2, 6), (6, 5)),  # a Dense
    ("...b,bc->...c", "c", (2, 3, 6), (6, 5)),
    ("ab,cb->ac", "c", (2, 6), (5, 6)),  # the kernel stored (out, in)
    ("abc,dce->abde", "ed", (2, 3, 6), (4, 6, 5)),  # output axes in another order in the kernel
]


@pytest.mark.parametrize(("equation", "bias_axes", "x_shape", "k_shape"), DENSE_MAPS)
def test_an_einsum_dense_map_is_torch_linear_on_the_flattened_axes(
    equation: str, bias_axes: str | None, x_shape: tuple, k_shape: tuple
) -> None:
    """The canonical weight is the (out, in) matrix of PyTorch's Linear on the input's trailing
    axes flattened, the output's unflattened (numpy's einsum as the reference), both ways."""
    from unitree.layouts import einsum_dense

    rules = einsum_dense(equation, bias_axes)
    assert rules is not None
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal(x_shape), rng.standard_normal(k_shape)
    y = np.einsum(equation, x, kernel)
    rule = rules["kernel"]
    w = rule.transform.to_canonical(kernel)
    assert rule.canonical == "weight" and w.shape == rule.transform.shape(k_shape)
    n_in = w.shape[1]
    flat = x.reshape(-1, n_in) @ w.T  # PyTorch's Linear on the flattened trailing axes
    np.testing.assert_allclose(flat.reshape(y.shape), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(rule.transform.to_native(w, k_shape), kernel)
    if bias_axes:
        b_shape = y.shape[len(y.shape) - len(bias_axes) :]
        b = rng.standard_normal(b_shape)
        t = rules["bias"].transform
        canonical = b if t is None else t.to_canonical(b)
        assert canonical.shape == (w.shape[0],)
        np.testing.assert_allclose(
            (flat + canonical).reshape(y.shape), y + b, rtol=1e-12, atol=1e-12
        )
        np.testing.assert_array_equal(b if t is None else t.to_native(canonical, b_shape), b)


@pytest.mark.parametrize(
    ("equation", "bias_axes"),
    [
        ("abhd,hde->abhe", None),  # a weight per head: h in all three terms
        ("abc,cd->ad", None),  # b summed away without a weight
        ("ab,bc->ca", None),  # the batch axis moved
        ("abc,bcd->abd", None),  # b both kept and contracted
        ("ab...,bc->ac...", None),  # contracted axes not the last ones
        ("aab,bc->aac", None),  # a repeated axis: a diagonal
        ("abc,cde->abde", "e"),  # a bias over some output axes only
        ("abc,cde->abde", "bde"),  # a bias per position
        ("abc,cde->abde", "dde"),
        ("ab,bc->ac,", None),
    ],
)
def test_an_einsum_that_is_no_dense_map_has_no_rules(equation: str, bias_axes: str | None) -> None:
    from unitree.layouts import einsum_dense

    assert einsum_dense(equation, bias_axes) is None


def test_an_einsum_dense_reading_a_channels_last_flatten_is_ported_both_ways() -> None:
    """The flatten permutation composes with an EinsumDense's own layout: a conv's output,
    flattened channels-last, into a dense map with a 2-axis output (PyTorch: Linear, then
    Unflatten)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype("float32")

    def twin() -> Any:
        return randomized(
            torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3),
                torch.nn.Flatten(),
                torch.nn.Linear(64, 10),
                torch.nn.Unflatten(1, (2, 5)),
            ),
            3,
        )

    source = twin()
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.Flatten(),
            keras.layers.EinsumDense("ab,bcd->acd", output_shape=(2, 5), bias_axes="cd"),
        ]
    )
    ut.port(source, model)
    with torch.no_grad():
        expected = source(torch.tensor(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    back = twin()
    ut.port(model, back)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.tensor(x)).numpy(), expected, rtol=RTOL, atol=ATOL)


def test_an_einsum_dense_whose_output_a_conv_reads_is_unknown_until_checked() -> None:
    """An EinsumDense whose output is (H, W, C), read by a conv: PyTorch's twin unflattens
    to (C, H, W), so the layout is refused under strict, and the check finds it."""
    source = randomized(
        torch.nn.Sequential(
            torch.nn.Linear(7, 48), torch.nn.Unflatten(1, (3, 4, 4)), torch.nn.Conv2d(3, 2, 3)
        ),
        4,
    )
    model = keras.Sequential(
        [
            keras.Input((7,)),
            keras.layers.EinsumDense("ab,bhwc->ahwc", output_shape=(4, 4, 3), bias_axes="hwc"),
            keras.layers.Conv2D(2, 3),
        ]
    )
    x = np.random.default_rng(1).standard_normal((2, 7)).astype("float32")
    with pytest.raises(PortError, match="unknown"):
        ut.port(source, model)

    def channels_first(y: Any) -> np.ndarray:
        return keras.ops.convert_to_numpy(y).transpose(0, 3, 1, 2)

    report = ut.port(source, model, check=ut.Check(x, dst_outputs=channels_first))
    assert any("channels_last, the layout whose outputs match" in n for n in report.notes)
    with torch.no_grad():
        expected = source(torch.tensor(x)).numpy()
    np.testing.assert_allclose(channels_first(model(x)), expected, rtol=RTOL, atol=ATOL)
