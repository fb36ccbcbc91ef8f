"""The parts of a Keras model's structure that Keras itself does not name: the layers a
layer's list or dict attribute holds (:class:`Container`, a node of its own), the variables
of a layer not built yet (:class:`Unbuilt`), and the order of a layer's attribute children
(the order Keras tracked them in)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras

from unitree.layouts import CONVS

from ._keras_backend import backend

_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell)


class Unbuilt:
    """A variable a layer creates when it is built: its name is known, its shape is not."""

    __slots__ = ("name", "trainable")

    def __init__(self, name: str, trainable: bool) -> None:
        self.name = name
        self.trainable = trainable

    def __repr__(self) -> str:
        return f"<Unbuilt {self.name}: the layer is built on its first call>"


def _pending(layer: keras.Layer, kind: str | None) -> list[tuple[str, bool]]:
    """(name, trainable) of the variables ``layer`` will create, for the kinds whose build we know.

    A recurrent layer's variables are its cell's (``cell.kernel``); an attention layer creates
    its projection sublayers when it is built, so it shows none before.
    """
    if kind == "dense" or kind in CONVS:
        # an EinsumDense has a bias where it has bias axes
        bias = layer.use_bias if hasattr(layer, "use_bias") else layer.bias_axes is not None
        return [("kernel", True)] + ([("bias", True)] if bias else [])
    if isinstance(layer, _CELLS):
        out = [("kernel", True), ("recurrent_kernel", True)]
        return out + ([("bias", True)] if layer.use_bias else [])
    if kind == "embedding":
        return [("embeddings", True)]
    if kind in ("layer_norm", "batch_norm", "group_norm"):
        out = [("gamma", True)] if layer.scale else []
        out += [("beta", True)] if layer.center else []
        if kind == "batch_norm":
            out += [("moving_mean", False), ("moving_variance", False)]
        return out
    return []


class Container:
    """A list, tuple or dict of layers held by a layer attribute: a node of its own.

    It reads its items live from its owner, so a reassigned attribute shows
    the new items; one object per (owner, key) keeps the tree's identities stable.
    """

    __slots__ = ("__weakref__", "_key", "_owner", "_subs")

    def __init__(self, owner: Any, key: Any) -> None:
        self._owner = owner  # a Layer, or the Container this one is an item of
        self._key = key
        self._subs: dict[Any, Container] = {}

    @property
    def value(self) -> Any:
        owner = self._owner
        if isinstance(owner, Container):
            return owner.value[self._key]
        return backend.attributes(owner)[self._key]

    def sub(self, key: Any) -> Container:
        found = self._subs.get(key)
        if found is None:
            found = self._subs[key] = Container(self, key)
        return found


def _is_sequence(value: Any) -> bool:
    # Not a namedtuple: that is a record (TensorFlow keeps its tracking references in them).
    # TensorFlow wraps a tuple attribute in a proxy that passes isinstance(value, tuple).
    return isinstance(value, list) or (isinstance(value, tuple) and not hasattr(value, "_fields"))


def _has_layer(value: Any) -> bool:
    if isinstance(value, keras.Layer):
        return True
    if _is_sequence(value):
        return any(_has_layer(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_layer(v) for v in value.values())
    return False


def _items(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return value.items()
    return enumerate(value)


def _first_layer(value: Any, order: Mapping[int, int]) -> int:
    """Where the first layer inside ``value`` was tracked: the assignment order of its attribute."""
    if isinstance(value, keras.Layer):
        return order.get(id(value), len(order))
    return min(
        (_first_layer(v, order) for _, v in _items(value) if _has_layer(v)), default=len(order)
    )
