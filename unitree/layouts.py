"""Canonical leaf names and layouts: the one table every backend is read through.

Canonical means what PyTorch holds for the same layer (DESIGN §3): a 4 -> 8
dense layer has ``weight`` of shape (8, 4). A rule maps one native leaf name
of one layer kind on one backend to its canonical name and, where the axes
differ, to the permutation that turns the native array into the canonical
one. The order of a kind's rules is the canonical leaf order (weight before
bias). A layer kind or leaf that has no rule keeps its native name and layout.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

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

    def to_native(self, a: np.ndarray) -> np.ndarray:
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

    def to_native(self, a: np.ndarray) -> np.ndarray:
        out, n = a.shape
        c = self.channels
        return a.reshape(out, c, n // c).transpose(2, 1, 0).reshape(n, out)


class Codec:
    """The canonical leaves of a layer computed from its whole subtree (see ``unitree._canon``).

    ``to_canonical`` takes {path relative to the layer: value} (as the tree
    shows them: inner dense layers already canonical) and returns {canonical
    leaf: value}; ``to_native`` goes back, given the native shapes. ``note``
    says what a port through it changes, for the report.
    """

    def __init__(
        self,
        leaves: tuple[str, ...],
        to_canonical: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        to_native: Callable[
            [dict[str, np.ndarray], dict[str, tuple[int, ...]]], dict[str, np.ndarray]
        ],
        note: str = "",
    ) -> None:
        self.leaves = leaves
        self.to_canonical = to_canonical
        self.to_native = to_native
        self.note = note

    def shapes(self, native: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        zeros = {
            rel: np.broadcast_to(np.zeros((), np.float32), shape) for rel, shape in native.items()
        }
        return {leaf: a.shape for leaf, a in self.to_canonical(zeros).items()}


class Rule(NamedTuple):
    canonical: str
    transform: Any = None  # Permute, Flattened...: native <-> canonical values; None: the same


_KERNEL = Rule("weight", Permute(channels_last_kernel))
_WEIGHT, _BIAS = Rule("weight"), Rule("bias")

LAYOUTS: dict[tuple[str, str], dict[str, Rule]] = {
    ("keras", "dense"): {"kernel": _KERNEL, "bias": _BIAS},
    ("keras", "conv"): {"kernel": _KERNEL, "bias": _BIAS},
    ("keras", "embedding"): {"embeddings": _WEIGHT},
    ("keras", "layer_norm"): {"gamma": _WEIGHT, "beta": _BIAS},
    ("keras", "batch_norm"): {
        "gamma": _WEIGHT,
        "beta": _BIAS,
        "moving_mean": Rule("running_mean"),
        "moving_variance": Rule("running_var"),
    },
    ("flax", "dense"): {"kernel": _KERNEL, "bias": _BIAS},
    ("flax", "conv"): {"kernel": _KERNEL, "bias": _BIAS},
    ("flax", "embedding"): {"embedding": _WEIGHT},
    ("flax", "layer_norm"): {"scale": _WEIGHT, "bias": _BIAS},
    ("flax", "batch_norm"): {
        "scale": _WEIGHT,
        "bias": _BIAS,
        "mean": Rule("running_mean"),
        "var": Rule("running_var"),
    },
    ("gluon", "layer_norm"): {"gamma": _WEIGHT, "beta": _BIAS},
    ("gluon", "batch_norm"): {
        "gamma": _WEIGHT,
        "beta": _BIAS,
        "running_mean": Rule("running_mean"),
        "running_var": Rule("running_var"),
    },
}


CODECS: dict[tuple[str, str], Codec] = {}


def rules(backend: str, kind: str | None) -> dict[str, Rule] | None:
    """The rules of one layer kind on one backend, in canonical leaf order, or None."""
    return LAYOUTS.get((backend, kind)) if kind else None


def codec_for(backend: str, kind: str | None) -> Codec | None:
    """The codec of a layer kind whose canonical leaves are computed from its subtree, or None."""
    return CODECS.get((backend, kind)) if kind else None


def has_codecs(backend: str) -> bool:
    return any(b == backend for b, _ in CODECS)


def has_rules(backend: str) -> bool:
    """Whether any layer kind of ``backend`` differs from the canonical layout."""
    return backend in _BACKENDS


_BACKENDS = {backend for backend, _ in LAYOUTS}

# Canonical leaves a framework may lack without changing results: PyTorch's batch-norm counter.
OPTIONAL = frozenset({"num_batches_tracked"})

# Backends whose conv layers are channels-last by default: a dense layer fed by the flatten of
# a conv output needs its input axis permuted (see Flattened). Norms keep the channels.
CHANNELS_LAST = frozenset({"keras", "flax"})
NORMS = frozenset({"batch_norm", "layer_norm", "group_norm"})


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return tuple(inv)
