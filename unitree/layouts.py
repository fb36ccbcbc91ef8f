"""Canonical leaf names and layouts: the tables every backend is read through.

Canonical means what PyTorch holds for the same layer (docs/architecture.md, "The
canonical tables"): a 4 -> 8 dense layer has ``weight`` of shape (8, 4). The tables:

- ``LAYOUTS``: per (backend, layer kind), one ``Rule`` per native leaf: its
  canonical name and the transform of its values (``Permute`` axes, or a
  reshape: ``Depthwise``, ``Flipped``; the core adds ``Flattened`` to a dense
  layer fed by a flattened channels-last conv). The order of a kind's rules
  is the canonical leaf order (weight before bias).
- ``GENERATED``: per (backend, layer kind), a function that makes such rules from a
  layer's leaf names, where their number varies (Gluon's RNN layers, one set per layer).
- ``CODECS``: per (backend, layer kind), a ``Codec`` for the layers whose
  canonical leaves are no single native leaf (Keras's one LSTM bias, Flax's
  per-gate cells, attention's separate projections): it computes them from
  the layer's whole subtree, both ways.

The core's decisions for one layer are pure functions here too: ``plan`` (its leaves in
canonical order, named and ruled) and ``flatten`` (the flatten rule, layer by layer).

A layer kind or leaf in none of the tables keeps its native name and layout. Every
rule is proven against each framework's own outputs in tests/<framework>/
test_port.py and against numpy references of the formulas in tests/core.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, NamedTuple

import numpy as np

from ._errors import StateDictError

Perm = Callable[[int], tuple[int, ...]]


def channels_last_kernel(ndim: int) -> tuple[int, ...]:
    """Axes of a (*k, in, out) kernel in (out, in, *k) order: dense (in, out) -> (out, in) too."""
    return (ndim - 1, ndim - 2, *range(ndim - 2))


class Permute:
    """Axes reordered, given their number: canonical values are views of the native ones."""

    view = True

    def __init__(self, axes: Perm) -> None:
        self.axes = axes

    def _perm(self, ndim: int) -> tuple[int, ...] | None:
        perm = self.axes(ndim)
        return None if perm == tuple(range(ndim)) else perm

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        perm = self._perm(len(shape))
        return tuple(shape[i] for i in perm) if perm else tuple(shape)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        perm = self._perm(a.ndim)
        return a.transpose(perm) if perm else a

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        perm = self._perm(a.ndim)
        return a.transpose(inverse(perm)) if perm else a


class Flattened:
    """The (in, out) kernel of a dense layer fed by the flatten of a channels-last conv output.

    Keras and Flax flatten (H, W, C) with channels fastest; PyTorch flattens
    (C, H, W). The canonical weight is what PyTorch's Linear after its
    ``Flatten`` holds: (out, C*H*W), so the input axis is permuted, not just
    transposed. Only the number of channels matters, not the spatial shape.
    """

    view = False

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[1], shape[0])

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        n, out = a.shape
        c = self.channels
        return a.reshape(n // c, c, out).transpose(2, 1, 0).reshape(out, n)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(out, c, n // c).transpose(2, 1, 0).reshape(n, out)


class FlattenedVector:
    """A per-feature vector (norm scale, shift, running statistics) of a norm layer over the
    flatten of a channels-last conv output: its features come channels fastest, PyTorch's
    channels slowest, as for :class:`Flattened`'s input axis."""

    view = False

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, self.channels).T.reshape(-1)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(self.channels, -1).T.reshape(-1)


