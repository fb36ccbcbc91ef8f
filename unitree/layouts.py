"""Canonical leaf names and layouts: the one table every backend is read through.

Canonical means what PyTorch holds for the same layer (DESIGN §3): a 4 -> 8
dense layer has ``weight`` of shape (8, 4). A rule maps one native leaf name
of one layer kind on one backend to its canonical name and, where the axes
differ, to the permutation that turns the native array into the canonical
one. The order of a kind's rules is the canonical leaf order (weight before
bias). A layer kind or leaf that has no rule keeps its native name and layout.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

Perm = Callable[[int], tuple[int, ...]]


def channels_last_kernel(ndim: int) -> tuple[int, ...]:
    """Axes of a (*k, in, out) kernel in (out, in, *k) order: dense (in, out) -> (out, in) too."""
    return (ndim - 1, ndim - 2, *range(ndim - 2))


class Rule(NamedTuple):
    canonical: str
    perm: Perm | None = None  # native -> canonical axes, given the number of axes


_KERNEL = Rule("weight", channels_last_kernel)
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


def rules(backend: str, kind: str | None) -> dict[str, Rule] | None:
    """The rules of one layer kind on one backend, in canonical leaf order, or None."""
    return LAYOUTS.get((backend, kind)) if kind else None


def has_rules(backend: str) -> bool:
    """Whether any layer kind of ``backend`` differs from the canonical layout."""
    return backend in _BACKENDS


_BACKENDS = {backend for backend, _ in LAYOUTS}


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    inv = [0] * len(perm)
    for i, axis in enumerate(perm):
        inv[axis] = i
    return tuple(inv)
