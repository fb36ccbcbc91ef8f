"""The flax NNX adapter: an ``nnx.Module``, which holds its own variables: ``ut.wrap(model)``.

Paths are ``nnx.Sequential`` positions (parameterless entries such as ``nnx.relu``
count), attribute names, and ``attr.N`` / ``attr.key`` for lists and dicts (``nnx.List``,
``nnx.Dict``, or plain ones). A tie is one ``nnx.Variable`` object reached from two
places, as NNX's own graph sees sharing; ``nnx.Param`` variables are parameters, every
other variable (``BatchStat``...) a buffer, and random-number state (``RngKey``,
``RngCount``) is left out. A write replaces the variable's array, so every alias sees it.
``tree.backward`` is ``nnx.value_and_grad``, its gradients kept by the adapter (a variable
has no room for one) and accumulated over calls, as in PyTorch; ``tree.tie`` assigns one
module's variables to the other's attributes. The layer kinds of the canonical tables
come from the module's class (an ``RNN`` is the kind of its cell, so the whole recurrent
layer is read as one), and layer settings from its attributes.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import numpy as np
from flax import nnx

from unitree._adapter import KindTable, Leaf, as_numpy, fingerprint, new_leaf
from unitree._errors import PathError, UnsupportedError, UnsupportedModelError
from unitree._paths import Segment, position
from unitree.layouts import CHAIN, KEEP, Step

from ._flax import (
    BY_CELL,
    FlaxAdapter,
    fn_name,
    function_step,
    get_value,
    inputs_like,
    jax_numpy,
    kind_of,
    layout_kind,
    scalar,
    traced,
)

_KINDS = KindTable(
    {
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
        nnx.RNN: BY_CELL,
        nnx.MultiHeadAttention: "attention",
    }
)

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


def _items(m: Any) -> Iterable[tuple[Any, Any]]:
    """The entries of an NNX node: attributes of a module, items of a list or dict."""
    what = _classify(m)
    if what == _LIST:
        return enumerate(m)
    if what == _DICT:
        return m.items()
    if what == _MODULE:
        return [(k, v) for k, v in vars(m).items() if not k.startswith(("_pytree__", "_object__"))]
    return ()


def _is_node(value: Any) -> bool:
    """A module, or a list or dict holding modules or variables."""
    what = _classify(value)
    if what == _MODULE:
        return True
    if what in (_LIST, _DICT):
        return isinstance(value, nnx.Module) or any(
            _classify(v) in (_PARAM, _BUFFER) or _is_node(v) for _, v in _items(value)
        )
    return False


def _set(var: nnx.Variable, value: Any) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:
        var.value = value


def _leaf_objects(module: Any) -> list[Any]:
    """The variables :meth:`NnxAdapter.leaves` lists, without making its ``Leaf`` tuples."""
    return [v for _, v in _items(module) if _classify(v) in (_PARAM, _BUFFER)]


class _Fn:
    """A parameterless entry (``nnx.relu``) at one position of an ``nnx.Sequential``: one node
    per position, as torch has one ``ReLU()`` per position, though the function is one object."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = fn_name(fn)


