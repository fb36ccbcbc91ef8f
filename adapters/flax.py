"""Flax: linen modules with their variables, and NNX modules.

**linen** keeps the variables apart from the module: ``ut.wrap(module, variables)``.
The tree is read from the module definition: which module instance sits at
each position, and the scope each instance owns in the variables. Linen
names a module passed in a field after the field (``layers_2`` for position
2 of ``nn.Sequential``), and a module reused at two positions is one
instance, stored once, under the name of whichever position linen adopted
first (it adopts in the order of the keys sorted as strings: a module shared
by positions 2 and 10 lives under ``layers_10``). unitree asks the
definition, never the names: ``nn.Sequential``'s ``layers_N`` becomes
position ``N`` (parameterless entries such as ``nn.relu`` count), lists and
dicts of submodules become ``attr.N`` and ``attr.key``, and a module class
with a ``setup`` is bound to its variables to see the submodules it makes.

Submodules that a ``@nn.compact`` method creates exist only during a call:
they are read from the variables under linen's own names (``Dense_0``), with
their class found from that name (linen names them after their class). Where
no class can be seen -- a compact submodule given its own ``name=``, or a
submodule made by the ``setup`` of a compact-made module -- the module keeps
linen's leaf names and layouts (``kernel``, in, out).

The ``params`` collection holds the parameters; every other collection
(``batch_stats``...) holds buffers. Arrays are immutable: a write builds new
variables, which ``tree.variables`` returns, ready for
``module.apply(tree.variables, x)``; the variables given to ``wrap`` stay as
they were. ``tree.backward`` is ``jax.grad`` over ``module.apply``.

**NNX** modules hold their variables: ``ut.wrap(model)``. Paths are
``nnx.Sequential`` positions, attribute names, and ``attr.N`` / ``attr.key``
for lists and dicts (``nnx.List``, ``nnx.Dict``, or plain ones). A tie is one
``nnx.Variable`` object reached from two places, as NNX's own graph sees
sharing; ``nnx.Param`` variables are parameters, every other variable
(``BatchStat``...) a buffer, and random-number state (``RngKey``,
``RngCount``) is left out. A write replaces the variable's array, so every
alias sees it. ``tree.backward`` is ``nnx.value_and_grad``; ``tree.tie``
assigns one module's variables to the other's attributes.

Both: gradients accumulate over ``tree.backward`` calls, as in PyTorch. The
layer kinds of the canonical tables (Dense/Linear, Conv -- grouped and
depthwise ones too --, ConvTranspose, Embed, the norms, attention, the LSTM and
GRU cells) come from the module's class; an ``RNN`` is the kind of its cell, so
the whole recurrent layer is read as one (``cell.ii.weight``... under it). A
linen cell's gates are compact submodules named by gate (``ii``, ``hf``), known
as dense layers from the cell's class. Layer settings for ``ut.port`` (padding,
strides, epsilons, momentum as PyTorch counts it) are read from linen fields and
NNX attributes; a linen submodule a compact method made has no definition to
read them from. Devices come from each array's sharding ("cpu", "gpu:0").
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import config as flax_config
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.core.meta import AxisMetadata
from flax.linen.linear import canonicalize_padding
from flax.linen.recurrent import DenseParams

from unitree._adapter import Adapter, Leaf, position
from unitree._errors import PathError, UnsupportedError, UnsupportedModelError, ValueTypeError

_BY_CELL = "by cell"  # a recurrent wrapper (RNN) is the kind of its cell

_LINEN_KINDS: dict[type, str] = {
    nn.Dense: "dense",
    DenseParams: "dense",  # the parameters of OptimizedLSTMCell's gates, laid out as Dense's
    nn.Conv: "conv",  # grouped and depthwise too: feature_group_count
    nn.ConvTranspose: "conv_transpose",
    nn.Embed: "embedding",
    nn.LayerNorm: "layer_norm",
    nn.BatchNorm: "batch_norm",
    nn.GroupNorm: "group_norm",
    nn.LSTMCell: "lstm",
    nn.OptimizedLSTMCell: "lstm",
    nn.GRUCell: "gru",
    nn.RNN: _BY_CELL,
    nn.MultiHeadDotProductAttention: "attention",
}
_NNX_KINDS: dict[type, str] = {
    nnx.Linear: "dense",
    nnx.Conv: "conv",
    nnx.ConvTranspose: "conv_transpose",
    nnx.Embed: "embedding",
    nnx.LayerNorm: "layer_norm",
    nnx.BatchNorm: "batch_norm",
    nnx.GroupNorm: "group_norm",
    nnx.LSTMCell: "lstm",
    nnx.OptimizedLSTMCell: "lstm",
    nnx.GRUCell: "gru",
    nnx.RNN: _BY_CELL,
    nnx.MultiHeadAttention: "attention",
}
_kind_of: dict[type, str | None] = {}  # filled per class on first sight

# linen cells whose compact method makes one dense sub-layer per gate (``ii``, ``hf``...),
# named by the gate, not by class: the class of those sub-layers.
_CELL_PARTS: dict[type, type] = {
    nn.LSTMCell: nn.Dense,
    nn.OptimizedLSTMCell: DenseParams,
    nn.GRUCell: nn.Dense,
    nn.MGUCell: nn.Dense,
    nn.SimpleCell: nn.Dense,
}


def _kind(cls: type) -> str | None:
    if cls not in _kind_of:
        table = _LINEN_KINDS if issubclass(cls, nn.Module) else _NNX_KINDS
        _kind_of[cls] = next((table[base] for base in cls.__mro__ if base in table), None)
    return _kind_of[cls]


def _module_kind(m: Any) -> str | None:
    """The kind of a module: its class's, or for a recurrent wrapper, its cell's."""
    kind = _kind(type(m))
    if kind == _BY_CELL:
        cell = getattr(m, "cell", None)
        return None if cell is None else _kind(type(cell))
    return kind


def _fn_name(fn: Any) -> str:
    """``relu`` for ``nn.relu``, ``gelu`` for ``functools.partial(nn.gelu, ...)``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


