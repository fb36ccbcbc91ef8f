"""The canonical view of a tree, layer by layer: what checkpoints and ports read and write.

Most layers map leaf to leaf (a Param's rule). A few layers have canonical
leaves that are no single native leaf — Keras's one LSTM bias against
PyTorch's two, linen's LSTM cell made of one dense layer per gate, attention
projections kept apart or fused — so the canonical leaves of such a layer
are computed from its whole subtree by a codec (``layouts.CODECS``). A
checkpoint and ``state_dict()`` hold the canonical leaves; ``tree[path]``
shows the native ones for those layers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._adapter import Adapter
from ._errors import UninitializedError
from ._param import Param, is_persistent
from ._paths import Path, join, keystr
from ._read import View
from .layouts import Codec, codec_for, has_codecs


class Layer:
    """The leaves of one module occurrence, canonical: a plain layer or a codec's layer."""

    __slots__ = ("adapter", "at", "codec", "module", "params", "path")

    def __init__(self, adapter: Adapter, at: Path, module: Any, codec: Codec | None) -> None:
        self.adapter = adapter
        self.at = at  # typed, relative to the node the layers were listed from
        self.path = keystr(at)  # as users see it
        self.module = module
        self.codec = codec
        # plain: canonical leaf name -> Param; codec: path relative to the layer -> Param
        self.params: dict[str, Param] = {}

    @property
    def kind(self) -> str | None:
        return self.adapter.kind(self.module)

    @property
    def type_name(self) -> str:
        return self.adapter.type_name(self.module)

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """{canonical leaf: canonical shape}, in canonical order."""
        if self.codec is None:
            return {leaf: p.shape for leaf, p in self.params.items()}
        native = {rel: p.shape for rel, p in self.params.items()}
        if any(shape is None for shape in native.values()):
            raise UninitializedError(
                f"{self.path or 'The model'} ({self.type_name}) is not built yet: its canonical "
                "leaves are computed from its shapes. Run the model once on an input first."
            )
        return self.codec.shapes(native)

    def dtype(self, leaf: str) -> str:
        p = self.params[leaf] if self.codec is None else next(iter(self.params.values()))
        return p.dtype

    def persistent(self, leaf: str) -> bool:
        return self.codec is not None or is_persistent(self.params[leaf])

    def read(self) -> dict[str, np.ndarray]:
        """{canonical leaf: value}: views where the layout allows, for a plain layer."""
        if self.codec is None:
            return {leaf: p.numpy() for leaf, p in self.params.items()}
        return self.codec.to_canonical({rel: p.numpy() for rel, p in self.params.items()})

    def writes(
        self, values: dict[str, Callable[[], np.ndarray]]
    ) -> list[tuple[Param, Callable[[], np.ndarray]]]:
        """(Param, thunk of its canonical value) for the leaves in ``values`` (thunks: canonical
        values of this layer's leaves). A codec's layer is computed at the first thunk called;
        its leaves missing from ``values`` keep their current value."""
        if self.codec is None:
            return [(self.params[leaf], get) for leaf, get in values.items()]
        codec, params = self.codec, self.params
        cache: dict[str, np.ndarray] = {}

        def native(rel: str) -> np.ndarray:
            if not cache:
                current = self.read()  # the leaves not in ``values`` keep their value
                full = {
                    leaf: values[leaf]() if leaf in values else current[leaf] for leaf in current
                }
                shapes = {r: p.shape for r, p in params.items()}
                cache.update(codec.to_native(full, shapes))
            return cache.pop(rel)

        return [(p, lambda rel=rel: native(rel)) for rel, p in params.items()]


def layers(view: View) -> list[Layer]:
    """Every module occurrence under the node of ``view`` that holds leaves, in traversal order
    (a tied module at each of its positions), with paths relative to the node."""
    modules = dict(view.modules())
    adapter = view.adapter
    codecs: dict[Path, Codec] = {}
    if has_codecs(adapter.name):
        for path, module in modules.items():
            codec = codec_for(adapter.name, adapter.kind(module))
            if codec is not None and not any(path[: len(outer)] == outer for outer in codecs):
                codecs[path] = codec  # the outermost: a codec computes its whole subtree
    out: list[Layer] = []
    current: Layer | None = None
    current_owner: Path | None = None
    for path, p in view.leaves():
        owner, leaf = path[:-1], str(path[-1])
        for n in range(len(path)) if codecs else ():
            if path[:n] in codecs:
                owner, leaf = path[:n], keystr(path[n:])
                break
        if current is None or current_owner != owner:
            current = Layer(adapter, owner, modules[owner], codecs.get(owner))
            current_owner = owner
            out.append(current)
        current.params[leaf] = p
    return out


class Slot:
    """One canonical tensor: every key it has (tied: several), the layer that holds it first."""

    __slots__ = ("keys", "layer", "leaf")

    def __init__(self, key: str, layer: Layer, leaf: str) -> None:
        self.keys = [key]
        self.layer = layer
        self.leaf = leaf


def slots(view: View, listed: list[Layer] | None = None) -> list[Slot]:
    """Each canonical tensor once, in traversal order, with all its keys (ties); ``listed`` is
    ``layers(view)`` where the caller has it already (the same Layer objects, not a second set)."""
    out: list[Slot] = []
    by_param: dict[int, Slot] = {}
    by_codec: dict[int, dict[str, Slot]] = {}
    for layer in layers(view) if listed is None else listed:
        if layer.codec is None:
            for leaf, p in layer.params.items():
                key = join(layer.path, leaf)
                slot = by_param.get(id(p))
                if slot is None:
                    slot = by_param[id(p)] = Slot(key, layer, leaf)
                    out.append(slot)
                else:
                    slot.keys.append(key)
            continue
        ident = id(next(iter(layer.params.values())))
        group = by_codec.get(ident)
        if group is None:
            group = by_codec[ident] = {}
            for leaf in layer.shapes():
                group[leaf] = Slot(join(layer.path, leaf), layer, leaf)
                out.append(group[leaf])
        else:
            for leaf, slot in group.items():
                slot.keys.append(join(layer.path, leaf))
    return out


def slot_value(
    slot: Slot, computed: dict[int, dict[str, np.ndarray]], drop: bool = False
) -> np.ndarray:
    """The canonical value of ``slot``. A codec's layer is computed once for all its slots and
    kept in ``computed`` (by the layer's id); ``drop=True`` lets go of each value as it is
    taken, and of the layer with its last (a save holds one such layer at a time)."""
    layer = slot.layer
    if layer.codec is None:
        return layer.params[slot.leaf].numpy()
    values = computed.get(id(layer))
    if values is None:
        values = computed[id(layer)] = layer.read()
    if not drop:
        return values[slot.leaf]
    out = values.pop(slot.leaf)
    if not values:
        del computed[id(layer)]
    return out


def state(view: View) -> dict[str, np.ndarray]:
    """{first key: canonical value} of every parameter and persistent buffer."""
    computed: dict[int, dict[str, np.ndarray]] = {}
    return {
        slot.keys[0]: slot_value(slot, computed)
        for slot in slots(view)
        if slot.layer.persistent(slot.leaf)
    }
