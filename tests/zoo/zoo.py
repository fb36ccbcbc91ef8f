"""The zoo: every architecture transformers ships with both a PyTorch and a Flax class.

The pairs are enumerated from transformers' own auto mappings (``FLAX_MODEL_MAPPING_NAMES``
and the head mappings beside it), never from a list written here. Each model is built from
its config class with every size made small (nothing is downloaded), every source value is
randomized (so a dropped or swapped tensor cannot hide behind ones and zeros), and outputs
are compared through the models' own forward functions.

What is written here per model family is test input only: the config sizes, which inputs a
model takes. unitree itself has no per-model code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

# Small sizes, set on every config attribute of this name that exists. transformers maps the
# standard names (hidden_size, num_attention_heads...) onto each family's own through the
# config's attribute_map, so the family names are listed only where no map exists.
SMALL: dict[str, Any] = {
    "vocab_size": 99,
    "hidden_size": 32,
    "pooler_output_size": 32,  # ViT: set from hidden_size when the config was made
    "embedding_size": 16,  # ALBERT, ELECTRA: factorized embeddings
    "num_hidden_layers": 2,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_attention_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 2,  # Llama, Mistral, Gemma: grouped-query attention
    "intermediate_size": 37,
    "ffn_dim": 37,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "d_ff": 37,
    "d_kv": 8,
    "head_dim": 8,
    "hidden_dim": 37,  # DistilBERT's feed-forward
    "word_embed_proj_dim": 32,  # OPT
    "max_position_embeddings": 64,
    "n_positions": 64,
    "max_target_positions": 64,
    "max_source_positions": 8,  # Whisper: input_features hold 2x this many frames
    "num_mel_bins": 16,
    "rotary_dim": 4,  # GPT-J
    "window_size": 8,  # GPT-Neo's local attention
    "attention_window": 8,
    "local_radius": 2,  # LongT5
    "block_size": 4,  # BigBird
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_sizes": [16, 24],  # ResNet, RegNet
    "depths": [1, 1],
    "num_feat_extract_layers": 2,  # Wav2Vec2: conv_dim, conv_stride, conv_kernel have 2
    "conv_dim": (16, 16),  # Wav2Vec2's feature encoder
    "conv_stride": (4, 2),
    "conv_kernel": (8, 4),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "tdnn_dim": (16, 16),
    "xvector_output_dim": 16,
    "classifier_proj_size": 16,
    "projection_dim": 16,  # CLIP
    "layerdrop": 0.0,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "pad_token_id": 1,  # within the small vocabulary (Marian pads with 58100)
    "decoder_start_token_id": 2,
}
# Settings that are not sizes but would make a comparison meaningless or impossible.
FIXED: dict[str, dict[str, Any]] = {
    "big_bird": {"attention_type": "original_full"},  # block-sparse needs long sequences
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "regnet": {"groups_width": 8, "hidden_sizes": [16, 24]},
    "wav2vec2": {"do_stable_layer_norm": True, "feat_extract_norm": "layer"},  # Flax: only "layer"
    "roformer": {"embedding_size": 32},  # Flax RoFormer has no embedding projection
}
BATCH, LENGTH = 2, 7


@dataclass(frozen=True)
class Pair:
    """One architecture: its model type and the class names on each side."""

    model_type: str
    torch_name: str
    flax_name: str
    head: str  # the mapping it came from: "base", "causal-lm"...

    @property
    def id(self) -> str:
        return f"{self.model_type}/{self.torch_name}"


def pairs() -> list[Pair]:
    """Every (torch class, Flax class) pair of the installed transformers, by its auto mappings:
    the base models, and the language-model heads, whose ties (BART's and GPT-2's heads, T5's
    shared embedding) are ported too. A Flax class is listed once (gpt-sw3 is GPT-2's)."""
    from transformers.models.auto import modeling_auto, modeling_flax_auto

    heads = {
        "MODEL_MAPPING_NAMES": "base",
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "causal-lm",
        "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "seq2seq-lm",
    }
    found: list[Pair] = []
    seen: set[str] = set()
    for mapping, head in heads.items():
        flax_names = getattr(modeling_flax_auto, "FLAX_" + mapping)
        torch_names = getattr(modeling_auto, mapping)
        for model_type, flax_name in flax_names.items():
            torch_name = torch_names.get(model_type)
            if isinstance(torch_name, (list, tuple)):
                torch_name = torch_name[0]
            if torch_name is None or flax_name in seen:
                continue
            seen.add(flax_name)
            found.append(Pair(model_type, torch_name, flax_name, head))
    return found


def config(model_type: str) -> Any:
    """The model type's config with every size made small, sub-configs included."""
    import transformers
    from transformers import AutoConfig

    if model_type == "vision-text-dual-encoder":  # a composite of any vision and text model
        return transformers.VisionTextDualEncoderConfig.from_vision_text_configs(
            config("vit"), config("bert"), projection_dim=16
        )
    if model_type == "encoder-decoder":  # a composite of any encoder and decoder
        decoder = config("bert")
        decoder.is_decoder = decoder.add_cross_attention = True
        return transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
            config("bert"), decoder
        )
    cfg = AutoConfig.for_model(model_type)
    _shrink(cfg, model_type)
    return cfg


