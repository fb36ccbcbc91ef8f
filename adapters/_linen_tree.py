"""The flax linen adapter's handles: the tree read from a linen module's definition.

linen keeps the variables apart from the module, and the submodules a ``@nn.compact``
method makes exist only during a call, so :class:`_LinenBuilder` reads the structure
once, from the definition and the variables, into handles: ``_Root`` (the model),
``_Node`` (one module, list or dict) and ``_Var`` (one variable, by collection, scope and
name). ``adapters/linen.py`` says how the definition maps to paths; the adapter there
only answers from these handles.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

from flax import config as flax_config
from flax import linen as nn
from flax.core import FrozenDict
from flax.core.meta import AxisMetadata
from flax.linen.recurrent import DenseParams

from unitree._adapter import KindTable, Leaf, new_leaf
from unitree._paths import Segment, position

from ._flax import (
    BY_CELL,
    fn_name,
    kind_of,
)

_KINDS: dict[type, str] = {
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
    nn.RNN: BY_CELL,
    nn.MultiHeadDotProductAttention: "attention",
}
_kinds = KindTable(_KINDS)

# linen cells whose compact method makes one dense sub-layer per gate (``ii``, ``hf``...),
# named by the gate, not by class: the class of those sub-layers.
_CELL_PARTS: dict[type, type] = {
    nn.LSTMCell: nn.Dense,
    nn.OptimizedLSTMCell: DenseParams,
    nn.GRUCell: nn.Dense,
    nn.MGUCell: nn.Dense,
    nn.SimpleCell: nn.Dense,
}

# -- the handles: the structure read from the definition ---------------------------------
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
        self.children: list[tuple[Segment, Any]] = []  # an int: a position in a list
        self.index: dict[Segment, Any] | None = None  # children by segment, made on first lookup
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
        """Make the array ``value`` the variable's, in the old value's partitioning box if any."""
        with self.root.lock:
            old = self.raw()
            if isinstance(old, AxisMetadata):
                value = old.replace_boxed(value)
            self._store(value)

    def restore(self, raw: Any) -> None:
        """Put back a value :meth:`raw` returned, partitioning box and all."""
        with self.root.lock:
            self._store(raw)

    def _store(self, raw: Any) -> None:  # under the root's lock
        path = (self.collection, *self.scope, self.name)
        root = self.root
        root.variables = _replaced(root.variables, path, raw)
        if root.owner is not None:  # a model object that holds its params: it holds the new ones
            if root.batch:
                root.dirty = True  # set once, when the batch ends
            else:
                root.publish()


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

    __slots__ = (
        "batch",
        "definition",
        "dirty",
        "fp",
        "lock",
        "owner",
        "params",
        "variables",
        "whole",
    )

    def __init__(
        self, module: nn.Module, variables: Mapping[str, Any], owner: Any = None, whole: bool = True
    ) -> None:
        super().__init__(module, (), type(module).__name__)
        self.definition = module
        self.variables = variables
        self.owner = owner  # a model object holding module and params (Hugging Face's), or None
        self.whole = whole  # whether the owner's params are the whole variables dict
        self.batch = self.dirty = False  # in a batch of writes; written since the owner's set
        self.params: list[_Var] = []  # every handle of the params collection, once
        self.fp: list[int] | None = None
        self.lock = threading.Lock()  # one write at a time: each replaces the whole dict

    def publish(self) -> None:
        """Give the owner the current variables (its setter may validate them: once a batch)."""
        self.dirty = False
        self.owner.params = self.variables if self.whole else self.variables["params"]


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
_LEAF_LAYERS = frozenset(_KINDS) - {nn.MultiHeadDotProductAttention, nn.RNN}

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
        node.kind = kind_of(_kinds, m)
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
                children.append((i, _fn(layer)))
                continue
            name = f"layers_{i}"
            sub = adopted[id(layer)] = (*scope, name)
            cls = type(layer)
            child = by_scope[sub] = _Node(layer, sub, cls.__name__, _KINDS[cls])
            children.append((i, child))
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
                    node.children.append((i, child))
            return
        if isinstance(value, _NESTED):
            named = self.named(name, value, offset)
            if named:  # the modules' own names, as linen stores them (``name=str(i)``)
                for segment, item in named:
                    child = self.entry(item, offset, scope, dicts)
                    if child is not None:
                        node.children.append((segment, child))
                return
        child = self.entry(value, offset, scope, dicts)
        if child is not None:
            node.children.append((name, child))

    def named(
        self, name: str, value: Any, offset: tuple[str, ...] | None
    ) -> list[tuple[Segment, nn.Module]]:
        """The modules of a list or dict attribute by the names linen stores them under, where
        those are their own (``[Block(name=str(i)) for i in ...]`` is stored as ``0``, ``1``,
        as torch's ModuleList is): a digit name is a position. Empty where linen auto-names them
        after the attribute (``layers_0``): they are then ``attr.0``, under the attribute."""
        entries = _module_entries(value)
        if not entries:
            return []
        out: list[tuple[Segment, nn.Module]] = []
        for keys, sub in entries:
            if offset is None:
                stored = self.adopted.get(id(sub))
            else:
                stored = sub.scope.path if sub.scope is not None else None
            if not stored or stored[-1] == "_".join((name, *keys)):
                return []
            i = position(stored[-1])
            out.append((stored[-1] if i is None else i, sub))
        return out

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
            is_dict = isinstance(value, _SCOPES)
            items = [(str(k), v) for k, v in value.items()] if is_dict else enumerate(value)
            node = _Node(value, None, "dict" if is_dict else "list")
            for key, item in items:
                child = self.entry(item, offset, scope, dicts)
                if child is not None:
                    node.children.append((key, child))
            return node
        return None

    # the variables ------------------------------------------------------------------
    def variables(
        self, node: _Node, scope: tuple[str, ...], dicts: Dicts, parts: type | None = None
    ) -> None:
        """The module's leaves, and the submodules only the variables know (compact ones);
        ``parts``: the class of those submodules, where the module's class says (a cell's gates)."""
        root, scopes = self.root, _SCOPE_TYPES
        leaves: list[Leaf] = []
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
                        leaves.append(new_leaf((key, handle, True, True)))
                continue
            names = {leaf[0] for leaf in leaves}
            for key, value in d.items():
                if type(value) in scopes:
                    subscopes[key] = None
                    continue
                name = key if key not in names else f"{c}_{key}"  # taken by another collection
                names.add(name)
                leaves.append(new_leaf((name, _Var(root, c, scope, key), False, True)))
        if leaves:
            node.leaves = leaves
        if subscopes:
            free = [k for k in subscopes if (*scope, k) not in self.by_scope]
            for key in _call_order(free):
                named = parts or _named_in_source(node.module, key)
                child = self.compact(key, (*scope, key), dicts, scope, named)
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
        class says so (a cell's gates, an explicit ``name=`` in its source), else of the class
        linen named it after (``Dense_0``)."""
        if cls is not None:
            node = _Node(None, scope, cls.__name__, _kinds[cls])
            parts = _CELL_PARTS.get(cls)
        else:
            auto = _AUTO_NAME.match(name)
            node = _Node(None, scope, auto[1] if auto else "Module")
            classes = self.classes_named(auto[1]) if auto else []
            kind = _only({_kinds[c] for c in classes})
            node.kind = None if kind == BY_CELL else kind  # an RNN's scope: its cell unseen
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


