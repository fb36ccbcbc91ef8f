"""What a torch module does to the layout of the activations: ``TorchAdapter.step``.

PyTorch's maps are (C, H, W), its flatten PyTorch's own order: what a torch model holds is
canonical, unless the model reorders a map before it flattens it (a permute to (H, W, C) in
a custom module or forward, as a port from Keras writes it). The core follows the
activations from a conv to a ``Linear`` that may read their flatten (and from a ``Linear``
to a conv that may read its output unflattened) through the model's own modules
(``unitree.layouts.after_step``), as this says they are:

- ``nn.Flatten`` (its ``start_dim`` and ``end_dim``), ``nn.Unflatten`` (its ``dim`` and
  sizes);
- activations, dropouts, ``nn.Identity``: the layout stays; poolings (adaptive ones too),
  padding, upsampling, instance and local response norms: it stays, the channels first;
- ``nn.Sequential`` calls its modules in order (``CHAIN``);
- anything else, a custom module (a user's ``Permute``, whose ``forward`` no one reads) or
  a module with a ``forward`` of its own that holds children (a model written as a class),
  and a known class whose ``forward`` a subclass overrides, is ``UNKNOWN``. Norms, convs
  and ``Linear`` are layers the core decides itself (``layouts.decide``), by their kind.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from unitree.layouts import CHAIN, FLATTEN, KEEP, UNFLATTEN, UNKNOWN, Step

_KEEP = Step(KEEP)
_SPATIAL_STEP = Step(KEEP, data_format="channels_first")
_FLATTEN = Step(FLATTEN)


def _classes(names: str) -> list[type]:
    """The ``torch.nn`` classes of these names that this torch has."""
    return [c for n in names.split() if isinstance(c := getattr(nn, n, None), type)]


# The layout stays: elementwise, or along one axis without moving it (a softmax).
_KEEPS = """Identity ReLU ReLU6 LeakyReLU PReLU RReLU ELU SELU CELU GELU SiLU Mish Hardswish
    Hardsigmoid Hardtanh Hardshrink Softshrink Tanhshrink Tanh Sigmoid LogSigmoid Softplus
    Softsign Threshold Softmax LogSoftmax Softmin Softmax2d Dropout Dropout1d Dropout2d
    Dropout3d AlphaDropout FeatureAlphaDropout"""
# The layout stays, the channels found first (the axis after the batch axis).
_SPATIAL = """MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d
    AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d
    LPPool1d LPPool2d LPPool3d FractionalMaxPool2d FractionalMaxPool3d Upsample
    UpsamplingNearest2d UpsamplingBilinear2d ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d
    ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d
    ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d
    CircularPad3d InstanceNorm1d InstanceNorm2d InstanceNorm3d LocalResponseNorm"""


def _flatten(m: nn.Flatten) -> Step:
    axes = (int(m.start_dim), int(m.end_dim))
    return _FLATTEN if axes == (1, -1) else Step(FLATTEN, axes)


def _unflatten(m: nn.Unflatten) -> Step:
    sizes = m.unflattened_size
    if not all(isinstance(n, int) for n in sizes):  # a named tensor's (name, size) pairs
        return Step(UNKNOWN, why=f"the Unflatten module of named sizes {sizes!r}")
    return Step(UNFLATTEN, (int(m.dim), *sizes))


_STEPS: dict[type, Callable[[Any], Step]] = {
    **dict.fromkeys(_classes(_KEEPS), lambda m: _KEEP),
    **dict.fromkeys(_classes(_SPATIAL), lambda m: _SPATIAL_STEP),
    nn.Flatten: _flatten,
    nn.Unflatten: _unflatten,
    nn.Sequential: lambda m: Step(CHAIN),
}


def _unknown(m: nn.Module) -> Step:
    return Step(UNKNOWN, why=f"the {type(m).__name__} module (a forward unitree cannot read)")


class _ByClass(dict):
    """Module class -> how to make its step: the nearest class of its MRO that ``_STEPS``
    knows, if that class's ``forward`` is the one the module runs (a subclass with a forward
    of its own is unknown). Remembered per class: a read asks once per module."""

    def __missing__(self, cls: type) -> Callable[[Any], Step]:
        make = _unknown
        for base in cls.__mro__:
            if base in _STEPS:
                if cls.forward is base.forward:
                    make = _STEPS[base]
                break
        self[cls] = make
        return make


_by_class = _ByClass()


def step(module: nn.Module) -> Step:
    """What ``module`` does to the layout (``Adapter.step``), by its class (``_ByClass``)."""
    return _by_class[type(module)](module)