def _shrink(cfg: Any, model_type: str) -> None:
    for name, value in {**SMALL, **FIXED.get(model_type, {})}.items():
        if hasattr(cfg, name):
            setattr(cfg, name, value)
    for name in ("text_config", "vision_config", "encoder", "decoder"):
        sub = getattr(cfg, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            _shrink(sub, getattr(sub, "model_type", model_type))
    for name in ("dropout", "attention_dropout", "hidden_dropout_prob", "activation_dropout"):
        if hasattr(cfg, name):
            setattr(cfg, name, 0.0)


def _clip_old_keywords() -> None:
    """transformers 4.57's Flax T5 family calls ``jnp.clip(x, a_max=...)``, keywords jax 0.10
    removed (``min``/``max`` now): the test gives them back, so T5 and its ties are in the zoo."""
    import jax.numpy as jnp

    clip = jnp.clip
    if getattr(clip, "old_keywords", False):
        return

    def compatible(x: Any, min: Any = None, max: Any = None, a_min: Any = None, a_max: Any = None):
        return clip(x, min if a_min is None else a_min, max if a_max is None else a_max)

    compatible.old_keywords = True  # type: ignore[attr-defined]
    jnp.clip = compatible


def build(pair: Pair, seed: int = 0) -> tuple[Any, Any]:
    """(torch model in eval mode, Flax model), both from the same small config, values as their
    own initializers drew them."""
    import jax
    import torch
    import transformers

    _clip_old_keywords()
    cfg = config(pair.model_type)
    torch.manual_seed(seed)
    torch_model = getattr(transformers, pair.torch_name)(cfg).eval()
    flax_model = getattr(transformers, pair.flax_name)(cfg, seed=seed, _do_init=True)
    del jax
    return torch_model, flax_model


def randomize_torch(model: Any, seed: int) -> None:
    """Every floating tensor of the state dict (parameters and persistent buffers) moved off
    its initial value: ones and zeros (norm scales, biases) become distinct values, so no swap
    hides. Non-persistent buffers (rotary ``inv_freq``) are derived by the model, as in Flax."""
    import torch

    g = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if t.is_floating_point() and id(t) not in seen:  # a tied tensor once
                seen.add(id(t))
                t.add_(0.05 * torch.randn(t.shape, generator=g, dtype=t.dtype))


def randomize_flax(model: Any, seed: int) -> None:
    """The same for a Flax model's params (and batch statistics, where it keeps them)."""
    import jax

    rng = np.random.default_rng(seed)

    def moved(x: Any) -> Any:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            return x
        return jax.numpy.asarray(x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype))

    model.params = jax.tree_util.tree_map(moved, model.params)


def inputs(pair: Pair, torch_model: Any, seed: int = 1) -> dict[str, np.ndarray]:
    """The inputs the model's forward takes, as numpy: token ids, pixels, audio or features."""
    cfg = torch_model.config
    rng = np.random.default_rng(seed)
    params = inspect.signature(torch_model.forward).parameters
    out: dict[str, np.ndarray] = {}

    def ids(vocab: int) -> np.ndarray:
        return rng.integers(3, vocab, size=(BATCH, LENGTH)).astype(np.int64)

    text = getattr(cfg, "text_config", getattr(cfg, "encoder", cfg))
    vision = getattr(cfg, "vision_config", cfg)
    if "input_ids" in params:
        out["input_ids"] = ids(text.vocab_size)
    if "pixel_values" in params:
        size = getattr(vision, "image_size", 32)
        out["pixel_values"] = rng.standard_normal((BATCH, vision.num_channels, size, size))
    if "input_values" in params:
        out["input_values"] = rng.standard_normal((BATCH, 400))
    if "input_features" in params:
        out["input_features"] = rng.standard_normal(
            (BATCH, cfg.num_mel_bins, 2 * cfg.max_source_positions)
        )
    if "decoder_input_ids" in params and getattr(cfg, "is_encoder_decoder", False):
        out["decoder_input_ids"] = ids(text.vocab_size)
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in out.items()}


def run_torch(model: Any, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in x.items()})
    return _arrays(out, lambda t: t.detach().numpy())


def run_flax(model: Any, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return _arrays(model(**x, params=model.params), np.asarray)


def _arrays(out: Any, to_numpy: Any) -> dict[str, np.ndarray]:
    """Each array of a model output by its name; nested outputs (CLIP's) by dotted names."""
    found: dict[str, np.ndarray] = {}
    for key, value in out.items():
        if hasattr(value, "items"):
            found.update({f"{key}.{k}": v for k, v in _arrays(value, to_numpy).items()})
        elif hasattr(value, "shape"):
            found[key] = np.asarray(to_numpy(value), dtype=np.float64)
    return found


def difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    """The largest absolute difference over the outputs both models give, and its name."""
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    if not common:
        raise AssertionError(f"no output in common: {sorted(a)} against {sorted(b)}")
    worst = max(common, key=lambda k: float(np.max(np.abs(a[k] - b[k]), initial=0.0)))
    return float(np.max(np.abs(a[worst] - b[worst]), initial=0.0)), worst
