"""The flax linen adapter: a linen Module with its variables, ``ut.wrap(module, variables)``.

linen keeps the variables apart from the module. The tree is read from the module
definition: which module instance sits at each position, and the scope each instance
owns in the variables. Linen names a module passed in a field after the field
(``layers_2`` for position 2 of ``nn.Sequential``), and a module reused at two positions
is one instance, stored once, under the name of whichever position linen adopted first
(it adopts in the order of the keys sorted as strings: a module shared by positions 2 and
10 lives under ``layers_10``). unitree asks the definition, never the names:
``nn.Sequential``'s ``layers_N`` becomes position ``N`` (parameterless entries such as
``nn.relu`` count), lists and dicts of submodules become ``attr.N`` and ``attr.key`` where
linen auto-names them (``attr_N``), and go by their own names where they have them
(``[Block(name=str(i)) ...]`` is stored, and read, as ``0``, ``1``: PyTorch's ModuleList
path), and a module class with a ``setup`` is bound to its variables to see the submodules
it makes.

Submodules that a ``@nn.compact`` method creates exist only during a call: they are read
from the variables under linen's own names (``Dense_0``), with their class found from that
name (linen names them after their class), or, for a submodule given its own ``name=``,
from the call in the class's source that gives that name (``nn.Dense(8, name="proj")``:
the callee looked up in the class's module, never run). Where no class can be seen -- no
source, one name given to two classes, a submodule made by the ``setup`` of a compact-made
module -- the module keeps linen's leaf names and layouts (``kernel``, in, out). A cell's
gates are compact submodules named by gate (``ii``, ``hf``), known as dense layers from
the cell's class.

The whole structure is read once, in :meth:`LinenAdapter.root`, into the handles of
``_linen_tree``: ``_Root`` (the model), ``_Node`` (one module, list or dict) and ``_Var`` (one
variable, by collection, scope and name). The ``params`` collection holds the parameters;
every other collection (``batch_stats``...) holds buffers. Arrays are immutable: a write
builds new variables, which ``tree.variables`` returns, ready for
``module.apply(tree.variables, x)``; the variables given to ``wrap`` stay as they were.
``tree.backward`` is ``jax.grad`` over ``module.apply``; gradients accumulate over calls,
as in PyTorch. The layer kinds of the canonical tables come from the module's class (an
``RNN`` is the kind of its cell, so the whole recurrent layer is read as one), and layer
settings from its fields; a submodule a compact method made has no definition to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import numpy as np
from flax import linen as nn
from flax.core import FrozenDict
from flax.core.meta import AxisMetadata
from flax.errors import InvalidRngError, ModifyScopeVariableError

from unitree._adapter import Leaf, as_numpy, fingerprint
from unitree._errors import PathError, UnsupportedError, UnsupportedModelError
from unitree._paths import Segment, position
from unitree.layouts import CHAIN, KEEP, Step

from ._flax import (
    FlaxAdapter,
    function_step,
    inputs_like,
    jax_numpy,
    layout_kind,
    scalar,
)
from ._linen_tree import _AUTO_NAME, _at, _kinds, _LinenBuilder, _Node, _Root, _Var, _walk


def holds_linen(obj: Any) -> bool:
    """Whether ``obj`` is a model object holding a linen module and its params, as
    ``obj.module`` and ``obj.params`` (Hugging Face's ``FlaxPreTrainedModel``): either the
    params collection, or the whole variables dict ({"params": ..., "batch_stats": ...})."""
    return not isinstance(obj, nn.Module) and isinstance(getattr(obj, "module", None), nn.Module)


class LinenAdapter(FlaxAdapter):
    """linen, through the handles of ``_linen_tree`` (``_Root``, ``_Node``, ``_Var``)."""

    module_types = (nn.Module,)
    kinds = _kinds

    def root(self, module: Any, *state: Any) -> _Root:
        """The handles of ``module`` and its variables, given as the one item of ``state``; or
        of a model object that holds both (:func:`holds_linen`: Hugging Face's Flax models),
        whose ``params`` then get every value written (``model.params = ...``).

        Raises:
            UnsupportedModelError: ``module`` is no linen Module, or comes without its whole
                variables dict ({collection: {...}}, as ``module.init`` returns it); a model
                object that holds no params (built with ``_do_init=False``).
        """
        owner, whole = None, True
        if not state and holds_linen(module):
            owner, module = module, module.module
            params = owner.params
            if not isinstance(params, Mapping):
                raise UnsupportedModelError(
                    f"The {type(owner).__name__} holds no params (built with _do_init=False?): "
                    "wrap its module with the params you keep, ut.wrap(model.module, "
                    "{'params': params})."
                )
            whole = "params" in params and all(isinstance(v, Mapping) for v in params.values())
            state = (params if whole else {"params": params},)
        super().root(module)  # the type check only: linen is the one that takes state
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
        root = _Root(module, variables, owner, whole)
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

    def native(self, obj: Any) -> Any:
        return obj.raw() if isinstance(obj, _Var) else obj.module

    # -- structure -------------------------------------------------------------------
    def children(self, module: _Node) -> Sequence[tuple[Segment, Any]]:
        return module.children

    def child(self, module: _Node, segment: Segment) -> Any:
        return self._index(module).get(segment)

    def segment(self, module: _Node, key: str) -> Segment:
        """A position in ``nn.Sequential`` or a list field ("0" -> 0); other keys as they are."""
        i = position(key)
        return i if i is not None and i in self._index(module) else key

    @staticmethod
    def _index(module: _Node) -> dict[Segment, Any]:
        if module.index is None:
            module.index = dict(module.children)
        return module.index

    def leaves(self, module: _Node) -> Sequence[Leaf]:
        return module.leaves

    def leaf(self, module: _Node, name: str) -> _Var:
        for leaf in module.leaves:
            if leaf.name == name:
                return leaf.obj
        raise PathError(f"The {module.type_name} module no longer has a variable {name!r}.")

    def type_name(self, module: _Node) -> str:
        return module.type_name

    def kind(self, module: _Node) -> str | None:
        return layout_kind(module.kind, module.module)

    def fingerprint(self, root: _Root) -> Any:
        if root.fp is None:  # a linen definition never changes, nor do the handles read from it
            root.fp = fingerprint(
                root,
                lambda node: [leaf.obj for leaf in node.leaves],
                lambda node: [child for _, child in node.children],
            )
        return root.fp

    def definition(self, module: _Node) -> nn.Module | None:
        m = module.module  # None for a submodule a compact method made
        return m if isinstance(m, nn.Module) else None

    def step(self, module: _Node) -> Step:
        """What ``module`` does to the layout (``Adapter.step``): an ``nn.Sequential`` calls its
        entries in order; a function entry keeps it if it is one of jax's or flax's own
        activations or poolings; a dropout keeps it; every other call (a compact method's, a
        list's) is opaque."""
        m = module.module
        if isinstance(m, nn.Module):
            if isinstance(m, nn.Sequential) and type(m).__call__ is nn.Sequential.__call__:
                return Step(CHAIN)
            if type(m) is nn.Dropout:
                return Step(KEEP)
        elif module.scope is None and callable(m) and not isinstance(m, (list, tuple, Mapping)):
            return function_step(m)  # a function entry of an nn.Sequential
        return super().step(module)

    # -- one leaf ----------------------------------------------------------------------
    def array(self, leaf: _Var) -> Any:
        return leaf.array()

    def replace(self, leaf: _Var, value: Any) -> None:
        leaf.replace(value)

    def trainable(self, leaf: _Var) -> bool:
        return leaf.collection == "params"

    def batch_begin(self, leaf: _Var) -> None:
        leaf.root.batch = True

    def batch_end(self, leaf: _Var) -> None:
        root = leaf.root
        root.batch = False
        if root.dirty:
            root.publish()

    def backup(self, leaf: _Var) -> Any:
        return leaf.raw()  # the stored value itself, partitioning box and all

    def restore(self, leaf: _Var, backup: Any) -> None:
        leaf.restore(backup)

    def grad(self, leaf: _Var) -> np.ndarray | None:
        return None if leaf.grad is None else np.asarray(leaf.grad)

    def zero_grad(self, leaf: _Var) -> None:
        leaf.grad = None

    # -- the whole model ---------------------------------------------------------------
    def backward(self, root: _Root, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        """``jax.grad`` over ``module.apply``, with respect to the ``params`` collection.

        The other collections go in as they are, and are mutable: a module that updates its
        batch statistics in this call (``use_running_average=False``) leaves the new ones in
        ``tree.variables``, as a training step in PyTorch updates its running statistics.
        """
        variables = root.variables
        params = variables.get("params")
        rest = {c: v for c, v in variables.items() if c != "params"}
        mutable = [c for c in rest if c != "intermediates"]
        args = inputs_like(inputs, jax.tree_util.tree_leaves(params))
        module = root.definition

        def f(p: Any) -> tuple[Any, Any]:
            vs = rest if p is None else {**rest, "params": p}
            if mutable:
                y, updates = module.apply(vs, *args, mutable=mutable)
            else:
                y, updates = module.apply(vs, *args), {}
            return scalar(loss_fn(y)), updates

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

    def share(self, leaf: Any, dst_owner: Any, dst_name: str) -> None:
        raise UnsupportedError(
            "tree.tie is not supported on flax linen: linen shares parameters through the "
            "module definition, by reusing one module instance at both positions "
            "(shared = nn.Dense(8); nn.Sequential([..., shared, ..., shared])), "
            "then module.init; variables cannot be tied after init."
        )

    def variables(self, root: _Root) -> Any:
        return root.variables

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: Any,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """``module.apply(variables, *inputs, **kwargs)`` with no mutable collection (but the
        ``intermediates`` it captures into): batch statistics are read as stored. A linen
        module's mode is a field or an argument, not a state to switch: a model that would
        update its batch statistics or draw dropout randomness here raises, and the
        argument that selects inference (``kwargs={"train": False}``) is the user's to give.

        Captured with linen's ``capture_intermediates``, filtered to the scopes of the
        modules asked for (``__call__`` only); linen records every call of a module, and a
        module reused at two places (one scope) records both. A model object that holds its
        module and params (Hugging Face's) is called itself, ``model(*inputs, params=...,
        **kwargs)``, as its users call it: its outputs are compared, no layer's.

        Raises:
            UnsupportedError: ``root`` is a part of a model, not a whole one; or the model
                needs mutable state or randomness for this call (training mode).
        """
        if not isinstance(root, _Root):
            raise UnsupportedError(
                "A linen submodule cannot run on its own: its variables live in the whole "
                "model's. Run (compare) the whole model."
            )
        variables = {c: v for c, v in root.variables.items() if c != "intermediates"}
        args = inputs_like(inputs, jax.tree_util.tree_leaves(variables.get("params")))
        if root.owner is not None:  # a model object's own call makes its module's arguments
            params = variables if root.whole else variables["params"]
            out = root.owner(*args, params=params, **(kwargs or {}))
            return as_numpy(out, jax_numpy), {}  # its call applies the module: no capture
        ids: dict[tuple[str, ...], list[int]] = {}  # scope -> the handles living there
        for m in capture:
            if isinstance(m, _Node) and m.scope is not None:
                ids.setdefault(m.scope, []).append(id(m))

        def wanted(module: nn.Module, method: str) -> bool:
            return method == "__call__" and tuple(module.scope.path) in ids

        try:
            out, state = root.definition.apply(
                variables,
                *args,
                capture_intermediates=wanted,
                mutable=["intermediates"],
                **(kwargs or {}),
            )
        except (ModifyScopeVariableError, InvalidRngError) as e:
            raise UnsupportedError(
                f"The linen {root.type_name} runs in training mode here ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}): a comparison runs it for inference. Pass the "
                "argument that selects inference mode as a keyword argument of the call "
                "(for example train=False or deterministic=True)."
            ) from e
        captured: dict[int, list[Any]] = {}
        caught = state.get("intermediates", {})
        for scope, handles in ids.items():
            found = _at(caught, scope)
            calls = found.get("__call__") if found is not None else None
            if calls:
                outputs = [as_numpy(x, jax_numpy) for x in calls]
                for key in handles:
                    captured[key] = outputs
        return as_numpy(out, jax_numpy), captured


adapter = LinenAdapter()
