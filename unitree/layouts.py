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
- ``einsum_dense``: the rules of a dense layer written as an einsum (Keras's
  ``EinsumDense``: split-head attention projections), read from its equation alone
  (``Einsum`` kernels, ``Flat`` biases), or None where the equation is no dense map.
- ``CODECS``: per (backend, layer kind), a ``Codec`` for the layers whose
  canonical leaves are no single native leaf (Keras's one LSTM bias, Flax's
  per-gate cells, attention's separate projections): it computes them from
  the layer's whole subtree, both ways.
- ``REGISTERED``: third-party layer types (``unitree.register_layer``), by class or
  qualified name, each with its :class:`Kind`: the kind it is matched as, and its own
  rules. Hugging Face's ``Conv1D`` ships here.

The core's decisions for one layer are pure functions here too: ``plan`` (its leaves in
canonical order, named and ruled), and ``decide`` with ``after_step`` (a layer's rules from
the layout of the activations that reach it, followed through the parameterless steps a
channels-last model's own structure shows: ``Flattened``, ``Unflattened``, or ``Unknown``).

A layer kind or leaf in none of the tables keeps its native name and layout. Every
rule is proven against each framework's own outputs in tests/<framework>/
test_port.py and against numpy references of the formulas in tests/core.
"""

from __future__ import annotations

import math
import re
import sys
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


class Unflattened:
    """The (in, out) kernel of a dense layer whose output is reshaped into a channels-last
    feature map (Keras's ``Reshape((H, W, C))`` before a conv): its output axis is in
    (H, W, C) order, channels fastest, where PyTorch's ``Linear`` before ``Unflatten(1,
    (C, H, W))`` holds (C, H, W). The canonical weight is that (out, in) ``Linear`` weight:
    transposed, its output axis permuted (the bias, and a norm's vectors between the dense
    layer and the reshape, take :class:`FlattenedVector`). Only C matters."""

    view = False

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[1], shape[0])

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        n, out = a.shape
        c = self.channels
        return a.reshape(n, out // c, c).transpose(2, 1, 0).reshape(out, n)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(c, out // c, n).transpose(2, 1, 0).reshape(n, out)


class FlattenedWeight:
    """The (out, in) weight of a PyTorch or Gluon ``Linear`` fed by a channels-last flatten
    (the model permuted its (C, H, W) map to (H, W, C) before flattening): its input axis is
    in (H, W, C) order, channels fastest. The canonical weight is the one of the twin that
    flattens (C, H, W) as PyTorch's ``Flatten`` does: the same (out, C*H*W) shape, its input
    axis permuted. What :class:`Flattened` is for an (in, out) kernel. Only C matters."""

    view = False

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(out, n // c, c).transpose(0, 2, 1).reshape(out, n)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(out, c, n // c).transpose(0, 2, 1).reshape(out, n)


class UnflattenedWeight:
    """The (out, in) weight of a PyTorch or Gluon ``Linear`` whose output is reshaped into a
    channels-last map (``Unflatten(1, (H, W, C))``, then a permute to (C, H, W) before the
    conv): its output axis is in (H, W, C) order. The canonical weight is the one of the twin
    that unflattens to (C, H, W): the same shape, its output axis permuted (the bias, and a
    norm's vectors between, take :class:`FlattenedVector`). What :class:`Unflattened` is for
    an (in, out) kernel. Only C matters."""

    view = False

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(out // c, c, n).transpose(1, 0, 2).reshape(out, n)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(c, out // c, n).transpose(1, 0, 2).reshape(out, n)


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
    PyTorch's fused ``in_proj_weight`` (3E, E) rows q, k, v, and ``out_proj`` (E, E). A
    projection the tree shows canonical (Keras's ``EinsumDense``, a dense layer by its
    equation: ``weight`` (heads * head_dim, E)) is taken as it is; one it shows raw
    (``kernel``) is reshaped here."""

    def weight(n: dict[str, np.ndarray], x: str) -> np.ndarray:  # (out, in)
        w = n.get(f"{x}.weight")
        if w is not None:
            return w
        kernel = n[f"{x}.kernel"]
        if x == o:  # (heads, head_dim, E)
            return kernel.reshape(-1, kernel.shape[-1]).T
        return kernel.reshape(kernel.shape[0], -1).T  # (E, heads, head_dim)

    def to_canonical(n: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"in_proj_weight": np.concatenate([weight(n, x) for x in (q, k, v)])}
        if f"{q}.bias" in n:
            out["in_proj_bias"] = np.concatenate([n[f"{x}.bias"].reshape(-1) for x in (q, k, v)])
        out["out_proj.weight"] = weight(n, o)
        if f"{o}.bias" in n:
            out["out_proj.bias"] = n[f"{o}.bias"]
        return out

    def to_native(
        c: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        def rows(x: str) -> int:
            shape = shapes.get(f"{x}.weight")
            return shape[0] if shape is not None else math.prod(shapes[f"{x}.kernel"][1:])

        out = {}
        ends = np.cumsum([0] + [rows(x) for x in (q, k, v)])
        for i, x in enumerate((q, k, v)):
            part = slice(ends[i], ends[i + 1])
            if f"{x}.weight" in shapes:
                out[f"{x}.weight"] = c["in_proj_weight"][part]
            else:
                out[f"{x}.kernel"] = c["in_proj_weight"][part].T.reshape(shapes[f"{x}.kernel"])
            if f"{x}.bias" in shapes:
                out[f"{x}.bias"] = c["in_proj_bias"][part].reshape(shapes[f"{x}.bias"])
        if f"{o}.weight" in shapes:
            out[f"{o}.weight"] = c["out_proj.weight"]
        else:
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


class Einsum:
    """A dense kernel whose axes an einsum equation names (Keras's ``EinsumDense``: ``q``
    "abc,cde->abde", kernel (E, heads, head_dim); ``o`` "abcd,cde->abe", kernel (heads,
    head_dim, E)) as PyTorch's ``Linear`` weight (out, in): the kernel's output axes first,
    in the order the output has them, then its input axes in the order the input has them,
    each group flattened (what PyTorch's twin computes on the same activations reshaped:
    (heads * head_dim, E), (E, heads * head_dim)). ``perm``: the kernel's axes in that order;
    ``n_out``: how many of them are output axes. See :func:`einsum_dense`."""

    view = False

    def __init__(self, perm: tuple[int, ...], n_out: int) -> None:
        self.perm = perm
        self.n_out = n_out

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        sizes = [shape[i] for i in self.perm]
        return (math.prod(sizes[: self.n_out]), math.prod(sizes[self.n_out :]))

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        return a.transpose(self.perm).reshape(self.shape(a.shape))

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape([shape[i] for i in self.perm]).transpose(inverse(self.perm))


class Flat:
    """A vector kept with several axes (an ``EinsumDense``'s bias over (heads, head_dim)) as
    PyTorch's one axis, in the same (row-major) order."""

    view = True

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(shape),)

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1)

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(shape)


class Composed:
    """``inner``, then ``outer`` on what ``inner`` made canonical: a use-decided transform of
    an (out, in) weight or of a vector (``FlattenedWeight``, ``UnflattenedWeight``,
    ``FlattenedVector``) applied to a leaf with a layout of its own (:class:`Einsum`,
    :class:`Flat`)."""

    view = False

    def __init__(self, inner: Any, outer: Any) -> None:
        self.inner = inner
        self.outer = outer

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.outer.shape(self.inner.shape(shape))

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        return self.outer.to_canonical(self.inner.to_canonical(a))

    def to_native(self, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return self.inner.to_native(self.outer.to_native(a, self.inner.shape(shape)), shape)


_EINSUM = re.compile(r"(\.\.\.)?([a-zA-Z]+),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)")


def einsum_dense(equation: str, bias_axes: str | None) -> dict[str, Rule] | None:
    """The rules of a Keras ``EinsumDense(equation, bias_axes=...)`` read as a dense layer
    (PyTorch's ``Linear`` on its input's trailing axes flattened, its output's unflattened),
    or None where the equation is no such map: then the layer has no kind, and ports only
    onto its own type (fail closed, never guessed).

    A dense map: the input is (batch axes..., input axes...), the output (the same batch
    axes, in the same order..., output axes...), with an ellipsis only before both; the
    kernel holds every input and output axis and nothing else (no axis in all three terms:
    a weight per head is no dense map; no axis summed away or repeated); a bias is over every
    output axis and no other. The kernel's rule is :class:`Einsum` (a plain (in, out) kernel
    keeps a ``Dense``'s rule), a bias over several axes :class:`Flat`.
    """
    m = _EINSUM.fullmatch(equation.replace(" ", ""))
    if m is None:
        return None
    left, x, y, right, z = m.groups()
    if bool(left) != bool(right) or any(len(set(t)) != len(t) for t in (x, y, z)):
        return None
    batch = [c for c in x if c in z and c not in y]
    n = len(batch)
    ins, outs = x[n:], z[n:]
    if (
        list(x[:n]) != batch
        or list(z[:n]) != batch
        or not ins
        or not outs
        or set(ins) & set(z)
        or set(outs) & set(x)
        or sorted(y) != sorted(ins + outs)
    ):
        return None
    perm = tuple(y.index(c) for c in outs + ins)
    # (in, out): a Dense's kernel, which keeps a Dense's rule
    kernel = _KERNEL if perm == (1, 0) else Rule("weight", Einsum(perm, len(outs)))
    if bias_axes is None:
        return {"kernel": kernel}
    if len(set(bias_axes)) != len(bias_axes) or set(bias_axes) != set(outs):
        return None
    return {"kernel": kernel, "bias": _BIAS if len(outs) == 1 else Rule("bias", Flat())}


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


# -- third-party layer types: ``unitree.register_layer`` ------------------------------------
class Kind(str):
    """The kind of a registered layer type: a ``str`` equal to its kind's name ("dense"), so a
    port, the settings and the flatten rule see it as that kind, carrying the type's own leaf
    rules, which :func:`rules` gives instead of the kind's (``key``: what a read's plans are
    cached by, one per registration)."""

    rules: dict[str, Rule]
    key: tuple[str, type | str]
    stored: frozenset[str]

    def __new__(
        cls,
        kind: str,
        rules: Mapping[str, Rule],
        layer_type: type | str,
        stored: frozenset[str] = frozenset(),
    ) -> Kind:
        self = super().__new__(cls, kind)
        self.rules = dict(rules)
        self.key = ("registered", layer_type)
        self.stored = stored  # canonical leaves files hold transposed, as PyTorch's type does
        return self

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return str, (str(self),)  # copied or pickled (a PortReport's pairs): the kind's name


def _transposed(ndim: int) -> tuple[int, ...]:
    return tuple(reversed(range(ndim)))


# Every axis reversed: a dense kernel stored (in, out), as PyTorch's (out, in) weight.
TRANSPOSED = Permute(_transposed)

# Registered layer types: a class, or its qualified name ("module.QualName": a rule ships
# without importing the framework), -> its Kind. ``register_layer`` (unitree._registry) adds to
# it; adapters' kind tables look a module's classes up here first (unitree._adapter.KindTable).
REGISTERED: dict[type | str, Kind] = {
    # Hugging Face's GPT-2 dense layer: y = x @ weight + bias, weight (in, out)
    "transformers.pytorch_utils.Conv1D": Kind(
        "dense",
        {"weight": Rule("weight", TRANSPOSED), "bias": _BIAS},
        "transformers.pytorch_utils.Conv1D",
        stored=frozenset({"weight"}),  # a file holds what GPT-2's state_dict holds: (in, out)
    ),
    # its Flax twin: y = x @ kernel.T + bias, kernel (out, in), as PyTorch's Linear holds it
    "transformers.models.gpt2.modeling_flax_gpt2.FlaxConv1D": Kind(
        "dense",
        {"kernel": Rule("weight"), "bias": _BIAS},
        "transformers.models.gpt2.modeling_flax_gpt2.FlaxConv1D",
        stored=frozenset({"weight"}),  # as its PyTorch twin's file holds it
    ),
}


def registered(cls: type) -> Kind | None:
    """The :class:`Kind` ``cls`` itself is registered with (not its bases), or None: by class,
    or by its qualified name ``f"{cls.__module__}.{cls.__qualname__}"``."""
    kind = REGISTERED.get(cls)
    if kind is None and cls.__module__ in sys.modules:  # as _loaded() counts it
        kind = REGISTERED.get(f"{cls.__module__}.{cls.__qualname__}")
    return kind


def _loaded(key: type | str) -> bool:
    """Whether a model may hold the registered type ``key``: a class, or a name whose module
    (one of its dotted prefixes: "a.b.C" is C in a.b, or B.C in a) is imported."""
    if type(key) is not str:
        return True
    parts = key.split(".")
    return any(".".join(parts[:n]) in sys.modules for n in range(1, len(parts)))


def rules(backend: str, kind: str | None, names: Iterable[str] = ()) -> dict[str, Rule] | None:
    """The rules of one layer kind on one backend, in canonical leaf order, or None; ``names``
    are the layer's native leaf names (the rules of a ``GENERATED`` kind are made from them).
    A registered type's :class:`Kind` gives its own rules, never its kind's."""
    if not kind:
        return None
    if type(kind) is Kind:
        return kind.rules
    make = GENERATED.get((backend, kind))
    return make(names) if make is not None else LAYOUTS.get((backend, kind))


def codec_for(backend: str, kind: str | None) -> Codec | None:
    """The codec of a layer kind whose canonical leaves are computed from its subtree, or None."""
    return CODECS.get((backend, kind)) if kind else None


def has_codecs(backend: str) -> bool:
    return any(b == backend for b, _ in CODECS)


def has_rules(backend: str) -> bool:
    """Whether any layer kind of ``backend`` differs from the canonical layout, or a model
    may hold a registered type (:data:`REGISTERED`: one registered by class, or by name once
    its module is imported), whose rules may be any."""
    return backend in _BACKENDS or any(map(_loaded, REGISTERED))


_BACKENDS = {backend for backend, _ in (*LAYOUTS, *GENERATED)}

# Canonical leaves a framework may lack without changing results: PyTorch's batch-norm counter.
OPTIONAL = frozenset({"num_batches_tracked"})


# -- a weight stored as PyTorch's weight_norm stores it, in files -----------------------------
def weight_norm_keys(key: str) -> tuple[tuple[str, str], ...]:
    """The keys under which a file may hold the canonical ``key`` ("0.weight") as PyTorch's
    weight norm's magnitude g and direction v: the legacy ``torch.nn.utils.weight_norm``'s
    ("0.weight_g", "0.weight_v") and the state_dict of ``parametrizations.weight_norm``
    ("0.parametrizations.weight.original0", "...original1"), both of which torch's own
    ``load_state_dict`` accepts for a weight-normed layer."""
    pre, _, name = key.rpartition(".")
    pre = f"{pre}." if pre else ""
    return (
        (f"{pre}{name}_g", f"{pre}{name}_v"),
        (f"{pre}parametrizations.{name}.original0", f"{pre}parametrizations.{name}.original1"),
    )


def weight_norm_axes(g: tuple[int, ...], v: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axes of v that PyTorch's ``norm_except_dim`` reduces to give a g of shape ``g``: all
    of them for a 0-d g (``dim=None``), all but ``dim`` for a g of v's rank that keeps only
    ``dim`` (every other axis 1); None for any other shape (not a weight norm of v). A g that
    keeps no axis of size > 1 reads as one norm over all of v: the same norms."""
    if g == ():
        return tuple(range(len(v)))
    if len(g) != len(v):
        return None
    kept = [i for i, (a, b) in enumerate(zip(g, v)) if a == b and a != 1]
    if len(kept) > 1 or any(a != 1 for i, a in enumerate(g) if i not in kept):
        return None
    return tuple(i for i in range(len(v)) if i not in kept)


def weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PyTorch's ``_weight_norm(v, g, dim)``: w = g * v / ||v||, the 2-norm over every axis of
    v but the one g keeps (:func:`weight_norm_axes`, which must not be None), in v's dtype,
    computed in float32 or wider."""
    axes = weight_norm_axes(g.shape, v.shape)
    assert axes is not None
    work = np.float64 if v.dtype == np.float64 else np.float32
    x = v.astype(work)
    norm = np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
    return (g.astype(work).reshape(norm.shape) * x / norm).astype(v.dtype)


# Backends whose conv layers are channels-last by default: a dense layer fed by the flatten of
# a conv output needs its input axis permuted (see Flattened). Norms keep the channels.
CHANNELS_LAST = frozenset({"keras", "flax"})
# Backends whose native layouts are PyTorch's, convs channels-first: what they hold is
# canonical unless the model itself reorders a map before a flatten (a permute to (H, W, C)
# in a custom module): a read follows their activations too, and an unknown layout there
# defaults to their own channels-first order (FlattenedWeight, UnflattenedWeight otherwise).
CHANNELS_FIRST = frozenset({"torch", "gluon"})
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


# -- the layout of the activations between layers, followed by a read -------------------------
#
# PyTorch holds a feature map as (C, H, W) after the batch axis; Keras and Flax as (H, W, C).
# Between a conv and a dense layer that reads its flatten (and between a dense layer whose
# output is reshaped into a feature map and the conv that reads it), the canonical weight is
# what PyTorch's twin holds, so the order in which the activations reach the dense layer
# decides its rule. A read follows that order through the parameterless steps in between, as
# ``Adapter.step`` names them (:class:`Step`), in a :class:`Flow`; where a step is opaque (a
# lambda, a custom call), the layout is unknown (:class:`Unknown`), never guessed. The same
# holds on a channels-first backend (``CHANNELS_FIRST``: ``native_first`` below), whose model
# may still flatten channels-last (a permute before its flatten): its default is its own order.
#
# A feature map's axes are labelled 0 (its channels) and 1..n (its spatial axes, in the conv's
# order), and ``Flow.order`` lists the labels in memory order: PyTorch's (C, H, W) is
# (0, 1, 2), the channels-last (H, W, C) (1, 2, 0).

KEEP = "keep"  # the layout stays: activations, dropout, noise, an elementwise merge; with a
# data_format, an op that finds the channels by it (pooling, padding, cropping, upsampling)
FLATTEN = "flatten"  # all axes but the batch axis into one; data_format "channels_first" moves
# the first axis last before (Keras's Flatten, so a channels-first model flattens as its twin);
# axes: (start, end) as torch.flatten counts them (the batch axis 0, negative from the end), of
# a flatten of some axes only (PyTorch's Flatten(2)); () all but the batch axis
PERMUTE = "permute"  # axes: Keras's Permute dims (1-based, the batch axis left out)
RESHAPE = "reshape"  # axes: the target shape, batch axis left out (-1: the one free axis)
UNFLATTEN = "unflatten"  # one axis split: axes (dim, *sizes) as PyTorch's Unflatten takes them
POOL = "pool"  # a global pooling without keepdims: one axis stays
CONCAT = "concat"  # a concatenation; axes: (axis,) as Keras counts it (the batch axis is 0)
MAP = "map"  # a new feature map, from a conv no table knows (Keras's SeparableConv2D); axes:
# (its output channels, its spatial axes, its input channels), data_format: its channels' place
CHAIN = "chain"  # a container that calls its children in order, each on the previous output
GRAPH = "graph"  # a container that calls its children as ``wires`` say (Keras's functional model)
UNKNOWN = "unknown"  # anything else: the layout after it cannot be seen


class Wire(NamedTuple):
    """One input of a child of a :data:`GRAPH` container: the output of ``sources`` (positions
    among the container's children as ``Adapter.children`` lists them, -1 for the container's
    own input; several: merged by an operation between), through ``through`` ("": directly,
    else what lies between, which cannot be seen through, for messages)."""

    sources: tuple[int, ...]
    through: str = ""


class Step(NamedTuple):
    """What a parameterless layer, or a container's call, does to the layout of the
    activations: ``Adapter.step``'s answer. ``op`` is one of :data:`KEEP`, :data:`FLATTEN`,
    :data:`PERMUTE`, :data:`RESHAPE`, :data:`POOL`, :data:`CONCAT`, :data:`MAP`,
    :data:`CHAIN`, :data:`GRAPH`, :data:`UNKNOWN` (see their comments)."""

    op: str
    axes: tuple[int, ...] = ()  # PERMUTE's dims, RESHAPE's target shape, CONCAT's axis
    data_format: str = ""  # "channels_last", "channels_first": where the step finds the channels
    why: str = ""  # UNKNOWN: what the step is, for messages ("a Lambda layer")
    wires: tuple[tuple[Wire, ...], ...] = ()  # GRAPH: each child's inputs, in children() order
    outputs: tuple[Wire, ...] = ()  # GRAPH: the container's outputs


class Feed(NamedTuple):
    """A dense layer's output that a reshape may turn into a feature map: the layer's path,
    its ``units`` (output features), and ``token``, the read's key for its leaves.

    ``units`` is 0 until read: a dense layer needs no shape to start a feed (most feeds only
    reach another dense layer), so the reader fills it in (:func:`needs_units`) before a
    conv, a norm, a reshape or a merge reads it."""

    token: int
    units: int
    path: str


class Flow(NamedTuple):
    """The layout of the activations at one point of a read, between two layers.

    ``state``: "none" (no layout a later layer depends on); "map" (the feature map of the conv
    at ``origin``: ``channels``, axes in ``order``); "flat" (its flatten, in ``order``); "out"
    (the output of a dense layer, ``feeds[0]``); "outmap" (that output reshaped: ``dims`` by
    label, the reshape's own axes 0..r-1 now in ``order``); "unknown" (after ``why``, which
    no one can see through: a flatten of a map of ``channels`` (or a multiple of them: a
    merge of several) from ``origin`` may follow, 0 if none, and ``feeds`` may be reshaped).
    """

    state: str = "none"
    channels: int = 0
    order: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    feeds: tuple[Feed, ...] = ()
    origin: str = ""
    why: str = ""


NONE = Flow()


class Unknown(NamedTuple):
    """A leaf whose layout depends on activations a read could not follow: ``candidates`` by
    name ("channels_last": the model flattens or reshapes channels-last, Keras's and Flax's
    own way; "channels_first": as PyTorch does), each the rule the leaf would have, and
    ``default``, the candidate in use (the leaf's rule: checkpoints and state_dict read and
    write through it). ``reason`` names both layers and what lies between them."""

    reason: str
    candidates: dict[str, Rule | None]
    default: str


class Mirror(NamedTuple):
    """What a read learned about a :class:`Feed` when a layer that finds the channels by
    position (a conv, a pooling) read it as a feature map of ``channels``: ``reason`` ""
    says its output is in channels-last order (its leaves take :func:`mirrored` rules);
    otherwise the order is unknown, for that reason."""

    feed: Feed
    channels: int
    reason: str = ""


class Decision(NamedTuple):
    """:func:`decide`'s answer for one layer with leaves."""

    flow: Flow  # after the layer
    layer: Plan  # its plan, with the rules decided (an unknown leaf: its default candidate's)
    unknown: tuple[tuple[int, Unknown], ...] = ()  # (position in ``layer``, what is unknown)
    pend: tuple[int, ...] = ()  # positions in ``layer`` a later reshape decides (flow.feeds[0])
    mirrors: tuple[Mirror, ...] = ()  # what this layer decided about earlier feeds


def fed(token: int, where: str) -> Flow:
    """The flow after the dense layer at ``where`` (``token``) when no conv's map reaches
    it: its output, whose order a later reshape and conv may decide."""
    # Flow("out", feeds=(Feed(token, 0, where),)), made in C: once per dense layer of a read
    return _tuple(Flow, ("out", 0, (), (), (_tuple(Feed, (token, 0, where)),), "", ""))


_tuple = tuple.__new__


def dense_pend(layer: Plan) -> tuple[int, ...]:
    """The positions in a dense layer's plan whose rules a reshape of its output decides:
    its kernel (first) and its bias."""
    return (0, *[j for j, (_, name, _) in enumerate(layer) if name == "bias"])


def needs_units(flow: Flow, kind: str | None = None, step: Step | None = None) -> bool:
    """Whether the layer of ``kind`` (or the ``step``) reading ``flow`` needs its feeds'
    ``units``, some of which are not read yet (0): a conv, a norm, a reshape, a merge."""
    if not any(f.units == 0 for f in flow.feeds):
        return False
    if step is not None:
        return step.op in (RESHAPE, UNFLATTEN, CONCAT, GRAPH, MAP)
    return kind in CONVS or kind in NORMS


def _cl(n: int) -> tuple[int, ...]:
    return (*range(1, n + 1), 0)


def _cf(n: int) -> tuple[int, ...]:
    return tuple(range(n + 1))


def opaque(flow: Flow, why: str) -> Flow:
    """``flow`` after ``why``, which no one can see through: what it may still matter to is
    kept (a map's channels, the feeds), its order is not."""
    if flow.state == "none" or flow.why:
        return flow
    channels = flow.channels if flow.state in ("map", "flat") else 0
    return Flow("unknown", channels, feeds=flow.feeds, origin=flow.origin, why=why)


def _blank(flow: Flow) -> Flow:
    return flow._replace(origin="", feeds=tuple(f._replace(path="") for f in flow.feeds))


def merge(flows: Sequence[Flow], step: Step | None = None, why: str = "") -> Flow:
    """The layout where several inputs meet (a graph's merge layer, ``step``): the same
    layout stays (a residual ``Add``); channels-last maps concatenated on their channels
    are one map; anything else is unknown (``why``: the meeting point, for messages)."""
    tracked = [f for f in flows if f.state != "none"]
    if not tracked:
        return NONE
    first = tracked[0]
    if step is not None and step.op == CONCAT and len(tracked) == len(flows):
        axis = step.axes[0] if step.axes else -1
        maps = all(f.state == "map" and f.order == first.order for f in tracked)
        n = len(first.order)
        if maps and (axis == -1 or axis == n) and first.order[-1] == 0:
            return first._replace(channels=sum(f.channels for f in tracked))
    elif len(tracked) == len(flows) and all(_blank(f) == _blank(first) for f in tracked[1:]):
        return first
    channels = math.gcd(*[f.channels for f in tracked if f.state in ("map", "flat", "unknown")])
    feeds = tuple(dict.fromkeys(feed for f in tracked for feed in f.feeds))
    return Flow("unknown", channels, feeds=feeds, origin=first.origin, why=why or first.why)


def _consume(flow: Flow, label: int, where: str) -> tuple[Mirror | None, Flow]:
    """An "outmap" read as a feature map whose channels are axis ``label`` (a conv, a
    pooling, a norm over the channels): what that says of its feed, and the flow as a map."""
    feed = flow.feeds[0]
    c = flow.dims[label]
    spatial = [x for x in flow.order if x != label]
    relabel = {label: 0, **{x: k + 1 for k, x in enumerate(spatial)}}
    as_map = Flow("map", c, tuple(relabel[x] for x in flow.order), origin=where)
    reshaped = tuple(range(len(flow.order)))  # the reshape's own order: the dense output's
    if c == feed.units or (label, *spatial) == reshaped:
        return None, as_map  # no spatial axes, or (C, H, W): PyTorch's order already
    if (*spatial, label) == reshaped:
        return Mirror(feed, c), as_map
    why = (
        f"{feed.path}'s output reaches {where} as a feature map whose axes were reordered "
        f"between them ({flow.order}, channels at {label}): neither channels-last nor "
        "PyTorch's (C, H, W) order"
    )
    return Mirror(feed, c, why), as_map


def _unseen(flow: Flow, c_in: int, where: str) -> tuple[Mirror, ...]:
    """The feeds of a flow whose order was lost, read by ``where`` as a map of ``c_in``
    channels: each whose units are a multiple > 1 of them may have been reshaped into it."""
    what = flow.why or "a step that is not a layer"
    return tuple(
        Mirror(
            f,
            c_in,
            f"{f.path}'s output reaches {where}, but {what} lies between them: whether it is "
            "reshaped into a feature map channels-last ((H, W, C): the channels_last "
            "candidate) or as PyTorch's (C, H, W) (channels_first) cannot be seen",
        )
        for f in flow.feeds
        if f.units > c_in and f.units % c_in == 0
    )


def _channel_step(flow: Flow, data_format: str, where: str) -> tuple[Flow, tuple[Mirror, ...]]:
    """A step that finds the channels by ``data_format`` (a pooling, an upsampling)."""
    last = data_format != "channels_first"
    if flow.state == "map":
        if (flow.order[-1] if last else flow.order[0]) == 0:
            return flow, ()
        return opaque(flow, f"{where}, which takes another axis for the channels"), ()
    if flow.state == "outmap":
        mirror, as_map = _consume(flow, flow.order[-1] if last else flow.order[0], where)
        return as_map, (mirror,) if mirror else ()
    return flow, ()


def _reshape(flow: Flow, target: tuple[int, ...], where: str) -> Flow:
    state, order, c = flow.state, flow.order, flow.channels
    r = len(target)
    if state in ("map", "flat"):
        if r == 1:
            return Flow("flat", c, order, origin=flow.origin)
        n = len(order) - 1
        if order == _cl(n) and target[-1] == c:  # spatial axes merged or split, in order
            return Flow("map", c, _cl(r - 1), origin=flow.origin)
        if order == _cf(n) and target[0] == c:
            return Flow("map", c, _cf(r - 1), origin=flow.origin)
        return opaque(flow, f"{where}, a reshape that mixes the channels with other axes")
    if state == "outmap":
        if order != tuple(range(len(order))):
            return opaque(flow, f"{where}, a reshape of reordered axes")
        flow = Flow("out", feeds=flow.feeds)
    # "out": the dense output as a whole, reshaped
    if r == 1:
        return flow
    units = flow.feeds[0].units
    known = math.prod(d for d in target if d != -1)
    free = sum(d == -1 for d in target)
    if free > 1 or known <= 0 or units % known or (not free and known != units):
        # not the dense output alone (the layer ran on a sequence): no order to follow
        return opaque(flow, f"{where}, a reshape of more than the dense layer's output")
    dims = tuple(units // known if d == -1 else d for d in target)
    return Flow("outmap", dims=dims, order=tuple(range(r)), feeds=flow.feeds)


def _flatten_some(flow: Flow, start: int, end: int, where: str) -> Flow:
    """A flatten of the axes ``start``..``end`` only, as ``torch.flatten`` counts them (the
    batch axis 0): of a map, spatial axes merged in their order keep its layout (PyTorch's
    ``Flatten(2)`` of a (C, H, W) map: (C, H*W)); all its axes are a flatten; anything else
    (the channels merged with a spatial axis, the batch axis) no one follows."""
    if flow.state not in ("map", "outmap"):  # one axis: a flatten of it is no change
        if start in (1, -1) and end in (1, -1):
            return flow
        return opaque(flow, f"{where}, a flatten of axes {start}..{end}")
    rank = len(flow.order) + 1
    s, e = start % rank, end % rank
    if s == 1 and e == rank - 1:  # every axis but the batch axis
        return after_step(flow, Step(FLATTEN), where)[0]
    group = flow.order[s - 1 : e] if s else ()
    if flow.state != "map" or not group or 0 in group:
        return opaque(flow, f"{where}, a flatten that merges the channels or the batch axis")
    if len(group) == 1:
        return flow
    if group != tuple(range(group[0], group[0] + len(group))):
        return opaque(flow, f"{where}, a flatten of reordered axes")
    drop = len(group) - 1
    order = tuple(x if x <= group[0] else x - drop for x in flow.order if x not in group[1:])
    return flow._replace(order=order)


def _unflatten(flow: Flow, dim: int, sizes: tuple[int, ...], where: str) -> Flow:
    """One axis split into ``sizes`` (PyTorch's ``Unflatten(dim, sizes)``, the batch axis 0):
    of a dense output or a flatten, the reshape of that one axis (:func:`_reshape`); of a
    map, a spatial axis split in order keeps its layout; anything else no one follows."""
    if flow.state in ("out", "flat"):
        if dim in (1, -1):
            return _reshape(flow, sizes, where)
        return opaque(flow, f"{where}, an unflatten of axis {dim}")
    rank = len(flow.order) + 1
    d = dim % rank
    label = flow.order[d - 1] if flow.state == "map" and d else 0
    if not label:  # the channels, the batch axis, or a reshaped dense output's axes
        return opaque(flow, f"{where}, an unflatten of the channels or of a reshaped output")
    grow = len(sizes) - 1
    order: list[int] = []
    for x in flow.order:
        if x == label:
            order += range(x, x + grow + 1)
        else:
            order.append(x + grow if x > label else x)
    return flow._replace(order=tuple(order))


def after_step(flow: Flow, step: Step, where: str = "") -> tuple[Flow, tuple[Mirror, ...]]:
    """``flow`` after one parameterless ``step`` (``where``: the step, for messages), and what
    the step decided about a dense layer's output it read as a feature map."""
    state, op = flow.state, step.op
    if op == MAP:  # whatever came before: a conv's map starts here, reading it as a conv does
        channels, n, c_in = step.axes
        first = step.data_format == "channels_first"
        if state == "outmap":
            mirror, _ = _consume(flow, flow.order[0] if first else flow.order[-1], where)
            mirrors: tuple[Mirror, ...] = (mirror,) if mirror else ()
        else:
            mirrors = _unseen(flow, max(c_in, 1), where)
        return Flow("map", channels, _cf(n) if first else _cl(n), origin=where), mirrors
    if state in ("none", "unknown"):
        return flow, ()  # nothing to follow, or nothing left to see
    if op in (KEEP, CONCAT):
        return _channel_step(flow, step.data_format, where) if step.data_format else (flow, ())
    if op == POOL:
        if state == "outmap":
            return NONE, _channel_step(flow, step.data_format, where)[1]
        return NONE, ()  # one axis left: nothing to permute
    if op == FLATTEN and step.axes and step.axes != (1, -1):
        return _flatten_some(flow, step.axes[0], step.axes[1], where), ()
    if op == UNFLATTEN:
        return _unflatten(flow, step.axes[0], step.axes[1:], where), ()
    if op == FLATTEN:
        order = flow.order
        if step.data_format == "channels_first" and len(order) > 1:
            order = (*order[1:], order[0])
        if state == "map":
            return Flow("flat", flow.channels, order, origin=flow.origin), ()
        if state == "outmap":
            if order != tuple(range(len(order))):
                return opaque(flow, f"{where}, a flatten of reordered axes"), ()
            return Flow("out", feeds=flow.feeds), ()
        return flow, ()
    if op == PERMUTE:
        dims = step.axes
        if state in ("map", "outmap") and sorted(dims) == list(range(1, len(flow.order) + 1)):
            return flow._replace(order=tuple(flow.order[d - 1] for d in dims)), ()
        if state in ("flat", "out") and dims == (1,):
            return flow, ()
        return opaque(flow, where or "a permutation"), ()
    if op == RESHAPE:
        return _reshape(flow, step.axes, where), ()
    return opaque(flow, where or step.why or "a step that cannot be seen through"), ()


def _vectors(layer: Plan, shapes: Sequence[tuple[int, ...] | None], size: int) -> list[int]:
    """Positions in ``layer`` of the 1-d leaves of ``size`` features."""
    return [j for j, (i, _, _) in enumerate(layer) if (s := shapes[i]) and s == (size,)]


def _flat_rule(name: str, rule: Rule | None, channels: int, kernel: bool) -> Rule:
    """The rule of a leaf (of ``rule`` as it is) that reads a channels-last flatten: a
    kernel's input axis permuted (``Flattened`` of an (in, out) kernel, ``FlattenedWeight``
    of an (out, in) weight, which has no transform of its own), a vector's features."""
    own = rule.transform if rule is not None else None
    if type(own) in _OWN_LAYOUT:  # canonical (out, in) or a vector once its own rule is applied
        outer = FlattenedWeight(channels) if kernel else FlattenedVector(channels)
        return Rule(name, Composed(own, outer))
    if not kernel:
        return Rule(name, FlattenedVector(channels))
    native_out_in = rule is None or rule.transform is None
    return Rule(name, FlattenedWeight(channels) if native_out_in else Flattened(channels))


def _flattened(
    flow: Flow,
    layer: Plan,
    positions: Sequence[int],
    kernel: bool,
    where: str,
    native_first: bool = False,
) -> tuple[Plan, tuple[tuple[int, Unknown], ...]]:
    """The leaves at ``positions`` read the flatten of a map (state "flat" or "unknown"):
    ``Flattened`` or ``FlattenedWeight`` (a dense kernel) or ``FlattenedVector`` (a norm's
    vectors) in channels-last order, their rules as they are in PyTorch's, unknown otherwise:
    the plan then holds the default candidate's rules, channels_last on a channels-last
    backend, channels_first where ``native_first`` (a channels-first backend's own order)."""
    c, n = flow.channels, len(flow.order) - 1
    if flow.state == "flat" and flow.order == _cf(n):
        return layer, ()
    out, unknown = list(layer), []
    for j in positions:
        i, name, rule = layer[j]
        out[j] = (i, name, _flat_rule(name, rule, c, kernel))
    if flow.state == "flat" and flow.order == _cl(n):
        return out, ()
    if flow.state == "flat":
        reason = (
            f"{where} reads the output of {flow.origin} flattened with its axes in the order "
            f"{flow.order} (0: the channels): neither channels-last nor PyTorch's (C, H, W)"
        )
    else:
        reason = (
            f"{where} reads the output of {flow.origin}, but {flow.why} lies between them: "
            "whether it arrives flattened channels-last ((H, W, C): the channels_last "
            "candidate) or as PyTorch flattens ((C, H, W): channels_first) cannot be seen"
        )
    default = "channels_first" if native_first else "channels_last"
    for j in positions:
        i, name, rule = layer[j]
        candidates = {"channels_last": out[j][2], "channels_first": rule}
        unknown.append((j, Unknown(reason, candidates, default)))
    return (layer if native_first else out), tuple(unknown)


def decide(
    flow: Flow,
    kind: str | None,
    layer: Plan,
    shapes: Sequence[tuple[int, ...] | None],
    where: str,
    token: int,
    channels_first: bool = False,
    groups: int = 1,
    native_first: bool = False,
) -> Decision:
    """The layout rules of one layer with leaves, given the ``flow`` of the activations that
    reach it, and the flow after it.

    ``layer`` is the layer's :func:`plan`, ``shapes`` its native leaf shapes by index,
    ``where`` its path (for messages), ``token`` the key of its leaves should a reshape of
    its output decide them later (a dense layer's), ``channels_first`` and ``groups`` a
    conv's own settings. ``native_first``: the backend is channels-first (``CHANNELS_FIRST``:
    a leaf without a transform is canonical, a dense weight (out, in); an unknown layout
    defaults to channels_first, the rule the leaf has). The rules (the canonical weight is
    what PyTorch's twin holds):

    - a conv starts a feature map of its output channels (channels-last, unless it says
      ``channels_first``, as every conv of a channels-first backend does) and reads the feeds
      before it as a map of its input channels;
    - a dense layer on the flatten of a map: ``Flattened(C)`` (``FlattenedWeight(C)`` of an
      (out, in) weight) where the flatten is channels-last, nothing where it is PyTorch's
      (C, H, W), unknown where the flow was lost (its input a multiple > 1 of C); its output
      is a :class:`Feed`: a reshape into a feature map and a layer that reads it as one
      decide its kernel and bias (:func:`mirrored`);
    - a norm: on the flatten, its vectors as a dense kernel's input axis; on a dense output,
      its vectors as that dense layer's bias; on a reshaped dense output, it reads the
      channels last (a channels-first backend's batch or group norm: first; its layer norm,
      over the last axis, reads no channels);
    - any other kind ends what the flow followed.
    """
    state = flow.state
    if kind in CONVS:
        i, _, rule = layer[0]  # the kernel
        shape = shapes[i]
        t = rule.transform if rule else None
        if not shape or (t is None and not native_first):
            return Decision(NONE, layer)
        canonical = t.shape(shape) if t else shape  # (out, in, *k); transposed: (in, out, *k)
        if kind == "conv_transpose":  # (in, out / groups, *k)
            c_in, c_out = canonical[0], canonical[1] * groups
        elif kind == "depthwise_conv":
            c_in, c_out = shape[-2], canonical[0]
        else:
            c_in, c_out = canonical[1] * groups, canonical[0]
        mirrors: tuple[Mirror, ...] = ()
        if state == "outmap":
            mirror, _ = _consume(flow, flow.order[0] if channels_first else flow.order[-1], where)
            mirrors = (mirror,) if mirror else ()
        elif flow.feeds:  # "out": a conv on no reshape it can be seen through; "unknown"
            mirrors = _unseen(flow, c_in, where)
        n = len(shape) - 2
        order = _cf(n) if channels_first else _cl(n)
        return Decision(Flow("map", c_out, order, origin=where), layer, mirrors=mirrors)
    if kind == "dense":
        i, _, rule = layer[0]  # the kernel, (in, out), or natively (out, in): a weight
        t = rule.transform if rule else None
        if t is None and not native_first:
            return Decision(NONE, layer)
        pend = dense_pend(layer)
        c = flow.channels
        if not c:  # no map to flatten: its output starts a feed, its shape read when needed
            return Decision(fed(token, where), layer, pend=pend)
        shape = shapes[i]
        if not (shape and len(t.shape(shape) if t else shape) == 2):  # (out, in) once canonical
            return Decision(NONE, layer)
        units, n_in = t.shape(shape) if t else shape
        feed = Feed(token, units, where)
        out = Flow("out", feeds=(feed,))
        if state == "map":  # on the last axis of every position: no flatten to follow
            if flow.order[-1] == 0 and n_in == c:
                c = units
            return Decision(
                opaque(flow._replace(channels=c), f"{where}, a dense layer on a feature map"), layer
            )
        if state in ("flat", "unknown") and c and n_in > c and n_in % c == 0:
            planned, unknown = _flattened(flow, layer, (0,), True, where, native_first)
            return Decision(out, planned, unknown, pend)
        if state == "unknown" and n_in == c:  # maybe on each position of a map
            lost = Flow("unknown", units, feeds=(feed,), origin=where, why=flow.why)
            return Decision(lost, layer, pend=pend)
        return Decision(out, layer, pend=pend)
    if kind in NORMS:
        c = flow.channels
        if state in ("flat", "unknown") and c:
            # the size of its vectors (the first one's: a norm's are all one size)
            size = next((s[0] for i, _, _ in layer if (s := shapes[i]) and len(s) == 1), 0)
            if size > c and size % c == 0:
                planned, unknown = _flattened(
                    flow, layer, _vectors(layer, shapes, size), False, where, native_first
                )
                return Decision(flow, planned, unknown)
        if state in ("out", "unknown") and flow.feeds:
            # vectors of a dense layer's output size: its features, in its order
            for k, feed in enumerate(flow.feeds):
                pend = tuple(_vectors(layer, shapes, feed.units))
                if pend:
                    feeds = (feed, *flow.feeds[:k], *flow.feeds[k + 1 :])
                    return Decision(flow._replace(feeds=feeds), layer, pend=pend)
        if state == "outmap" and native_first and kind == "layer_norm":
            # over the last axis, whichever it is: the order stays, for a later layer to read
            last = flow.dims[flow.order[-1]]
            if not _vectors(layer, shapes, last):
                wide = opaque(flow, f"{where}, a norm over more than the last axis")
                return Decision(wide, layer)
            return Decision(flow, layer)
        if state == "outmap":  # over the channels of the reshaped output
            label = flow.order[0] if native_first else flow.order[-1]
            mirror, as_map = _consume(flow, label, where)
            if not _vectors(layer, shapes, as_map.channels):
                return Decision(opaque(flow, f"{where}, a norm over another axis"), layer)
            return Decision(as_map, layer, mirrors=(mirror,) if mirror else ())
        return Decision(flow, layer)
    return Decision(NONE, layer)


def mirrored(rule: Rule, ndim: int, channels: int) -> Rule:
    """The rule of a leaf of a dense layer (its (in, out) kernel, ``ndim`` 2, or a vector of
    its output features: its bias, a norm's vectors after it) whose output is reshaped into a
    channels-last feature map of ``channels``: :class:`Unflattened` (``UnflattenedWeight`` of
    a weight stored (out, in): no transform of its own), or :class:`FlattenedVector`; a leaf
    with a layout of its own (:class:`Einsum`, :class:`Flat`) takes it after that one."""
    own = rule.transform
    if type(own) in _OWN_LAYOUT:
        outer = UnflattenedWeight(channels) if ndim == 2 else FlattenedVector(channels)
        return Rule(rule.canonical, Composed(own, outer))
    if ndim != 2:
        return Rule(rule.canonical, FlattenedVector(channels))
    t = UnflattenedWeight(channels) if rule.transform is None else Unflattened(channels)
    return Rule(rule.canonical, t)


def mirror_unknown(rule: Rule, ndim: int, mirror: Mirror) -> Unknown:
    """The :class:`Unknown` of a leaf of ``mirror``'s feed, whose order could not be seen: its
    default is PyTorch's order (the rule it has until a reshape is seen)."""
    candidates = {"channels_last": mirrored(rule, ndim, mirror.channels), "channels_first": rule}
    return Unknown(mirror.reason, candidates, "channels_first")


def flattens(rule: Rule | None) -> bool:
    """Whether ``rule`` is one a layer's use decided (the flatten of a conv output before it,
    or a reshape of its output after): its layout then depends on that use."""
    if rule is None:
        return False
    t = rule.transform
    return type(t.outer if type(t) is Composed else t) in _USE_DECIDED


_USE_DECIDED = (Flattened, FlattenedVector, Unflattened, FlattenedWeight, UnflattenedWeight)
# Layouts of a leaf's own that a use-decided transform composes with (after them)
_OWN_LAYOUT = (Einsum, Flat)
