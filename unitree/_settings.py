"""Layer settings compared by meaning, for the layer at hand, failing closed.

A setting is what changes a layer's outputs without being a parameter: a conv's padding, a
norm's epsilon, attention's heads. Each adapter's ``settings(module)`` reports them in one
vocabulary (docs: :data:`VOCABULARY`, and :meth:`unitree._adapter.Adapter.settings`); here
two layers' reports are compared:

- by meaning, not spelling: ``"same"`` padding at stride 1 is the (before, after) pair it
  pads, so a Keras ``Conv2D(padding="same")`` equals a torch ``Conv2d(padding=1)`` of kernel
  3; a padding mode is no difference where nothing is padded; a dilation is no difference
  along an axis of kernel size 1; epsilons and momenta equal up to float rounding are equal;
- failing closed: a setting of a kind's vocabulary that one side does not report (a linen
  submodule made by a ``@nn.compact`` method has no definition to read) is *unknown*,
  never equal; the caller refuses it under ``strict`` unless the port is proven by outputs.

Nothing here imports a framework: :func:`compare`, :func:`one_sided_notes` and
:func:`fold_padding` (a zero-padding step before a conv, as its padding) are pure functions
of the adapters' reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .layouts import SAME_KIND

__all__ = ["INFORMATION", "ONE_SIDED", "VOCABULARY", "compare", "fold_padding", "one_sided_notes"]

_CONV = ("padding", "padding_mode", "stride", "dilation", "groups", "input_dilation", "kernel_mask")
_NORM = ("eps", "scale", "center")
_RECURRENT = ("activation", "recurrent_activation", "reverse", "stateful")

# Layer kind -> the settings that change its outputs and that its leaves do not show. Every
# adapter reports each of them for every layer of a kind it knows; what it cannot report is
# unknown (see compare). What each value means, in every framework's terms:
#
# conv, depthwise_conv, conv_transpose:
#   padding: "same" (TF-style: the total reach d*(k-1) split with the extra one after, by the
#     input size at stride > 1), "same_lower" (lax's, the extra one before), or
#     ((before, after), ...) per spatial axis; for conv_transpose, PyTorch's ConvTranspose
#     padding (cropped on both sides), or "same" where PyTorch cannot express Keras's
#   padding_mode: what the padding holds, PyTorch's names: "zeros", "reflect" (mirrored
#     without the edge: flax's 'REFLECT'), "replicate" (the edge repeated), "circular"
#     (wrapped: flax's 'CIRCULAR')
#   stride, dilation (of the kernel), input_dilation (flax's lhs dilation): per spatial axis
#   groups: int (a depthwise conv: one group per input channel)
#   output_padding (conv_transpose): per spatial axis, added after, as PyTorch's
#   kernel_mask: bool, a fixed mask multiplies the kernel (flax's ``mask=``)
# dense: nothing beyond its leaves (a bias shows as a leaf); Gluon's ``flatten`` is in
#   ONE_SIDED
# embedding:
#   max_norm: None, or (max_norm, norm_type): PyTorch renormalizes the rows it looks up
#   mask_zero: bool, Keras's: index 0 masks the timesteps of the layers downstream
# layer_norm, batch_norm, group_norm:
#   eps: float (compared up to float rounding)
#   scale, center: bool, the stored scale (weight, gamma) multiplies / the stored shift
#     (bias, beta) is added. False where the leaf is absent; also where it is present but
#     ignored (Gluon's BatchNorm(scale=False) keeps gamma and normalizes with 1; Keras's
#     LayerNormalization(rms_scaling=True) keeps no beta). An absent leaf also shows in
#     the shapes; a present but ignored one only here.
#   axes (layer_norm): the normalized axes, negative (counted from the last): (-1,) for
#     PyTorch's LayerNorm(C); a spelling from the front needs the input's rank: unreported
#   rms_scaling (layer_norm): bool, Keras's (scales by the variance, no centering)
#   momentum (batch_norm): PyTorch's, the weight of the new batch (None: cumulative). It
#     changes no output in inference or in a training step's forward pass, only the
#     running statistics training leaves behind; it is compared all the same, because a
#     ported model is often trained on, and two models whose statistics then drift apart
#     do not compute one function (set it on the destination to port).
#   groups (group_norm): int
# attention:
#   num_heads: int (the fused projections' shapes do not show it)
#   add_zero_attn: bool, PyTorch's
#   attention_axes: None (over every axis between batch and features: the sequence), or
#     Keras's explicit axes
#   attention_fn: "dot_product_attention", or the name of what replaces it (flax's
#     ``attention_fn``, a subclass that overrides the computation)
#   gated: bool, Keras's ``use_gate`` (a sigmoid gate on the values)
# lstm, gru:
#   activation, recurrent_activation: names ("tanh", "sigmoid")
#   reset_after (gru): bool, the reset gate multiplies (W_hn h + b_hn), as PyTorch's
#   reverse: False; True (processed from the end, outputs in that order: Keras's
#     go_backwards, flax's reverse=True); "keep_order" (flax: outputs put back in order)
#   stateful: bool, Keras's: the last state of one call starts the next
VOCABULARY: dict[str, tuple[str, ...]] = {
    "dense": (),
    "conv": _CONV,
    "depthwise_conv": _CONV,
    "conv_transpose": (*_CONV, "output_padding"),
    "embedding": ("max_norm", "mask_zero"),
    "layer_norm": (*_NORM, "axes", "rms_scaling"),
    "batch_norm": (*_NORM, "momentum"),
    "group_norm": (*_NORM, "groups"),
    "attention": ("num_heads", "add_zero_attn", "attention_axes", "attention_fn", "gated"),
    "lstm": _RECURRENT,
    "gru": (*_RECURRENT, "reset_after"),
}

# What adapters report for the core's other uses, never compared: ``data_format`` (a Keras
# conv that reads channels first; the flatten rule reads it: the kernel is the same either way).
INFORMATION = frozenset({"data_format"})

# Settings only one framework has: the value the others behave as, and what differs otherwise
# (a note, not a difference: a model can get the same function another way).
ONE_SIDED: dict[str, tuple[Any, str]] = {
    "flatten": (
        False,
        "it flattens an N-d input itself: the other framework's layer acts on the last axis, so "
        "the outputs agree when that model flattens first (a Flatten layer) or the input is 2-d",
    )
}

_FLOATS = frozenset({"eps", "momentum"})


def compare(
    kind: str | None,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    kernel: tuple[int, ...] | None,
    sides: tuple[str, str],
) -> tuple[list[str], list[str]]:
    """Compare two layers' settings by meaning.

    Args:
        kind: the pair's layer kind ("conv", "layer_norm"...; ``layouts.SAME_KIND`` maps
            "depthwise_conv" to "conv"), or None for a type the tables do not know.
        a, b: the two adapters' ``settings()`` of the pair, in :data:`VOCABULARY`'s terms.
        kernel: the spatial kernel size (canonical weight (out, in, *k): ``k``), which
            resolves "same" padding; None for a layer with none (or not known).
        sides: how messages name the two layers, e.g. ("torch layer 0 (Conv2d)",
            "flax layer 0 (Conv)").

    Returns:
        ``(differences, unknown)``: one message per setting, each naming the setting and
        both values. ``differences``: settings both report that mean different things;
        ``unknown``: settings of the kind's vocabulary that one side or both do not report
        (never taken as equal: the caller refuses them under ``strict`` unless the port is
        proven by outputs). Settings outside the vocabulary that both report are compared
        by equality (two layers of one type the tables do not know); :data:`INFORMATION`
        and one-sided ones (:func:`one_sided_notes`) are not compared.
    """
    vocabulary = VOCABULARY.get(SAME_KIND.get(kind, kind), ()) if kind else ()
    differences: list[str] = []
    unknown: list[str] = []
    for name in vocabulary:
        if name not in a or name not in b:
            unknown.append(_unknown(name, a, b, sides))
            continue
        why = _differs(name, a, b, kernel, kind)
        if why is not None:
            differences.append(_message(name, a[name], b[name], sides) + why)
    for name in sorted(a.keys() & b.keys() - set(vocabulary) - INFORMATION):
        if not _same_value(name, a[name], b[name]):
            differences.append(_message(name, a[name], b[name], sides))
    return differences, unknown


def one_sided_notes(
    a: Mapping[str, Any], b: Mapping[str, Any], sides: tuple[str, str]
) -> list[str]:
    """Notes on the :data:`ONE_SIDED` settings one layer has with a value the other framework
    does not behave as (Gluon's ``Dense(flatten=True)``): "the gluon layer 0 (Dense) has
    flatten=True: it flattens...". The other layer does not report the setting at all."""
    out = []
    for one, other, side in ((a, b, sides[0]), (b, a, sides[1])):
        for name, value in one.items():
            if name in ONE_SIDED and name not in other and value != ONE_SIDED[name][0]:
                out.append(f"the {side} has {name}={value!r}: {ONE_SIDED[name][1]}")
    return out


def fold_padding(
    settings: Mapping[str, Any], pads: Sequence[tuple[int, int]], kernel: tuple[int, ...] | None
) -> dict[str, Any]:
    """A conv's settings with the zero padding of a parameterless step right before it (Keras's
    ``ZeroPadding2D``, a ``jnp.pad``) taken in: ``ZeroPadding2D(1)`` then ``Conv2D(padding=
    "valid")`` is PyTorch's ``Conv2d(padding=1)`` (the usual Keras spelling of it: Keras's
    "same" at stride 2 is not). ``pads``: (before, after) per spatial axis.

    Where the sum has no one spelling (the conv pads otherwise than with zeros, or by the input
    size: "same" at a stride above 1), the padding is left out: unknown, not equal.
    """
    out = dict(settings)
    if not any(any(p) for p in pads):
        return out
    own = _padding(settings.get("padding"), settings, kernel)
    if (
        settings.get("padding_mode") != "zeros"
        or not isinstance(own, tuple)
        or _input_sized(own)
        or len(own) != len(pads)
    ):
        out.pop("padding", None)
        return out
    out["padding"] = tuple((a + c, b + d) for (a, b), (c, d) in zip(own, pads))
    return out


# -- messages ----------------------------------------------------------------------------------
def _message(name: str, x: Any, y: Any, sides: tuple[str, str]) -> str:
    return f"{name} is {x!r} in the {sides[0]}, {y!r} in the {sides[1]}"


def _unknown(name: str, a: Mapping[str, Any], b: Mapping[str, Any], sides: tuple[str, str]) -> str:
    if name not in a and name not in b:
        return f"{name}: neither the {sides[0]} nor the {sides[1]} reports it"
    missing, known, value = (
        (sides[0], sides[1], b[name]) if name not in a else (sides[1], sides[0], a[name])
    )
    return f"{name} is {value!r} in the {known}; the {missing} does not report it"


# -- meaning --------------------------------------------------------------------------------
def _differs(
    name: str,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    kernel: tuple[int, ...] | None,
    kind: str | None,
) -> str | None:
    """None where the two values of ``name`` mean the same for this layer; otherwise what
    follows the message ("" or a few words of why)."""
    x, y = a[name], b[name]
    if name == "padding":
        if kind == "conv_transpose":  # PyTorch's terms already; "same" only where it has none
            return None if _pairs(x, kernel) == _pairs(y, kernel) else ""
        rx, ry = _padding(x, a, kernel), _padding(y, b, kernel)
        if rx == ry:
            return None
        if _input_sized(rx) or _input_sized(ry):
            return (
                " ('same' at a stride above 1 pads by the input size, TF-style: no fixed "
                "padding equals it on every input)"
            )
        shown = (rx, ry) != (x, y)
        return f" (that is {rx!r} against {ry!r}, (before, after) per axis)" if shown else ""
    if name == "padding_mode":
        if x == y:
            return None
        pads = [_padding(side["padding"], side, kernel) for side in (a, b) if "padding" in side]
        if len(pads) == 2 and all(_no_padding(p) for p in pads):
            return None  # nothing is padded: what the padding would hold does not matter
        return ""
    if name in ("stride", "dilation", "input_dilation", "output_padding"):
        tx, ty = _per_axis(x, kernel), _per_axis(y, kernel)
        if name == "dilation" and kernel and tx and ty and len(tx) == len(ty) == len(kernel):
            # a kernel of size 1 along an axis reaches the same pixel whatever its dilation
            tx = tuple(d if k > 1 else 1 for d, k in zip(tx, kernel))
            ty = tuple(d if k > 1 else 1 for d, k in zip(ty, kernel))
        return None if tx == ty else ""
    return None if _same_value(name, x, y) else ""


def _same_value(name: str, x: Any, y: Any) -> bool:
    """Equal values; floats (eps, momentum) up to rounding; a bool only equals a bool."""
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if name in _FLOATS and isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same_value(name, u, v) for u, v in zip(x, y))
    return bool(x == y)


