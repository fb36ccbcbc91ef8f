"""What a Keras layer does to the layout of the activations: ``KerasAdapter.step``.

The core follows the activations from a conv to a dense layer that may read their flatten
(and from a dense layer to a conv that may read its output reshaped) through the model's
own parameterless layers (``unitree.layouts.after_step``). Keras says what they are:

- ``Flatten`` (with its ``data_format``: ``channels_first`` moves the first axis last
  before flattening, as ``Flatten.call`` does), ``Permute`` (its ``dims``), ``Reshape``
  (its ``target_shape``), global poolings (``keepdims``: the layout stays), ``Concatenate``
  (its ``axis``);
- activations, dropout, noise, elementwise merges, normalizations without variables: the
  layout stays; poolings, upsampling, padding and cropping too, finding the channels by
  their ``data_format`` (the 1-d ones, which have none, are channels-last);
- a separable conv, which the tables do not know, starts a map of its filters (``MAP``);
- a ``Sequential`` calls its layers in order (``CHAIN``), a functional model as its graph
  says (``GRAPH``: each layer's inputs, looked through a Keras operation that is no layer,
  ``keras.ops.reshape`` say, as unknown);
- anything else, a ``Lambda``, a custom layer, a subclassed model's ``call``, and a known
  class whose ``call`` a subclass overrides, is ``UNKNOWN``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import keras
from keras.src.models.functional import Functional  # no public name; stable across Keras 3

from unitree.layouts import (
    CHAIN,
    CONCAT,
    FLATTEN,
    GRAPH,
    KEEP,
    MAP,
    PERMUTE,
    POOL,
    RESHAPE,
    UNKNOWN,
    Step,
    Wire,
)

_KEEP = Step(KEEP)
_CHAIN = Step(CHAIN)


def _classes(names: str) -> list[type]:
    """The ``keras.layers`` classes of these names that this Keras has."""
    return [c for n in names.split() if isinstance(c := getattr(keras.layers, n, None), type)]


def _channels(layer: Any) -> str:
    return getattr(layer, "data_format", None) or "channels_last"


def _separable(layer: Any) -> Step:
    """A separable conv (no kind the tables know): a new map of its filters."""
    kernel = getattr(layer, "depthwise_kernel", None)  # (*k, in, multiplier); None unbuilt
    c_in = int(kernel.shape[-2]) if kernel is not None else 0
    return Step(MAP, (int(layer.filters), len(layer.kernel_size), c_in), _channels(layer))


def _global(layer: Any) -> Step:
    op = KEEP if getattr(layer, "keepdims", False) else POOL
    return Step(op, data_format=_channels(layer))


# The layout stays: per position, or elementwise. The normalizations: without variables
# (center=False, scale=False), which have no kind the core decides.
_KEEPS = """Activation ReLU LeakyReLU PReLU ELU Softmax Dropout GaussianNoise GaussianDropout
    AlphaDropout ActivityRegularization Identity Masking Add Subtract Multiply Average Maximum
    Minimum Rescaling UnitNormalization InputLayer LayerNormalization BatchNormalization
    GroupNormalization"""
# The layout stays, the channels found by the layer's data_format (channels-last without one).
_SPATIAL = """MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D
    AveragePooling3D AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D
    AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D UpSampling1D UpSampling2D
    UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D
    SpatialDropout1D SpatialDropout2D SpatialDropout3D"""
_GLOBAL = """GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D"""

_STEPS: dict[type, Callable[[Any], Step]] = {
    **dict.fromkeys(_classes(_KEEPS), lambda layer: _KEEP),
    **dict.fromkeys(_classes(_SPATIAL), lambda layer: Step(KEEP, data_format=_channels(layer))),
    **dict.fromkeys(_classes(_GLOBAL), _global),
    **dict.fromkeys(_classes("SeparableConv1D SeparableConv2D"), _separable),
    keras.layers.Flatten: lambda layer: Step(FLATTEN, data_format=_channels(layer)),
    keras.layers.Permute: lambda layer: Step(PERMUTE, tuple(int(d) for d in layer.dims)),
    keras.layers.Reshape: lambda layer: Step(
        RESHAPE, tuple(-1 if d is None else int(d) for d in layer.target_shape)
    ),
    keras.layers.Concatenate: lambda layer: Step(CONCAT, (int(layer.axis),)),
    keras.Sequential: lambda model: _CHAIN,
    Functional: lambda model: _graph(model),
}

_graphs: weakref.WeakKeyDictionary[Any, Step] = weakref.WeakKeyDictionary()


def step(layer: Any) -> Step:
    """What ``layer`` does to the layout (``Adapter.step``): by the nearest class of its MRO
    that the table knows, if that class's ``call`` is the one the layer runs."""
    cls = type(layer)
    for base in cls.__mro__:
        make = _STEPS.get(base)
        if make is not None:
            if cls.call is not base.call:  # a subclass with a call of its own: unseen
                break
            return make(layer)
    what = "a Lambda layer" if isinstance(layer, keras.layers.Lambda) else ""
    return Step(UNKNOWN, why=what)


def _graph(model: Any) -> Step:
    """A functional model's graph as wires: each child's inputs (positions among its layers,
    input layers not counted, as ``KerasAdapter.children`` lists them; -1 the model's input),
    and its outputs. Remembered per model: a functional model's graph is fixed."""
    found = _graphs.get(model)
    if found is None:
        found = _graphs[model] = _wires(model)
    return found


def _wires(model: Any) -> Step:
    layers = [x for x in model.layers if not isinstance(x, keras.layers.InputLayer)]
    index = {id(x): k for k, x in enumerate(layers)}
    nodes = set(getattr(model, "_nodes", ()))  # keys of the graph's calls: Keras's make_node_key
    inputs = {id(t) for t in model.inputs}

    def sources(tensor: Any, seen: set[int]) -> tuple[set[int], str]:
        """The children (or -1, the input) ``tensor`` comes from, and the first operation that
        is no layer on the way, if any."""
        history = getattr(tensor, "_keras_history", None)
        op = None if history is None else history.operation
        if id(tensor) in inputs or op is None or isinstance(op, keras.layers.InputLayer):
            return {-1}, ""
        k = index.get(id(op))
        if k is not None:
            return {k}, ""
        if id(op) in seen:  # a cycle: no graph Keras builds; fail closed
            return {-1}, f"the operation {type(op).__name__}"
        seen.add(id(op))
        found: set[int] = set()
        for t in op._inbound_nodes[history.node_index].input_tensors:
            found |= sources(t, seen)[0]
        return found or {-1}, f"the Keras operation {type(op).__name__} (not a layer)"

    def wire(tensor: Any) -> Wire:
        found, through = sources(tensor, set())
        return Wire(tuple(sorted(found)), through)

    wires = []
    for layer in layers:
        called = [n for i, n in enumerate(layer._inbound_nodes) if f"{id(layer)}_ib-{i}" in nodes]
        if len(called) != 1:  # a layer called at two places of the graph: one flow per call
            return Step(UNKNOWN, why=f"{type(model).__name__} calls a layer more than once")
        wires.append(tuple(wire(t) for t in called[0].input_tensors))
    return Step(GRAPH, wires=tuple(wires), outputs=tuple(wire(t) for t in model.outputs))