# -- arrays, on both APIs --------------------------------------------------------------
def _device(a: Any) -> str:
    devices = getattr(a, "devices", None)
    if devices is None:  # a numpy array (variables restored without a target)
        return "cpu"
    names = sorted("cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}" for d in devices())
    return ",".join(dict.fromkeys(names))


def _placed(value: np.ndarray, like: Any) -> Any:
    """``value`` as a new array where ``like`` lives; never an alias of the caller's buffer."""
    fresh = np.array(value)  # jax may adopt a numpy buffer without copying: give it our own
    sharding = getattr(like, "sharding", None)
    return fresh if sharding is None else jax.device_put(fresh, sharding)


def _updated(old: Any, value: np.ndarray, index: Any) -> Any:
    if index is not None:  # numpy's indexing rules, exactly as p[index] reads
        full = np.array(old)
        full[index] = value
        value = full
    return _placed(value, old)


def _scalar(loss: Any) -> Any:
    if getattr(loss, "size", None) != 1:
        raise ValueTypeError(
            f"loss_fn must return a jax scalar, got {type(loss).__name__} of shape {getattr(loss, 'shape', None)}."
        )
    return loss.reshape(())


def _inputs(inputs: Sequence[Any], like: Any) -> list[Any]:
    """numpy inputs as jax arrays, floats in the model's floating dtype, on its device."""
    device = None
    if like is not None and len(getattr(like, "devices", set)()) == 1:
        device = next(iter(like.devices()))
    out = []
    for x in inputs:
        if isinstance(x, np.ndarray) or np.isscalar(x):
            a = np.asarray(x)
            if like is not None and a.dtype.kind == "f":
                a = a.astype(like.dtype)
            x = jax.device_put(a, device)
        out.append(x)
    return out


def _first_float(arrays: Iterable[Any]) -> Any:
    return next((a for a in arrays if np.issubdtype(a.dtype, np.floating)), None)


# -- layer settings, in the vocabulary of Adapter.settings ---------------------------------
def _axes(value: Any, n: int = 1) -> tuple[int, ...]:
    """A per-axis setting (None, an int, or a sequence) as a tuple of ints."""
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def _padding(
    padding: Any, n: int, size: tuple[int, ...], dilation: tuple[int, ...]
) -> str | tuple[tuple[int, int], ...]:
    """A conv's padding: "same", or (before, after) per spatial axis ('VALID': zeros)."""
    lax = canonicalize_padding(padding, n)
    if isinstance(lax, str):
        if lax == "VALID":
            return ((0, 0),) * n
        if lax == "CAUSAL":  # 1-D: the dilated kernel's reach, all before
            return ((dilation[0] * (size[0] - 1), 0),)
        return lax.lower()  # "same", "circular", "reflect"
    return tuple((int(lo), int(hi)) for lo, hi in lax)