def _per_axis(value: Any, kernel: tuple[int, ...] | None) -> tuple[Any, ...] | None:
    """A per-axis setting as a tuple: an int is the same along every axis of the kernel."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * (len(kernel) if kernel else 1)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return None


def _pairs(value: Any, kernel: tuple[int, ...] | None) -> Any:
    """Explicit padding as ((before, after), ...): "valid", an int, or one int per axis too."""
    if isinstance(value, str):
        return ((0, 0),) * len(kernel) if value == "valid" and kernel else value
    if isinstance(value, int) and not isinstance(value, bool):
        return ((value, value),) * (len(kernel) if kernel else 1)
    if isinstance(value, (list, tuple)):
        return tuple(
            (int(p), int(p)) if isinstance(p, int) else tuple(int(q) for q in p) for p in value
        )
    return value


def _padding(value: Any, side: Mapping[str, Any], kernel: tuple[int, ...] | None) -> Any:
    """A conv's padding resolved for the layer at hand: ((before, after), ...) per axis, or
    per axis where it depends on the input size, ("same", stride, reach).

    'same' pads the dilated kernel's reach r = d * (k - 1): at stride 1, r // 2 before and
    the rest after (TF, Keras, Flax and PyTorch alike; 'same_lower', lax's, the other way);
    at stride s > 1, TF-style, by the input size n: max((ceil(n/s) - 1) * s + r + 1 - n, 0)
    in all, split the same way: the same as another 'same' at that stride only. A reach of
    0 (a kernel of 1) pads nothing at any stride.
    """
    value = _pairs(value, kernel)
    if value not in ("same", "same_lower") or not kernel:
        return value
    n = len(kernel)
    strides = _per_axis(side.get("stride"), kernel)  # unreported: nothing to resolve it by
    dilations = _per_axis(side.get("dilation"), kernel)
    if strides is None or dilations is None or len(strides) != n or len(dilations) != n:
        return value
    out: list[Any] = []
    for k, s, d in zip(kernel, strides, dilations):
        reach = d * (k - 1)
        if reach == 0:
            out.append((0, 0))
        elif s == 1:
            small, big = reach // 2, reach - reach // 2
            out.append((small, big) if value == "same" else (big, small))
        else:
            out.append((value, s, reach))
    return tuple(out)


def _input_sized(resolved: Any) -> bool:
    return isinstance(resolved, tuple) and any(
        isinstance(p, tuple) and p and isinstance(p[0], str) for p in resolved
    )


def _no_padding(resolved: Any) -> bool:
    return (
        isinstance(resolved, tuple)
        and not _input_sized(resolved)
        and all(isinstance(p, Sequence) and not any(p) for p in resolved)
    )