# -- the adapter -----------------------------------------------------------------------------
class NnxAdapter(FlaxAdapter):
    """NNX, through its own modules and variables (and ``_Fn`` for a function in a Sequential)."""

    module_types = (nnx.Module,)
    kinds = _KINDS

    def __init__(self) -> None:
        # gradients, by id of the variable: (variable, accumulated gradient). A model's
        # entries go when the model does, as a torch parameter's .grad goes with it.
        self._grads: dict[int, tuple[nnx.Variable, Any]] = {}
        self._owned: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()
        # the nodes of an nnx.Sequential's functions: {(position, id(function)): node}
        self._fns: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], _Fn]] = (
            weakref.WeakKeyDictionary()
        )

    def root(self, obj: Any, *state: Any) -> Any:
        """The model itself.

        Raises:
            UnsupportedModelError: ``obj`` is no ``nnx.Module``, or comes with variables.
        """
        super().root(obj)  # the type check only: the message for extra state is NNX's own
        if state:
            raise UnsupportedModelError(
                f"An nnx.Module holds its own variables: wrap it as ut.wrap(model); got {len(state)} more arguments."
            )
        return obj

    def native(self, obj: Any) -> Any:
        return obj.fn if type(obj) is _Fn else obj

    # -- structure -------------------------------------------------------------------
    def children(self, module: Any) -> Sequence[tuple[Segment, Any]]:
        if isinstance(module, nnx.Sequential):
            return [(i, self._layer(module, i, x)) for i, x in enumerate(module.layers)]
        if _classify(module) == _LIST:
            return [(i, v) for i, v in enumerate(module) if _is_node(v)]
        return [(str(k), v) for k, v in _items(module) if _is_node(v)]

    def segment(self, module: Any, key: str) -> Segment:
        """A position in an ``nnx.Sequential`` or a list ("0" -> 0); other keys as they are."""
        i = position(key)
        if i is not None and (isinstance(module, nnx.Sequential) or _classify(module) == _LIST):
            return i
        return key

    def _layer(self, seq: nnx.Sequential, i: int, layer: Any) -> Any:
        if isinstance(layer, nnx.Module):
            return layer
        # the same node each time: the fingerprint holds its id
        nodes = self._fns.get(seq)
        if nodes is None:
            nodes = self._fns[seq] = {}
        node = nodes.get((i, id(layer)))
        if node is None:
            node = nodes[(i, id(layer))] = _Fn(layer)
        return node

    def child(self, module: Any, segment: Segment) -> Any:
        if isinstance(module, nnx.Sequential):
            layers = module.layers
            if type(segment) is not int or segment >= len(layers):
                return None
            return self._layer(module, segment, layers[segment])
        return super().child(module, segment)

    def leaves(self, module: Any) -> Sequence[Leaf]:
        out = []
        for k, v in _items(module):
            what = _classify(v)
            if what in (_PARAM, _BUFFER):
                out.append(new_leaf((str(k), v, what == _PARAM, True)))
        return out

    def leaf(self, module: Any, name: str) -> Any:
        for k, v in _items(module):
            if str(k) == name and _classify(v) in (_PARAM, _BUFFER):
                return v
        raise PathError(f"The {self.type_name(module)} module no longer has a variable {name!r}.")

    def type_name(self, module: Any) -> str:
        return module.name if type(module) is _Fn else type(module).__name__

    def kind(self, module: Any) -> str | None:
        if _classify(module) != _MODULE:
            return None
        return layout_kind(kind_of(_KINDS, module), module)

    def fingerprint(self, root: Any) -> Any:
        return fingerprint(root, _leaf_objects, lambda m: [c for _, c in self.children(m)])

    def definition(self, module: Any) -> Any:
        return module  # settings are asked of modules of a kind only: flax's own layers

    def step(self, module: Any) -> Step:
        """What ``module`` does to the layout (``Adapter.step``): an ``nnx.Sequential`` calls
        its entries in order; a function entry keeps it if it is one of jax's or flax's own
        activations or poolings; a dropout keeps it; every other call is opaque."""
        if type(module) is _Fn:
            return function_step(module.fn)
        if isinstance(module, nnx.Sequential) and type(module).__call__ is nnx.Sequential.__call__:
            return Step(CHAIN)
        if type(module) is nnx.Dropout:
            return Step(KEEP)
        return super().step(module)

    # -- one leaf ----------------------------------------------------------------------
    def array(self, leaf: nnx.Variable) -> Any:
        return get_value(leaf)

    def replace(self, leaf: nnx.Variable, value: Any) -> None:
        _set(leaf, value)

    def trainable(self, leaf: nnx.Variable) -> bool:
        return isinstance(leaf, nnx.Param)

    def grad(self, leaf: nnx.Variable) -> np.ndarray | None:
        hit = self._grads.get(id(leaf))
        g = hit[1] if hit is not None and hit[0] is leaf else None
        return None if g is None else np.asarray(g)

    def zero_grad(self, leaf: nnx.Variable) -> None:
        self._grads.pop(id(leaf), None)

    # -- the whole model ---------------------------------------------------------------
    def backward(self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        """``nnx.value_and_grad`` with respect to the ``nnx.Param`` variables; NNX carries the
        other variables' updates (batch statistics in training mode) back into the model."""
        # NNX's own paths, as its gradient State has them: each shared variable at its first
        params = {path: v for path, v in nnx.iter_graph(root) if isinstance(v, nnx.Param)}
        args = inputs_like(inputs, (get_value(v) for v in params.values()))

        def f(model: Any, *xs: Any) -> Any:
            return scalar(loss_fn(model(*xs)))

        loss, grads = nnx.value_and_grad(f)(root, *args)
        owned = self._owned.get(root)
        if owned is None:
            owned = self._owned[root] = set()
            weakref.finalize(root, _forget, self._grads, owned)
        for path, g in nnx.to_flat_state(grads):
            var = params[path]
            g = get_value(g) if isinstance(g, nnx.Variable) else g
            hit = self._grads.get(id(var))
            total = g if hit is None or hit[0] is not var else hit[1] + g
            self._grads[id(var)] = (var, total)
            owned.add(id(var))
        return float(loss)

    def share(self, var: Any, dst_owner: Any, dst_name: str) -> None:
        what = _classify(dst_owner)
        if what in (_LIST, _DICT):
            dst_owner[int(dst_name) if what == _LIST else dst_name] = var
        else:
            setattr(dst_owner, dst_name, var)

    def variables(self, root: Any) -> Any:
        raise UnsupportedError(
            "tree.variables is for flax linen, which keeps variables apart; an nnx.Module "
            "holds its own: nnx.state(tree.native)."
        )

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: Any,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """``root(*inputs, **kwargs)`` in evaluation mode: ``deterministic`` and
        ``use_running_average`` True wherever a module has them, as ``Module.eval()`` sets
        them, and each put back afterwards.

        A module is captured by a wrapper of its class's ``__call__`` for the run, which
        records the instances asked for only (Python looks ``__call__`` up on the class: an
        instance attribute would never be called); the class is restored afterwards, and one
        run patches classes at a time (a lock). A module called only inside a jax transform
        of the model's own (``nnx.jit``, ``nnx.scan``) has no concrete output: not captured.
        """
        modules = [m for _, m in nnx.iter_graph(root) if isinstance(m, nnx.Module)]
        arrays = (get_value(v) for _, v in nnx.iter_graph(root) if isinstance(v, nnx.Param))
        args = inputs_like(inputs, arrays)
        wanted = {id(m): m for m in capture if isinstance(m, nnx.Module)}
        captured: dict[int, list[Any]] = {}
        modes = [
            (m, name, getattr(m, name)) for m in modules for name in _EVAL_FLAGS if hasattr(m, name)
        ]
        patched: list[tuple[type, Any]] = []
        with _PATCHING:
            try:
                _catch_calls(wanted, captured, patched)
                for m, name, _ in modes:
                    setattr(m, name, True)
                out = root(*args, **(kwargs or {}))
                return as_numpy(out, jax_numpy), captured
            finally:
                for cls, old in reversed(patched):
                    if old is _NOTHING:
                        delattr(cls, "__call__")
                    else:
                        cls.__call__ = old
                for m, name, value in modes:
                    setattr(m, name, value)


# What Module.eval() sets True: dropout's and attention's, batch norm's.
_EVAL_FLAGS = ("deterministic", "use_running_average")
_PATCHING = threading.RLock()  # one run patches classes at a time
_NOTHING = object()  # a class with no ``__call__`` of its own before the run


def _catch_calls(
    wanted: dict[int, Any], captured: dict[int, list[Any]], patched: list[tuple[type, Any]]
) -> None:
    """Wrap the ``__call__`` of the class of every module in ``wanted`` so that a call of one of
    those modules appends its output (numpy) to ``captured``; each class patched goes into
    ``patched`` with what its own ``__call__`` was, to be put back in reverse order. A module
    whose ``__call__`` reaches a patched base's (``super().__call__``) is recorded once, by
    the outermost call."""
    running: set[int] = set()  # modules inside their own call: recorded by the outermost

    def catching(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            key = id(self)
            if key not in wanted or key in running:
                return call(self, *args, **kwargs)
            running.add(key)
            try:
                out = call(self, *args, **kwargs)
            finally:
                running.discard(key)
            if not traced(out):
                captured.setdefault(key, []).append(as_numpy(out, jax_numpy))
            return out

        return wrapper

    for cls in dict.fromkeys(type(m) for m in wanted.values()):
        patched.append((cls, cls.__dict__.get("__call__", _NOTHING)))
        cls.__call__ = catching(cls.__call__)


def _forget(grads: dict[int, Any], ids: set[int]) -> None:
    for i in ids:
        grads.pop(i, None)


adapter = NnxAdapter()