def _transpose_padding(
    padding: Any, size: tuple[int, ...], strides: tuple[int, ...], dilation: tuple[int, ...]
) -> dict[str, Any]:
    """A transposed conv's padding as PyTorch counts it: ``padding`` p cropped on both sides,
    ``output_padding`` added after. Flax pads the stride-dilated input by (lo, hi) (or what
    lax works out for 'SAME' / 'VALID') before a valid conv with the kernel of reach
    r = dilation * (k - 1): the same output as PyTorch's p = r - lo, output_padding = hi - lo
    (checked numerically against torch.nn.ConvTranspose1d)."""
    n = len(size)
    lax = canonicalize_padding(padding, n)
    if isinstance(lax, str) and lax not in ("SAME", "VALID"):
        return {"padding": lax.lower()}
    pads, out_pad = [], []
    for i in range(n):
        reach, s = dilation[i] * (size[i] - 1), strides[i]
        if lax == "SAME":  # as jax.lax.conv_transpose works it out
            total = reach + s - 1
            lo = reach if s > reach else -(-total // 2)
            hi = total - lo
        elif lax == "VALID":
            lo, hi = reach, s - 1 + max(reach + 1 - s, 0)
        else:
            lo, hi = (int(p) for p in lax[i])
        pads.append((reach - lo, reach - lo))
        out_pad.append(hi - lo)
    return {"padding": tuple(pads), "output_padding": tuple(out_pad)}


# -- linen: the structure read from the definition ----------------------------------------
_AUTO_NAME = re.compile(r"^(.+)_(\d+)$")  # linen's names: Dense_0 (compact), layers_2 (fields)
# Attributes of a bound linen module that are linen's own bookkeeping, never submodules.
_LINEN_INTERNAL = frozenset(
    {"parent", "_parent_ref", "name", "_id", "_state", "scope", "_compact_name_scope_modules"}
)
_NO_LEAVES: list[Leaf] = []


class _Node:
    """One place in a linen model: a module of the definition, a list or dict of modules, or a
    submodule a compact method creates (known only from its variables, ``module`` None)."""

    __slots__ = ("children", "index", "kind", "leaves", "module", "scope", "type_name")

    def __init__(
        self, module: Any, scope: tuple[str, ...] | None, type_name: str, kind: str | None = None
    ) -> None:
        self.module = module  # what node.native shows
        self.scope = scope  # its path in the variables; None for a list or dict
        self.type_name = type_name
        self.kind = kind
        self.children: list[tuple[str, Any]] = []
        self.index: dict[str, Any] | None = None  # children by segment, made on first lookup
        self.leaves: list[Leaf] = _NO_LEAVES


class _Var:
    """One linen variable: (collection, scope, name) in the root's current variables."""

    __slots__ = ("collection", "grad", "name", "root", "scope")

    def __init__(self, root: _Root, collection: str, scope: tuple[str, ...], name: str) -> None:
        self.root = root
        self.collection = collection
        self.scope = scope
        self.name = name
        self.grad: Any = None  # accumulated over backward calls, native layout

    def raw(self) -> Any:
        """The stored value: a jax array, or its partitioning box."""
        d = self.root.variables[self.collection]
        for key in self.scope:
            d = d[key]
        return d[self.name]

    def array(self) -> Any:
        v = self.raw()
        return v.unbox() if isinstance(v, AxisMetadata) else v

    def replace(self, value: Any) -> None:
        with self.root.lock:
            old = self.raw()
            if isinstance(old, AxisMetadata):
                value = old.replace_boxed(value)
            path = (self.collection, *self.scope, self.name)
            self.root.variables = _replaced(self.root.variables, path, value)


def _replaced(tree: Mapping[str, Any], path: tuple[str, ...], leaf: Any) -> Mapping[str, Any]:
    """A copy of ``tree`` with the leaf at ``path`` replaced; the dicts off the path are shared."""
    key, rest = path[0], path[1:]
    value = _replaced(tree[key], rest, leaf) if rest else leaf
    if isinstance(tree, FrozenDict):
        return tree.copy({key: value})
    new = dict(tree)
    new[key] = value
    return new


_SCOPES = (dict, FrozenDict)  # what variables hold their scopes in
_SCOPE_TYPES = frozenset(_SCOPES)  # the same, tested by type: FrozenDict's isinstance is slow


def _at(tree: Any, scope: tuple[str, ...]) -> Mapping[str, Any] | None:
    for key in scope:
        if type(tree) not in _SCOPE_TYPES or key not in tree:
            return None
        tree = tree[key]
    return tree if type(tree) in _SCOPE_TYPES else None


class _Root(_Node):
    """The wrapped linen model: its definition, its current variables, and the structure."""

    __slots__ = ("definition", "fp", "lock", "params", "variables")

    def __init__(self, module: nn.Module, variables: Mapping[str, Any]) -> None:
        super().__init__(module, (), type(module).__name__)
        self.definition = module
        self.variables = variables
        self.params: list[_Var] = []  # every handle of the params collection, once
        self.fp: list[int] | None = None
        self.lock = threading.Lock()  # one write at a time: each replaces the whole dict


def _module_entries(value: Any, keys: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(keys, module) for every module in a field or attribute value, in its own order."""
    if isinstance(value, nn.Module):
        return [(keys, value)]
    if isinstance(value, (list, tuple)):
        items: Iterable[tuple[Any, Any]] = enumerate(value)
    elif isinstance(value, _SCOPES):
        items = value.items()
    else:
        return []
    out = []
    for k, item in items:
        if isinstance(item, nn.Module):
            out.append(((*keys, str(k)), item))
        elif isinstance(item, _NESTED):
            out += _module_entries(item, (*keys, str(k)))
    return out


_NESTED = (list, tuple, dict, FrozenDict)  # containers that may hold submodules
_CONTAINERS = (nn.Module, *_NESTED)


def _has_setup(cls: type) -> bool:
    return cls.setup is not nn.Module.setup


# Flax's own layers of the canonical tables: their fields never hold submodules and they
# have no setup, so their definition has nothing more to read.
_LEAF_LAYERS = frozenset(_LINEN_KINDS) - {nn.MultiHeadDotProductAttention, nn.RNN}

_init_fields: dict[type, list[str]] = {}


def _fields(cls: type) -> list[str]:
    names = _init_fields.get(cls)
    if names is None:
        names = _init_fields[cls] = [
            f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")
        ]
    return names


Dicts = list[tuple[str, Any]]  # (collection, the dict of one scope in it), params first
Scope = tuple[str, ...]


class _LinenBuilder:
    """Reads a linen model's structure in one pass: its definition, then at each module what
    only the variables know (its leaves, and the submodules compact methods made).

    An instance a field holds is adopted the way linen adopts it (the same instance once,
    named after its field, in the order of the keys sorted as strings); a module class with
    ``setup`` is bound to its variables and its bound submodules are read, each at the scope
    linen gave it.
    """

    def __init__(self, root: _Root) -> None:
        self.root = root
        variables = root.variables
        self.top: Dicts = [
            (c, variables[c]) for c in sorted(variables, key=lambda c: c != "params")
        ]
        self.by_scope: dict[tuple[str, ...], _Node] = {}
        self.adopted: dict[int, tuple[str, ...]] = {}  # id(instance) -> its scope
        self.open: set[tuple[str, ...]] = set()  # scopes being read: a reference back is no child
        self.classes: dict[str, list[type]] | None = None

    def build(self) -> None:
        root = self.root
        self.module(root.definition, (), None, self.top, root)
        root.module = root.definition  # not the bound copy read for its setup

    def dicts(self, scope: tuple[str, ...], parent: Dicts, parent_scope: tuple[str, ...]) -> Dicts:
        """Each collection's dict at ``scope``, from the parent's when it is the parent's child."""
        if scope[:-1] == parent_scope:
            key = scope[-1]
            return [(c, d[key]) for c, d in parent if type(d.get(key)) in _SCOPE_TYPES]
        return [(c, d) for c, top in self.top if (d := _at(top, scope)) is not None]

    # the definition -----------------------------------------------------------------
    def module(
        self,
        m: nn.Module,
        scope: tuple[str, ...],
        offset: tuple[str, ...] | None,
        dicts: Dicts,
        node: _Node | None = None,
    ) -> _Node:
        """The node of module ``m`` at ``scope``. ``offset`` is set when ``m`` is bound (the scope
        of the module it was bound as); None while reading the unbound definition."""
        cls = type(m)
        if node is None:
            node = _Node(m, scope, cls.__name__)
        node.kind = _module_kind(m)
        self.by_scope[scope] = node
        if cls not in _LEAF_LAYERS:
            self.open.add(scope)
            self.definition(node, m, scope, offset, dicts)
            self.open.discard(scope)
        self.variables(node, scope, dicts, _CELL_PARTS.get(cls))
        return node

    def definition(
        self, node: _Node, m: nn.Module, scope: tuple[str, ...], offset: Any, dicts: Dicts
    ) -> None:
        if offset is None:
            if type(m) is nn.Sequential and self.layers(node, m.layers, scope, dicts):
                return
            fields = []
            for f in _fields(type(m)):
                value = getattr(m, f)
                if isinstance(value, _CONTAINERS):
                    entries = _module_entries(value)
                    if entries or (f == "layers" and isinstance(m, nn.Sequential)):
                        fields.append((f, value, entries))
            if not _has_setup(type(m)) and all(
                sub.parent is None for *_, entries in fields for _, sub in entries
            ):
                for name, value, entries in fields:
                    self.adopt(m, name, entries, scope)
                    self.attach(node, m, name, value, None, scope, dicts)
                return
            m, offset = m.bind(dict(dicts)), scope
        m._try_setup()
        for name, value in list(vars(m).items()):
            if name not in _LINEN_INTERNAL and isinstance(value, _CONTAINERS):
                self.attach(node, m, name, value, offset, scope, dicts)

    def layers(self, node: _Node, layers: Sequence[Any], scope: Scope, dicts: Dicts) -> bool:
        """The common case in one short loop: an ``nn.Sequential`` of flax's own layers and
        functions, none shared, named ``layers_N`` by position. False (nothing done) otherwise."""
        modules = [x for x in layers if isinstance(x, nn.Module)]
        ids = {id(x) for x in modules}
        if (
            len(ids) != len(modules)
            or not ids.isdisjoint(self.adopted)
            or not all(type(x) in _LEAF_LAYERS and x.parent is None for x in modules)
            or (len(dicts) == 1 and dicts[0][0] != "params")
        ):
            return False
        adopted, by_scope, children = self.adopted, self.by_scope, node.children
        params = dicts[0][1] if len(dicts) == 1 else None  # the common case: params alone
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.Module):
                children.append((str(i), _fn(layer)))
                continue
            name = f"layers_{i}"
            sub = adopted[id(layer)] = (*scope, name)
            cls = type(layer)
            child = by_scope[sub] = _Node(layer, sub, cls.__name__, _LINEN_KINDS[cls])
            children.append((str(i), child))
            parts = _CELL_PARTS.get(cls)
            if params is None:
                self.variables(child, sub, self.dicts(sub, dicts, scope), parts)
            elif type(d := params.get(name)) in _SCOPE_TYPES:
                self.variables(child, sub, [("params", d)], parts)
        return True

    def adopt(
        self, m: nn.Module, name: str, entries: list[tuple[tuple[str, ...], Any]], scope: Scope
    ) -> None:
        """Name the instances of one field as linen does: in the order of their keys sorted as
        strings, each instance once, after the field, unless ``preserve_adopted_names``."""
        adopted = self.adopted
        ids = {id(sub) for _, sub in entries}
        if len(ids) != len(entries) or not ids.isdisjoint(adopted):
            entries = sorted(entries, key=lambda e: e[0])  # with sharing, the order names it
        preserve = getattr(type(m), "preserve_adopted_names", None)
        if preserve is None:
            preserve = flax_config.flax_preserve_adopted_names
        for keys, sub in entries:
            if id(sub) not in adopted:
                own = sub.name if preserve else None
                adopted[id(sub)] = (*scope, own or "_".join((name, *keys)))

    def attach(
        self,
        node: _Node,
        m: nn.Module,
        name: str,
        value: Any,
        offset: tuple[str, ...] | None,
        scope: tuple[str, ...],
        dicts: Dicts,
    ) -> None:
        if isinstance(m, nn.Sequential) and name == "layers":
            # positions, counting the parameterless entries (nn.relu) as the deck does
            for i, layer in enumerate(value):
                if isinstance(layer, nn.Module):
                    child = self.entry(layer, offset, scope, dicts)
                else:
                    child = _fn(layer)
                if child is not None:
                    node.children.append((str(i), child))
            return
        child = self.entry(value, offset, scope, dicts)
        if child is not None:
            node.children.append((name, child))

    def entry(
        self, value: Any, offset: tuple[str, ...] | None, scope: tuple[str, ...], dicts: Dicts
    ) -> _Node | None:
        """The node for an attribute value: a module, or a list or dict holding modules."""
        if isinstance(value, nn.Module):
            if offset is None:
                sub = self.adopted[id(value)]
            elif value.scope is None:  # a module never bound here holds no variables here
                return None
            else:
                sub = (*offset, *value.scope.path)
            found = self.by_scope.get(sub)
            if found is not None:  # a module used twice: one node
                return found
            if sub in self.open:  # a reference back to a module being read
                return None
            return self.module(value, sub, offset, self.dicts(sub, dicts, scope))
        if isinstance(value, _NESTED) and _module_entries(value):
            items = value.items() if isinstance(value, _SCOPES) else enumerate(value)
            node = _Node(value, None, "dict" if isinstance(value, _SCOPES) else "list")
            for key, item in items:
                child = self.entry(item, offset, scope, dicts)
                if child is not None:
                    node.children.append((str(key), child))
            return node
        return None

    # the variables ------------------------------------------------------------------
    def variables(
        self, node: _Node, scope: tuple[str, ...], dicts: Dicts, parts: type | None = None
    ) -> None:
        """The module's leaves, and the submodules only the variables know (compact ones);
        ``parts``: the class of those submodules, where the module's class says (a cell's gates)."""
        root, scopes = self.root, _SCOPE_TYPES
        leaves: list[Any] = []
        subscopes: dict[str, None] = {}
        for c, d in dicts:
            if c == "params":
                params = root.params
                for key, value in d.items():
                    if type(value) in scopes:
                        subscopes[key] = None
                    else:
                        handle = _Var(root, c, scope, key)
                        params.append(handle)
                        leaves.append((key, handle, True, True))
                continue
            names = {leaf[0] for leaf in leaves}
            for key, value in d.items():
                if type(value) in scopes:
                    subscopes[key] = None
                    continue
                name = key if key not in names else f"{c}_{key}"  # taken by another collection
                names.add(name)
                leaves.append((name, _Var(root, c, scope, key), False, True))
        if leaves:
            node.leaves = leaves
        if subscopes:
            free = [k for k in subscopes if (*scope, k) not in self.by_scope]
            for key in _call_order(free):
                child = self.compact(key, (*scope, key), dicts, scope, parts)
                node.children.append((key, child))

    def compact(
        self,
        name: str,
        scope: tuple[str, ...],
        parent: Dicts,
        parent_scope: tuple[str, ...],
        cls: type | None = None,
    ) -> _Node:
        """The node of a submodule made by a compact method: of class ``cls`` when its parent's
        class says so (a cell's gates), else of the class linen named it after (``Dense_0``)."""
        if cls is not None:
            node = _Node(None, scope, cls.__name__, _kind(cls))
            parts = _CELL_PARTS.get(cls)
        else:
            auto = _AUTO_NAME.match(name)
            node = _Node(None, scope, auto[1] if auto else "Module")
            classes = self.classes_named(auto[1]) if auto else []
            kind = _only({_kind(c) for c in classes})
            node.kind = None if kind == _BY_CELL else kind  # an RNN's scope: its cell unseen
            parts = _only({_CELL_PARTS.get(c) for c in classes})
        self.by_scope[scope] = node
        self.variables(node, scope, self.dicts(scope, parent, parent_scope), parts)
        return node

    def classes_named(self, name: str) -> list[type]:
        """Every linen module class called ``name``: a compact submodule is named after its class."""
        if self.classes is None:
            self.classes = {}
            todo = [nn.Module]
            while todo:
                cls = todo.pop()
                self.classes.setdefault(cls.__name__, []).append(cls)
                todo.extend(cls.__subclasses__())
        return self.classes.get(name, [])


def _only(values: set[Any]) -> Any:
    """The one value of ``values``, or None when there are none or several."""
    return next(iter(values)) if len(values) == 1 else None


def _fn(fn: Callable[..., Any]) -> _Node:
    """A parameterless entry (``nn.relu``) at one position: one node per position, as torch has
    one ``ReLU()`` per position, though the function is one object."""
    return _Node(fn, None, _fn_name(fn))


def _call_order(keys: list[str]) -> list[str]:
    """``keys`` with each family of auto-names (Dense_0, Dense_1...) in numeric order: dicts that
    went through jax's tree functions come back sorted as strings (Dense_10 before Dense_2)."""
    families: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        auto = _AUTO_NAME.match(key)
        if auto:
            families.setdefault(auto[1], []).append(i)
    out = list(keys)
    for where in families.values():
        ordered = sorted((keys[i] for i in where), key=lambda k: int(k.rpartition("_")[2]))
        for i, key in zip(where, ordered):
            out[i] = key
    return out


def _linen_root(module: nn.Module, state: tuple[Any, ...]) -> _Root:
    if len(state) != 1:
        given = (
            "the module alone"
            if not state
            else f"{len(state)} arguments after the module, not one variables dict"
        )
        raise UnsupportedModelError(
            f"A flax linen {type(module).__name__} keeps its variables apart, so it has no values "
            f"of its own (got {given}): wrap it with them first, tree = ut.wrap(module, "
            "variables), with variables = module.init(key, x), and pass the tree to "
            "ut.save, ut.load, ut.port or ut.summary."
        )
    variables = state[0]
    if not isinstance(variables, Mapping):
        raise UnsupportedModelError(
            f"Expected the variables dict of a linen module ({{'params': ...}}), got {type(variables).__name__}."
        )
    odd = [c for c, v in variables.items() if not isinstance(v, Mapping)]
    if odd:
        raise UnsupportedModelError(
            f"Expected variables as {{collection: {{...}}}}, as module.init returns them; "
            f"{odd} hold no dict. Nothing was wrapped."
        )
    if module.scope is not None:  # a bound module: read its definition
        module = module.clone(parent=None)
    root = _Root(module, variables)
    _LinenBuilder(root).build()  # the core pauses the cyclic GC around root()
    if "params" not in variables and (
        any(_AUTO_NAME.match(c) for c in variables)
        or set(variables) & {child.scope[0] for _, child in _walk(root) if child.scope}
    ):
        raise UnsupportedModelError(
            "These look like the params collection alone; pass the whole variables dict, "
            "{'params': params}, as module.init returns it."
        )
    return root


def _walk(node: _Node) -> Iterator[tuple[str, _Node]]:
    for seg, child in node.children:
        if isinstance(child, _Node):
            yield seg, child
            yield from _walk(child)


# -- NNX -----------------------------------------------------------------------------------
# What an attribute value is, by its type: NNX's isinstance checks on Variable run Python code
# on every call, and a traversal asks about every attribute of every module.
_NONE, _MODULE, _BUFFER, _PARAM, _LIST, _DICT = range(6)
_what: dict[type, int] = {}
_HIJAX = getattr(sys.modules.get("flax.nnx.variablelib"), "HijaxVariable", ())


def _classify(value: Any) -> int:
    t = type(value)
    what = _what.get(t)
    if what is None:
        if issubclass(t, nnx.Variable):
            rng = issubclass(t, nnx.RngState)  # random-number state: neither param nor buffer
            what = _NONE if rng else _PARAM if issubclass(t, nnx.Param) else _BUFFER
        elif _HIJAX and issubclass(t, _HIJAX):  # its variable type is per object
            if not isinstance(value, nnx.Variable) or isinstance(value, nnx.RngState):
                return _NONE
            return _PARAM if isinstance(value, nnx.Param) else _BUFFER
        elif issubclass(t, (nnx.List, list, tuple)):
            what = _LIST
        elif issubclass(t, (nnx.Dict, dict)):
            what = _DICT
        elif issubclass(t, nnx.Module):
            what = _MODULE
        else:
            what = _NONE
        _what[t] = what
    return what


def _nnx_items(m: Any) -> Iterable[tuple[Any, Any]]:
    """The entries of an NNX node: attributes of a module, items of a list or dict."""
    what = _classify(m)
    if what == _LIST:
        return enumerate(m)
    if what == _DICT:
        return m.items()
    if what == _MODULE:
        return [(k, v) for k, v in vars(m).items() if not k.startswith(("_pytree__", "_object__"))]
    return ()


def _nnx_node(value: Any) -> bool:
    """A module, or a list or dict holding modules or variables."""
    what = _classify(value)
    if what == _MODULE:
        return True
    if what in (_LIST, _DICT):
        return isinstance(value, nnx.Module) or any(
            _classify(v) in (_PARAM, _BUFFER) or _nnx_node(v) for _, v in _nnx_items(value)
        )
    return False


def _get(var: nnx.Variable) -> Any:
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var: nnx.Variable, value: Any) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:
        var.value = value


