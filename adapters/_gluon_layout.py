"""What a Gluon block does to the layout of the activations: ``GluonAdapter.step``.

Gluon's maps are (C, H, W) (layout ``NCHW``), its flatten PyTorch's order: what a Gluon model
holds is canonical, unless the model reorders a map before it flattens it (a transpose to
(H, W, C) in a custom block). The core follows the activations from a conv to a ``Dense``
that may read their flatten (and from a ``Dense`` to a conv that may read its output
reshaped) through the model's own blocks (``unitree.layouts.after_step``), as this says:

- ``nn.Flatten``; a ``Dense`` with ``flatten=True`` (the default) flattens its input itself
  before its matmul, in the same (C, H, W) order (asked of a ``Dense`` reading a map);
- activations, ``Dropout``, ``contrib.nn.Identity``: the layout stays; poolings (global ones
  keep their axes), ``ReflectionPad2D``, ``InstanceNorm``: it stays, the channels found by
  their ``layout`` (first unless it says ``NWC``, ``NHWC``...);
- ``HybridSequential`` and ``Sequential`` call their blocks in order (``CHAIN``);
- anything else, a custom ``HybridBlock`` (a user's reshape or transpose), a ``HybridLambda``,
  and a known class whose ``forward`` or ``hybrid_forward`` a subclass overrides, is
  ``UNKNOWN``. Norms, convs and ``Dense`` are layers the core decides itself
  (``layouts.decide``), by their kind.
"""

from __future__ import annotations

from typing import Any, Callable

from mxnet.gluon import nn

from unitree.layouts import CHAIN, FLATTEN, KEEP, UNKNOWN, Step

_KEEP = Step(KEEP)
_FLATTEN = Step(FLATTEN)
_CHAIN = Step(CHAIN)


def _classes(module: Any, names: str) -> list[type]:
    """The classes of these names that ``module`` has (this MXNet's)."""
    return [c for n in names.split() if isinstance(c := getattr(module, n, None), type)]


def _contrib() -> Any:
    try:
        from mxnet.gluon.contrib import nn as contrib
    except ImportError:  # pragma: no cover - every MXNet 1.x ships it
        return None
    return contrib


_KEEPS = "Activation LeakyReLU PReLU ELU SELU Swish GELU SiLU Dropout"
_SPATIAL = """MaxPool1D MaxPool2D MaxPool3D AvgPool1D AvgPool2D AvgPool3D GlobalMaxPool1D
    GlobalMaxPool2D GlobalMaxPool3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
    ReflectionPad2D InstanceNorm"""


def _spatial(block: Any) -> Step:
    """A step that finds the channels by its layout (``NCHW``: first; ``NHWC``: last)."""
    layout = getattr(block, "_kwargs", {}).get("layout", "NC")
    first = layout.startswith("NC")
    axis = getattr(block, "_kwargs", {}).get("axis", 1)  # InstanceNorm's channels
    if axis not in (1, -1):
        return Step(UNKNOWN, why=f"the {type(block).__name__} block over axis {axis}")
    last = not first or axis == -1
    return Step(KEEP, data_format="channels_last" if last else "channels_first")


def _dense(block: Any) -> Step:
    """A ``Dense`` flattens its input first unless ``flatten=False``: then it acts on the
    last axis, which the core reads as it does any dense layer's."""
    return _FLATTEN if getattr(block, "_flatten", True) else _KEEP


_STEPS: dict[type, Callable[[Any], Step]] = {
    **dict.fromkeys(_classes(nn, _KEEPS), lambda block: _KEEP),
    **dict.fromkeys(_classes(nn, _SPATIAL), _spatial),
    nn.Flatten: lambda block: _FLATTEN,
    nn.Dense: _dense,
    nn.HybridSequential: lambda block: _CHAIN,
    nn.Sequential: lambda block: _CHAIN,
}
if (_contrib_nn := _contrib()) is not None:
    _STEPS.update(dict.fromkeys(_classes(_contrib_nn, "Identity"), lambda block: _KEEP))


def _runs(cls: type, base: type) -> bool:
    """Whether ``cls`` runs ``base``'s own ``forward`` and ``hybrid_forward``."""
    return cls.forward is base.forward and getattr(cls, "hybrid_forward", None) is getattr(
        base, "hybrid_forward", None
    )


def _unknown(block: Any) -> Step:
    name = type(block).__name__
    if isinstance(block, (nn.HybridLambda, nn.Lambda)):
        return Step(UNKNOWN, why=f"the {name} block")
    return Step(UNKNOWN, why=f"the {name} block (a forward unitree cannot read)")


class _ByClass(dict):
    """Block class -> how to make its step: the nearest class of its MRO that ``_STEPS``
    knows, if the block runs that class's own forward. Remembered per class."""

    def __missing__(self, cls: type) -> Callable[[Any], Step]:
        make = _unknown
        for base in cls.__mro__:
            if base in _STEPS:
                if _runs(cls, base):
                    make = _STEPS[base]
                break
        self[cls] = make
        return make


_by_class = _ByClass()


def step(block: Any) -> Step:
    """What ``block`` does to the layout (``Adapter.step``), by its class (``_ByClass``)."""
    return _by_class[type(block)](block)