_SOURCE_NAMES: dict[type, dict[str, type | None]] = {}


def _named_in_source(module: Any, name: str) -> type | None:
    """The linen class a compact method of ``module``'s class makes under the explicit name
    ``name`` (``nn.Dense(8, name="proj")``), read from the source of the methods that run
    (found from their code objects, so a class defined twice is read where it was defined),
    the callee a global name or a dotted attribute of one, looked up in those methods'
    globals, never run. None where no such call is there, the source cannot be read, a name
    along the way is bound inside the method (a local, an argument, a closure: what it holds
    is known only when it runs), or two calls give the name different classes."""
    if not isinstance(module, nn.Module) or _AUTO_NAME.match(name):
        return None
    cls = type(module)
    names = _SOURCE_NAMES.get(cls)
    if names is None:
        names = _SOURCE_NAMES[cls] = _explicit_names(cls)
    return names.get(name)


def _explicit_names(cls: type) -> dict[str, type | None]:
    import ast
    import inspect
    import textwrap

    found: dict[str, type | None] = {}
    for klass in cls.__mro__:
        if klass.__module__.startswith("flax.") or klass is object:
            continue
        for value in vars(klass).values():
            function = inspect.unwrap(value) if callable(value) else None
            code = getattr(function, "__code__", None)
            if code is None:
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
            except (OSError, TypeError, SyntaxError):
                continue
            bound = _bound_names(code)
            for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
                for kw in call.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        made = _resolved(call.func, function.__globals__, bound)
                        key = kw.value.value
                        # two classes under one name (an if and its else): which one ran?
                        found[key] = made if found.get(key, made) is made else None
    return found


def _bound_names(code: Any) -> set[str]:
    """Every name a function and the functions inside it bind for themselves: locals,
    arguments, closures (a callee under such a name is known only when it runs)."""
    names = set(code.co_varnames) | set(code.co_cellvars) | set(code.co_freevars)
    for const in code.co_consts:
        if hasattr(const, "co_varnames"):
            names |= _bound_names(const)
    return names


def _resolved(expr: Any, scope: Mapping[str, Any], bound: set[str]) -> type | None:
    """The linen class a callee expression names (``Dense``, ``nn.Dense``) through the
    function's globals, or None (a name the function binds itself is not the global)."""
    import ast

    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id in bound or expr.id not in scope:
        return None
    value = scope[expr.id]
    for part in reversed(parts):
        value = getattr(value, part, None)
    return value if isinstance(value, type) and issubclass(value, nn.Module) else None


def _only(values: set[Any]) -> Any:
    """The one value of ``values``, or None when there are none or several."""
    return next(iter(values)) if len(values) == 1 else None


def _fn(fn: Callable[..., Any]) -> _Node:
    """A parameterless entry (``nn.relu``) at one position: one node per position, as torch has
    one ``ReLU()`` per position, though the function is one object."""
    return _Node(fn, None, fn_name(fn))


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


def _walk(node: _Node) -> Iterator[tuple[Segment, _Node]]:
    for seg, child in node.children:
        if isinstance(child, _Node):
            yield seg, child
            yield from _walk(child)


# -- the adapter -----------------------------------------------------------------------------