# -- the adapter ---------------------------------------------------------------------------
class FlaxAdapter(Adapter):
    """linen (``_Node`` / ``_Var`` objects of this module) and NNX (its own modules and variables)."""

    name = "flax"

    def __init__(self) -> None:
        # NNX gradients, by id of the variable: (variable, accumulated gradient). A model's
        # entries go when the model does, as a torch parameter's .grad goes with it.
        self._grads: dict[int, tuple[nnx.Variable, Any]] = {}
        self._owned: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()
        # nodes of an nnx.Sequential's parameterless entries: {(position, id(function)): node}
        self._fns: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], _Node]] = (
            weakref.WeakKeyDictionary()
        )

    def root(self, obj: Any, *state: Any) -> Any:
        if isinstance(obj, nn.Module):
            return _linen_root(obj, state)
        if not isinstance(obj, nnx.Module):
            raise UnsupportedModelError(
                f"Expected a flax nnx.Module, or a linen Module with its variables, "
                f"got {type(obj).__module__}.{type(obj).__qualname__}."
            )
        if state:
            raise UnsupportedModelError(
                f"An nnx.Module holds its own variables: wrap it as ut.wrap(model); got {len(state)} more arguments."
            )
        return obj

    def native(self, obj: Any) -> Any:
        if isinstance(obj, _Var):
            return obj.raw()
        if isinstance(obj, _Node):
            return obj.module
        return obj

    # -- structure -------------------------------------------------------------------
    def children(self, module: Any) -> Sequence[tuple[str, Any]]:
        if isinstance(module, _Node):
            return module.children
        if isinstance(module, nnx.Sequential):
            return [(str(i), self._layer(module, i, x)) for i, x in enumerate(module.layers)]
        return [(str(k), v) for k, v in _nnx_items(module) if _nnx_node(v)]

    def _layer(self, seq: nnx.Sequential, i: int, layer: Any) -> Any:
        if isinstance(layer, nnx.Module):
            return layer
        # the same node each time: the fingerprint holds its id
        nodes = self._fns.get(seq)
        if nodes is None:
            nodes = self._fns[seq] = {}
        node = nodes.get((i, id(layer)))
        if node is None:
            node = nodes[(i, id(layer))] = _fn(layer)
        return node

    def child(self, module: Any, segment: str) -> Any:
        if isinstance(module, _Node):
            if module.index is None:
                module.index = dict(module.children)
            return module.index.get(segment)
        if isinstance(module, nnx.Sequential):
            layers, i = module.layers, position(segment)
            if i is None or i >= len(layers):
                return None
            return self._layer(module, i, layers[i])
        return super().child(module, segment)

    def leaves(self, module: Any) -> Sequence[Leaf]:
        if isinstance(module, _Node):
            return module.leaves
        out = []
        for k, v in _nnx_items(module):
            what = _classify(v)
            if what in (_PARAM, _BUFFER):
                out.append((str(k), v, what == _PARAM, True))
        return out

    def leaf(self, module: Any, name: str) -> Any:
        if isinstance(module, _Node):
            for leaf in module.leaves:
                if leaf[0] == name:
                    return leaf[1]
        else:
            for k, v in _nnx_items(module):
                if str(k) == name and _classify(v) in (_PARAM, _BUFFER):
                    return v
        raise PathError(f"The {self.type_name(module)} module no longer has a variable {name!r}.")

    def type_name(self, module: Any) -> str:
        if isinstance(module, _Node):
            return module.type_name
        if _classify(module) != _NONE:
            return type(module).__name__
        return _fn_name(module)

    def kind(self, module: Any) -> str | None:
        if isinstance(module, _Node):
            kind, m = module.kind, module.module
        elif _classify(module) == _MODULE:
            kind, m = _module_kind(module), module
        else:
            return None
        if kind == "conv_transpose" and getattr(m, "transpose_kernel", False):
            return None  # a (*k, out, in) kernel, not flipped: no rule, native layout
        return kind

    def fingerprint(self, root: Any) -> Any:
        if isinstance(root, _Root):  # a linen definition never changes, nor do our handles
            if root.fp is None:
                root.fp = super().fingerprint(root)
            return root.fp
        return super().fingerprint(root)

    # -- one leaf ----------------------------------------------------------------------
    def _array(self, leaf: Any) -> Any:
        return leaf.array() if isinstance(leaf, _Var) else _get(leaf)

    def shape(self, leaf: Any) -> tuple[int, ...]:
        return tuple(np.shape(self._array(leaf)))

    def dtype(self, leaf: Any) -> str:
        a = self._array(leaf)
        return str(a.dtype) if hasattr(a, "dtype") else str(np.asarray(a).dtype)

    def device(self, leaf: Any) -> str:
        return _device(self._array(leaf))

    def trainable(self, leaf: Any) -> bool:
        if isinstance(leaf, _Var):
            return leaf.collection == "params"
        return isinstance(leaf, nnx.Param)

    def read(self, leaf: Any) -> np.ndarray:
        return np.asarray(self._array(leaf))  # a read-only view of a CPU array

    def write(self, leaf: Any, value: np.ndarray, index: Any = None) -> None:
        if isinstance(leaf, _Var):
            leaf.replace(_updated(leaf.array(), value, index))
        else:
            _set(leaf, _updated(_get(leaf), value, index))

    def dlpack(self, leaf: Any) -> Any:
        a = self._array(leaf)
        return a if isinstance(a, jax.Array) else None

    def write_dlpack(self, leaf: Any, tensor: Any) -> bool:
        old = self._array(leaf)
        if not isinstance(old, jax.Array):
            return False
        # an array of jax's own (the import may alias the other framework's memory), where
        # the old one lives
        new = jax.device_put(jnp.array(jax.dlpack.from_dlpack(tensor), copy=True), old.sharding)
        if isinstance(leaf, _Var):
            leaf.replace(new)
        else:
            _set(leaf, new)
        return True

    def data(self, leaf: Any) -> Any:
        return self._array(leaf)

    def grad(self, leaf: Any) -> np.ndarray | None:
        if isinstance(leaf, _Var):
            g = leaf.grad
        else:
            hit = self._grads.get(id(leaf))
            g = hit[1] if hit is not None and hit[0] is leaf else None
        return None if g is None else np.asarray(g)

    def zero_grad(self, leaf: Any) -> None:
        if isinstance(leaf, _Var):
            leaf.grad = None
        else:
            self._grads.pop(id(leaf), None)

    def backup(self, leaf: Any) -> Any:
        # jax arrays are immutable: the current one is the backup, no copy
        return leaf.raw() if isinstance(leaf, _Var) else _get(leaf)

    def restore(self, leaf: Any, backup: Any) -> None:
        if isinstance(leaf, _Var):  # the stored value itself, partitioning box and all
            with leaf.root.lock:
                path = (leaf.collection, *leaf.scope, leaf.name)
                leaf.root.variables = _replaced(leaf.root.variables, path, backup)
        else:
            _set(leaf, backup)

    def asarray(self, value: Any) -> np.ndarray:
        if isinstance(value, nnx.Variable):
            value = _get(value)
        return np.asarray(value)

    def settings(self, module: Any) -> dict[str, Any]:
        """Read from a linen module's fields or an NNX module's attributes (the same names); a
        linen submodule made by a compact method has no definition to read: {}."""
        m = module.module if isinstance(module, _Node) else module
        kind = self.kind(module)
        if kind is None or not isinstance(m, (nn.Module, nnx.Module)):
            return {}
        if kind == "conv":
            n = len(_axes(m.kernel_size))
            dilation = _axes(m.kernel_dilation, n)
            return {
                "padding": _padding(m.padding, n, _axes(m.kernel_size), dilation),
                "stride": _axes(m.strides, n),
                "dilation": dilation,
                "groups": int(m.feature_group_count),
            }
        if kind == "conv_transpose":
            size = _axes(m.kernel_size)
            n = len(size)
            return {
                **_transpose_padding(
                    m.padding, size, _axes(m.strides, n), _axes(m.kernel_dilation, n)
                ),
                "stride": _axes(m.strides, n),
                "dilation": _axes(m.kernel_dilation, n),
            }
        if kind == "layer_norm":
            return {"eps": float(m.epsilon)}
        if kind == "attention":
            return {"num_heads": int(m.num_heads)}
        if kind in ("lstm", "gru"):
            cell = getattr(m, "cell", m)
            out = {
                "activation": _fn_name(cell.activation_fn),
                "recurrent_activation": _fn_name(cell.gate_fn),
            }  # a GRU cell resets as PyTorch's: r * (W_hn h + b_hn)
            return {**out, "reset_after": True} if kind == "gru" else out
        if kind == "batch_norm":  # flax's momentum weighs the old value, PyTorch's the new batch
            return {"eps": float(m.epsilon), "momentum": round(1.0 - float(m.momentum), 12)}
        if kind == "group_norm":
            out: dict[str, Any] = {"eps": float(m.epsilon)}
            groups = m.num_groups
            if groups is None and m.group_size:  # linen: the channels from the scale or bias
                channels = next((self.shape(leaf[1])[0] for leaf in self.leaves(module)), None)
                groups = None if channels is None else channels // m.group_size
            if groups is not None:
                out["groups"] = int(groups)
            return out
        return {}

    # -- the whole model ---------------------------------------------------------------
    def devices(self) -> list[str]:
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend here
            gpus = []
        return ["cpu"] + [f"gpu:{d.id}" for d in gpus]

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        if isinstance(root, _Root):
            return self._linen_backward(root, loss_fn, inputs)
        return self._nnx_backward(root, loss_fn, inputs)

    def _linen_backward(
        self, root: _Root, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]
    ) -> float:
        """``jax.grad`` over ``module.apply``, with respect to the ``params`` collection.

        The other collections go in as they are, and are mutable: a module that updates its
        batch statistics in this call (``use_running_average=False``) leaves the new ones in
        ``tree.variables``, as a training step in PyTorch updates its running statistics.
        """
        variables = root.variables
        params = variables.get("params")
        rest = {c: v for c, v in variables.items() if c != "params"}
        mutable = [c for c in rest if c != "intermediates"]
        args = _inputs(inputs, _first_float(jax.tree_util.tree_leaves(params)))
        module = root.definition

        def f(p: Any) -> tuple[Any, Any]:
            vs = rest if p is None else {**rest, "params": p}
            if mutable:
                y, updates = module.apply(vs, *args, mutable=mutable)
            else:
                y, updates = module.apply(vs, *args), {}
            return _scalar(loss_fn(y)), updates

        if params is None:
            (loss, updates), grads = f(None), None
        else:
            (loss, updates), grads = jax.value_and_grad(f, has_aux=True)(params)
        structure = jax.tree_util.tree_structure
        kept = {  # only what keeps the structure: new entries (sow) would need a new tree
            c: value
            for c, value in updates.items()
            if c in variables and structure(value) == structure(variables[c])
        }
        if kept:
            with root.lock:
                new = {**root.variables, **kept}
                root.variables = FrozenDict(new) if isinstance(variables, FrozenDict) else new
        if grads is not None:
            for handle in root.params:
                g = _at(grads, handle.scope)[handle.name]  # type: ignore[index]
                g = g.unbox() if isinstance(g, AxisMetadata) else g
                handle.grad = g if handle.grad is None else handle.grad + g
        return float(loss)

    def _nnx_backward(
        self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]
    ) -> float:
        """``nnx.value_and_grad`` with respect to the ``nnx.Param`` variables; NNX carries the
        other variables' updates (batch statistics in training mode) back into the model."""
        # NNX's own paths, as its gradient State has them: each shared variable at its first
        params = {path: v for path, v in nnx.iter_graph(root) if isinstance(v, nnx.Param)}
        args = _inputs(inputs, _first_float(_get(v) for v in params.values()))

        def f(model: Any, *xs: Any) -> Any:
            return _scalar(loss_fn(model(*xs)))

        loss, grads = nnx.value_and_grad(f)(root, *args)
        owned = self._owned.get(root)
        if owned is None:
            owned = self._owned[root] = set()
            weakref.finalize(root, _forget, self._grads, owned)
        for path, g in nnx.to_flat_state(grads):
            var = params[path]
            g = _get(g) if isinstance(g, nnx.Variable) else g
            hit = self._grads.get(id(var))
            total = g if hit is None or hit[0] is not var else hit[1] + g
            self._grads[id(var)] = (var, total)
            owned.add(id(var))
        return float(loss)

    def share(self, var: Any, dst_owner: Any, dst_name: str) -> None:
        if isinstance(dst_owner, _Node):
            raise UnsupportedError(
                "tree.tie is not supported on flax linen: linen shares parameters through the "
                "module definition, by reusing one module instance at both positions "
                "(shared = nn.Dense(8); nn.Sequential([..., shared, ..., shared])), "
                "then module.init; variables cannot be tied after init."
            )
        what = _classify(dst_owner)
        if what in (_LIST, _DICT):
            dst_owner[int(dst_name) if what == _LIST else dst_name] = var
        else:
            setattr(dst_owner, dst_name, var)

    def variables(self, root: Any) -> Any:
        if isinstance(root, _Root):
            return root.variables
        raise UnsupportedError(
            "tree.variables is for flax linen, which keeps variables apart; an nnx.Module "
            "holds its own: nnx.state(tree.native)."
        )


def _forget(grads: dict[int, Any], ids: set[int]) -> None:
    for i in ids:
        grads.pop(i, None)


adapter = FlaxAdapter()