class Codec:
    """The canonical leaves of a layer computed from its whole subtree (see ``unitree._canon``).

    ``to_canonical`` takes {path relative to the layer: value} (as the tree
    shows them: inner dense layers already canonical) and returns {canonical
    leaf: value}, in canonical order; ``to_native`` goes back, given the shapes
    of the relative paths. ``note`` says what a port through it changes.
    """

    def __init__(
        self,
        to_canonical: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        to_native: Callable[
            [dict[str, np.ndarray], dict[str, tuple[int, ...]]], dict[str, np.ndarray]
        ],
        note: str = "",
    ) -> None:
        self.to_canonical = to_canonical
        self.to_native = to_native
        self.note = note

    def shapes(self, native: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """{canonical leaf: shape}, computed on zeros that take no memory."""
        zeros = {
            rel: np.broadcast_to(np.zeros((), np.float32), shape) for rel, shape in native.items()
        }
        return {leaf: a.shape for leaf, a in self.to_canonical(zeros).items()}


def _same(native: dict[str, np.ndarray], *rest: Any) -> dict[str, np.ndarray]:
    return dict(native)


# PyTorch's own attention holds out_proj in a child Linear: one layer all the same.
_AS_ONE_LAYER = Codec(_same, _same)


def _attention(q: str, k: str, v: str, o: str) -> Codec:
    """Attention kept as four projections with (E, heads, head_dim) kernels (Keras, Flax) as
    PyTorch's fused ``in_proj_weight`` (3E, E) rows q, k, v, and ``out_proj`` (E, E)."""

    def to_canonical(n: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        e = n[f"{q}.kernel"].shape[0]
        out = {
            "in_proj_weight": np.concatenate([n[f"{x}.kernel"].reshape(e, -1).T for x in (q, k, v)])
        }
        if f"{q}.bias" in n:
            out["in_proj_bias"] = np.concatenate([n[f"{x}.bias"].reshape(-1) for x in (q, k, v)])
        kernel = n[f"{o}.kernel"]
        out["out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
        if f"{o}.bias" in n:
            out["out_proj.bias"] = n[f"{o}.bias"]
        return out

    def to_native(
        c: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        out = {}
        rows = np.cumsum([0] + [math.prod(shapes[f"{x}.kernel"][1:]) for x in (q, k, v)])
        for i, x in enumerate((q, k, v)):
            part = slice(rows[i], rows[i + 1])
            out[f"{x}.kernel"] = c["in_proj_weight"][part].T.reshape(shapes[f"{x}.kernel"])
            if f"{x}.bias" in shapes:
                out[f"{x}.bias"] = c["in_proj_bias"][part].reshape(shapes[f"{x}.bias"])
        out[f"{o}.kernel"] = c["out_proj.weight"].T.reshape(shapes[f"{o}.kernel"])
        if f"{o}.bias" in shapes:
            out[f"{o}.bias"] = c["out_proj.bias"]
        return out

    return Codec(to_canonical, to_native)


class Rule(NamedTuple):
    canonical: str
    transform: Any = None  # Permute, Flattened...: native <-> canonical values; None: the same


class Depthwise:
    """Keras's depthwise kernel (*k, in, multiplier) as PyTorch's grouped conv weight
    (in * multiplier, 1, *k): output channel c * multiplier + m."""

    view = False

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        *k, c, m = shape
        return (c * m, 1, *k)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        *k, c, m = a.shape
        n = len(k)
        return a.transpose(n, n + 1, *range(n)).reshape(c * m, 1, *k)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        *k, c, m = shape
        n = len(k)
        return a.reshape(c, m, *k).transpose(*range(2, n + 2), 0, 1)


class Flipped:
    """Flax's transposed-conv kernel (*k, in, out), applied without flipping, as PyTorch's
    ConvTranspose weight (in, out, *k), which is the same kernel flipped in space."""

    view = False

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        *k, i, o = shape
        return (i, o, *k)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        n = a.ndim - 2
        return np.flip(a, tuple(range(n))).transpose(n, n + 1, *range(n))

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        n = a.ndim - 2
        return np.flip(a.transpose(*range(2, n + 2), 0, 1), tuple(range(n)))


_KERNEL = Rule("weight", Permute(channels_last_kernel))
_WEIGHT, _BIAS = Rule("weight"), Rule("bias")
_NORM = {"gamma": _WEIGHT, "beta": _BIAS}
_BATCH_NORM = {**_NORM, "running_mean": Rule("running_mean"), "running_var": Rule("running_var")}


_RECURRENT_LEAF = re.compile(r"([lr])(\d+)_(?:(i2h|h2h)_(weight|bias)|(h2r)_weight)")


def _recurrent(names: Iterable[str]) -> dict[str, Rule]:
    """Gluon's fused RNN leaves (l0_i2h_weight, r0_h2h_bias, l1_h2r_weight) as PyTorch's
    (weight_ih_l0, bias_hh_l0_reverse, weight_hr_l1), for any number of layers, in PyTorch's
    order; the gate order is the same (i, f, g, o and r, z, n, as each framework's docs give
    its formulas)."""
    out = {}
    for name in names:
        m = _RECURRENT_LEAF.fullmatch(name)
        if m is None:
            continue
        direction, layer, gate, kind, projection = m.groups()
        suffix = "_reverse" if direction == "r" else ""
        if projection:  # an LSTM with projection_size: PyTorch's proj_size
            out[name] = Rule(f"weight_hr_l{layer}{suffix}")
        else:
            out[name] = Rule(f"{kind}_{'ih' if gate == 'i2h' else 'hh'}_l{layer}{suffix}")
    return dict(sorted(out.items(), key=lambda item: _torch_order(item[1].canonical)))


def _torch_order(name: str) -> tuple[int, int, int, int]:
    kind, which, layer, *reverse = name.split("_")
    rank = 2 if which == "hr" else (kind == "bias")  # weight_ih, weight_hh, biases, weight_hr
    return (int(layer[1:]), bool(reverse), rank, which == "hh")


LAYOUTS: dict[tuple[str, str], dict[str, Rule]] = {
    ("keras", "dense"): {"kernel": _KERNEL, "bias": _BIAS},
    ("keras", "conv"): {"kernel": _KERNEL, "bias": _BIAS},
    # (*k, out, in) -> (in, out, *k): the same axes as a conv kernel's
    ("keras", "conv_transpose"): {"kernel": _KERNEL, "bias": _BIAS},
    ("keras", "depthwise_conv"): {"kernel": Rule("weight", Depthwise()), "bias": _BIAS},
    ("keras", "embedding"): {"embeddings": _WEIGHT},
    ("keras", "layer_norm"): _NORM,
    ("keras", "group_norm"): _NORM,
    ("keras", "batch_norm"): {
        **_NORM,
        "moving_mean": Rule("running_mean"),
        "moving_variance": Rule("running_var"),
    },
    ("flax", "dense"): {"kernel": _KERNEL, "bias": _BIAS},
    ("flax", "conv"): {"kernel": _KERNEL, "bias": _BIAS},
    ("flax", "conv_transpose"): {"kernel": Rule("weight", Flipped()), "bias": _BIAS},
    ("flax", "embedding"): {"embedding": _WEIGHT},
    ("flax", "layer_norm"): {"scale": _WEIGHT, "bias": _BIAS},
    ("flax", "group_norm"): {"scale": _WEIGHT, "bias": _BIAS},
    ("flax", "batch_norm"): {
        "scale": _WEIGHT,
        "bias": _BIAS,
        "mean": Rule("running_mean"),
        "var": Rule("running_var"),
    },
    ("gluon", "layer_norm"): _NORM,
    # per group in Gluon 1.9.1, (groups,): PyTorch's per channel only when groups == channels;
    # otherwise the shapes differ and a port or load says so
    ("gluon", "group_norm"): _NORM,
    ("gluon", "batch_norm"): _BATCH_NORM,
}

# Kinds whose rules depend on the leaves a layer has (Gluon's RNN layers: one set per layer
# and direction): made from the leaf names by rules().
GENERATED: dict[tuple[str, str], Callable[[Iterable[str]], dict[str, Rule]]] = {
    ("gluon", "lstm"): _recurrent,
    ("gluon", "gru"): _recurrent,
}


def _weight(n: dict[str, np.ndarray], dense: str) -> np.ndarray:
    """A dense sub-layer's (out, in) weight, whether the tree shows it canonical or raw."""
    w = n.get(f"{dense}.weight")
    return w if w is not None else n[f"{dense}.kernel"].T


def _set_weight(
    out: dict[str, np.ndarray], shapes: dict[str, Any], dense: str, w: np.ndarray
) -> None:
    if f"{dense}.weight" in shapes:
        out[f"{dense}.weight"] = w
    else:
        out[f"{dense}.kernel"] = w.T


def _blocks(a: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """The gate blocks of a fused (gates * H, ...) array, reordered."""
    parts = np.split(a, len(order))
    return np.concatenate([parts[i] for i in order])


Fns = tuple[Callable[..., dict[str, np.ndarray]], Callable[..., dict[str, np.ndarray]]]


def _fused(order: tuple[int, ...], keras: bool) -> Fns:
    """Keras's LSTM/GRU cell (kernel (in, nH), recurrent_kernel (H, nH), one bias, or two rows
    of biases for a GRU) and NNX's fused cells (dense_i, dense_h): ``order`` maps PyTorch's
    gate blocks to theirs (an involution)."""

    def to_canonical(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if keras:
            w_ih, w_hh, b = x["kernel"].T, x["recurrent_kernel"].T, x.get("bias")
        else:
            w_ih, w_hh = _weight(x, "dense_i"), _weight(x, "dense_h")
            b = x.get("dense_i.bias", x.get("dense_h.bias"))
        out = {"weight_ih_l0": _blocks(w_ih, order), "weight_hh_l0": _blocks(w_hh, order)}
        if b is not None:
            if b.ndim == 2:  # Keras's GRU (reset_after): input and recurrent biases
                out["bias_ih_l0"], out["bias_hh_l0"] = _blocks(b[0], order), _blocks(b[1], order)
            elif keras and len(order) == 3:
                raise StateDictError(
                    "A Keras GRU with reset_after=False applies its reset gate before the "
                    "recurrent matmul, which PyTorch's GRU cannot express: use reset_after=True."
                )
            else:
                out["bias_ih_l0"] = _blocks(b, order)
                out["bias_hh_l0"] = np.zeros_like(out["bias_ih_l0"])
        return out

    def to_native(c: dict[str, np.ndarray], shapes: dict[str, Any]) -> dict[str, np.ndarray]:
        w_ih, w_hh = _blocks(c["weight_ih_l0"], order), _blocks(c["weight_hh_l0"], order)
        out: dict[str, np.ndarray] = {}
        if keras:
            out["kernel"], out["recurrent_kernel"] = w_ih.T, w_hh.T
        else:
            _set_weight(out, shapes, "dense_i", w_ih)
            _set_weight(out, shapes, "dense_h", w_hh)
        if "bias_ih_l0" not in c:
            return out
        b_ih, b_hh = _blocks(c["bias_ih_l0"], order), _blocks(c["bias_hh_l0"], order)
        if "bias" in shapes and len(shapes["bias"]) == 2:
            out["bias"] = np.stack([b_ih, b_hh])
        elif "bias" in shapes or "dense_h.bias" in shapes:
            out["bias" if keras else "dense_h.bias"] = b_ih + b_hh
        elif "dense_i.bias" in shapes:  # NNX's GRUCell: no recurrent bias to keep b_hn apart
            h = len(b_hh) // 3
            if np.any(b_hh[2 * h :]):
                raise StateDictError(
                    "NNX's GRUCell has no recurrent bias for the candidate gate (PyTorch's "
                    "bias_hh_l0[2H:]): it must be zero to port this GRU; linen's GRUCell has one."
                )
            out["dense_i.bias"] = b_ih + b_hh
        return out

    return to_canonical, to_native


def _per_gate(gates: str, folded: str) -> Fns:
    """Flax's cells made of one dense layer per gate (``i<gate>`` on the input, ``h<gate>`` on
    the state; NNX spells the input forget gate ``if_``), in PyTorch's gate order. The gates in
    ``folded`` have one bias where PyTorch has two: their sum."""

    def names(keys: Any) -> list[tuple[str, str]]:
        def has(d: str) -> bool:
            return f"{d}.kernel" in keys or f"{d}.weight" in keys

        return [(f"i{g}" if has(f"i{g}") else f"i{g}_", f"h{g}") for g in gates]

    def to_canonical(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = names(x)
        w_ih = np.concatenate([_weight(x, i) for i, _ in pairs])
        w_hh = np.concatenate([_weight(x, h) for _, h in pairs])
        zero = np.zeros(w_hh.shape[1], w_hh.dtype)
        b_ih, b_hh = [], []
        for (i, h), gate in zip(pairs, gates):
            b_i, b_h = x.get(f"{i}.bias", zero), x.get(f"{h}.bias", zero)
            # a folded gate's one bias reads as bias_ih, as Keras's and NNX's fused cells do
            b_ih.append(b_i + b_h if gate in folded else b_i)
            b_hh.append(zero if gate in folded else b_h)
        return {
            "weight_ih_l0": w_ih,
            "weight_hh_l0": w_hh,
            "bias_ih_l0": np.concatenate(b_ih),
            "bias_hh_l0": np.concatenate(b_hh),
        }

    def to_native(c: dict[str, np.ndarray], shapes: dict[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        parts = {k: np.split(v, len(gates)) for k, v in c.items()}
        for n, ((i, h), gate) in enumerate(zip(names(shapes), gates)):
            _set_weight(out, shapes, i, parts["weight_ih_l0"][n])
            _set_weight(out, shapes, h, parts["weight_hh_l0"][n])
            b_i, b_h = parts["bias_ih_l0"][n], parts["bias_hh_l0"][n]
            if gate in folded:
                out[f"{i if f'{i}.bias' in shapes else h}.bias"] = b_i + b_h
            else:
                out[f"{i}.bias"], out[f"{h}.bias"] = b_i, b_h
        return out

    return to_canonical, to_native


def _cell(*variants: tuple[str, Fns], note: str = "") -> Codec:
    """A recurrent layer's codec. Its cell's leaves are under ``cell.`` (Keras's LSTM layer,
    Flax's RNN) or the layer is the cell itself; the variant used is the first one with a
    leaf starting with its marker ("" matches any)."""

    def strip(d: dict[str, Any]) -> tuple[dict[str, Any], str, Fns]:
        prefix = "cell." if d and all(k.startswith("cell.") for k in d) else ""
        d = {k[len(prefix) :]: v for k, v in d.items()}
        fns = next(f for marker, f in variants if any(k.startswith(marker) for k in d))
        return d, prefix, fns

    def to_canonical(n: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, _, (fn, _) = strip(n)
        return fn(n)

    def to_native(c: dict[str, np.ndarray], shapes: dict[str, Any]) -> dict[str, np.ndarray]:
        shapes, prefix, (_, fn) = strip(shapes)
        return {prefix + k: v for k, v in fn(c, shapes).items()}

    return Codec(to_canonical, to_native, note)


_FOLDED = "one bias per gate: it holds PyTorch's bias_ih + bias_hh"

# Layers whose canonical leaves are computed from their whole subtree. Gate blocks: PyTorch's
# LSTM order i, f, g, o is everyone's; its GRU order r, z, n is Keras's z, r, h.
CODECS: dict[tuple[str, str], Codec] = {
    ("torch", "attention"): _AS_ONE_LAYER,
    ("keras", "attention"): _attention("query", "key", "value", "attention_output"),
    ("flax", "attention"): _attention("query", "key", "value", "out"),
    ("keras", "lstm"): _cell(("", _fused((0, 1, 2, 3), keras=True)), note=_FOLDED),
    ("keras", "gru"): _cell(("", _fused((1, 0, 2), keras=True))),
    ("flax", "lstm"): _cell(
        ("dense_i", _fused((0, 1, 2, 3), keras=False)),
        ("", _per_gate("ifgo", folded="ifgo")),
        note=_FOLDED,
    ),
    ("flax", "gru"): _cell(
        ("dense_i", _fused((0, 1, 2), keras=False)),
        ("", _per_gate("rzn", folded="rz")),
        note=_FOLDED,
    ),
}


def rules(backend: str, kind: str | None, names: Iterable[str] = ()) -> dict[str, Rule] | None:
    """The rules of one layer kind on one backend, in canonical leaf order, or None; ``names``
    are the layer's native leaf names (the rules of a ``GENERATED`` kind are made from them)."""
    if not kind:
        return None
    make = GENERATED.get((backend, kind))
    return make(names) if make is not None else LAYOUTS.get((backend, kind))


def codec_for(backend: str, kind: str | None) -> Codec | None:
    """The codec of a layer kind whose canonical leaves are computed from its subtree, or None."""
    return CODECS.get((backend, kind)) if kind else None


def has_codecs(backend: str) -> bool:
    return any(b == backend for b, _ in CODECS)


def has_rules(backend: str) -> bool:
    """Whether any layer kind of ``backend`` differs from the canonical layout."""
    return backend in _BACKENDS


_BACKENDS = {backend for backend, _ in (*LAYOUTS, *GENERATED)}

# Canonical leaves a framework may lack without changing results: PyTorch's batch-norm counter.
OPTIONAL = frozenset({"num_batches_tracked"})

# Backends whose conv layers are channels-last by default: a dense layer fed by the flatten of
# a conv output needs its input axis permuted (see Flattened). Norms keep the channels.
CHANNELS_LAST = frozenset({"keras", "flax"})
NORMS = frozenset({"batch_norm", "layer_norm", "group_norm"})
CONVS = frozenset({"conv", "depthwise_conv", "conv_transpose"})

# Kinds that are one kind to a port: Keras's DepthwiseConv is PyTorch's grouped Conv.
SAME_KIND = {"depthwise_conv": "conv"}


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return tuple(inv)


# -- the decisions a read makes, leaf by leaf: pure functions of names, kinds and shapes --------
Plan = list[tuple[int, str, "Rule | None"]]  # (index among the native leaves, canonical name, rule)


def plan(names: Sequence[str], table: Mapping[str, Rule] | None) -> Plan:
    """One layer's native leaf ``names`` in canonical leaf order: (index in ``names``,
    canonical name, rule). Leaves the table knows come in its order (weight before bias);
    the others follow in their native order and keep their names."""
    if not table:
        return [(i, name, None) for i, name in enumerate(names)]
    order = {name: rank for rank, name in enumerate(table)}
    ranked = sorted(range(len(names)), key=lambda i: order.get(names[i], len(order)))
    out: Plan = []
    for i in ranked:
        rule = table.get(names[i])
        out.append((i, rule.canonical if rule else names[i], rule))
    return out


def flatten(
    channels: int,
    kind: str | None,
    layer: Plan,
    shapes: Sequence[tuple[int, ...] | None],
    channels_first: bool = False,
) -> tuple[int, Plan]:
    """The flatten rule of a channels-last backend, one layer at a time in traversal order.

    A dense layer fed by the flatten of a channels-last conv output holds its input axis in
    (H, W, C) order where PyTorch's ``Linear`` after ``Flatten`` holds (C, H, W): its kernel
    gets ``Flattened(C)``; a norm between the flatten and the dense layer gets
    ``FlattenedVector(C)`` on its vectors of the flattened size. ``channels`` is C of the
    last conv output while a flatten of it may still come (0: none may), ``layer`` the
    layer's :func:`plan`, ``shapes`` its native leaf shapes by index (read only for convs,
    and for dense layers and norms while ``channels``), ``channels_first`` a conv that says
    so itself (Keras's ``data_format``), which flattens as PyTorch does.

    Returns the ``channels`` for the next layer and the layer's plan, changed or not.
    """
    if kind in CONVS:
        i, _, rule = layer[0]  # the kernel
        shape = shapes[i]
        if not (shape and rule and rule.transform) or channels_first:
            return 0, layer
        shape = rule.transform.shape(
            shape
        )  # canonical: (out, in, *k) or, transposed, (in, out, *k)
        return (shape[1] if kind == "conv_transpose" else shape[0]), layer
    if not channels:
        return 0, layer
    if kind == "dense":
        i, name, _ = layer[0]
        shape = shapes[i]  # (in, out)
        if shape and shape[0] > channels and shape[0] % channels == 0:
            return 0, [(i, name, Rule(name, Flattened(channels))), *layer[1:]]
        return 0, layer
    if kind in NORMS:  # over the channels, or over the flattened features
        return channels, [
            (i, name, Rule(name, FlattenedVector(channels)))
            if (shape := shapes[i])
            and len(shape) == 1
            and shape[0] > channels
            and shape[0] % channels == 0
            else (i, name, rule)
            for i, name, rule in layer
        ]
    return 0, layer


def flattens(rule: Rule | None) -> bool:
    """Whether ``rule`` is one the flatten rule added (its layout depends on the layer's use)."""
    return rule is not None and type(rule.transform) in (Flattened, FlattenedVector)
