"""The framework-neutral tree: :class:`ParamTree` (the root, and its cache of the structure),
:class:`Node` (a live view of the module at one path) and :func:`wrap`."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import numpy as np

from . import _canon, _picture
from ._adapter import Adapter, adapter_for
from ._errors import (
    PathError,
    ShapeError,
    UnsupportedModelError,
    ValueTypeError,
)
from ._param import Param, leaf_of
from ._paths import Path, Segment, join, keystr, parts
from ._picture import Summary
from ._read import Structure, View, gc_pause, read
from ._registry import generation
from ._write import LoadResult, as_arrays, load, share_all


class Node:
    """The module at one path of the tree. Its methods act on its subtree, with paths relative to it.

    ``node[2]``, ``node["2"]`` and ``node["2.weight"]`` look up by path;
    ``node.weight`` reaches a leaf or a named child (a method of the same name
    wins: use ``node["name"]`` then). A node is a live view: it always shows
    the module that is at its path now.
    """

    __slots__ = ("__weakref__", "_at", "_tree", "path")

    def __init__(self, tree: ParamTree, at: Path) -> None:
        self._tree = tree
        self._at = at  # its segments from the root (unitree._paths); () for the root
        self.path = keystr(at)  # the dotted path users see; "" for the root

    # -- what it is -------------------------------------------------------------------
    @property
    def native(self) -> Any:
        """The framework's own module."""
        return self._tree._adapter.native(self._module)

    @property
    def _module(self) -> Any:
        """The adapter's object for this module, read live (what the adapter's methods take)."""
        return self._tree._module_at(self._at)

    @property
    def type_name(self) -> str:
        """The native class name: ``"Linear"``, ``"Dense"``."""
        return self._tree._adapter.type_name(self._module)

    @property
    def kind(self) -> str | None:
        """The layer kind of the canonical tables (``"dense"``, ``"conv"``...) or None."""
        return self._tree._adapter.kind(self._module)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path or '(root)'!r}: {self.type_name}>"

    def __str__(self) -> str:
        return _picture.draw(self._view())

    # -- lookup -----------------------------------------------------------------------------
    def __getitem__(self, key: int | str) -> Node | Param:
        return self._tree._lookup(self._at, self._key(key))

    def __getattr__(self, name: str) -> Node | Param:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._tree._lookup(self._at, name)

    def __contains__(self, key: int | str) -> bool:
        try:
            self[key]
        except PathError:
            return False
        return True

    def _segments(self) -> list[Segment]:
        return [seg for seg, _ in self._tree._adapter.children(self._module)]

    def __iter__(self) -> Iterator[Node]:
        """The children, in order."""
        return iter([self._tree._node((*self._at, seg)) for seg in self._segments()])

    def __len__(self) -> int:
        return len(self._segments())

    def _key(self, key: int | str) -> str:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if key < 0:  # from the end, like a list
                segments = self._segments()
                if -key > len(segments):
                    raise PathError(
                        f"Index {key} is out of range: {self.path or 'the root'} has {len(segments)} children."
                    )
                return str(segments[key])
            return str(key)
        if isinstance(key, str):
            return key
        raise PathError(
            f"Expected a path (str) or a position (int), got {type(key).__name__} {key!r}."
        )

    # -- traversal ---------------------------------------------------------------------------
    def _view(self) -> View:
        """This node's view of the model's current structure: what the canonical view, pictures,
        ports and checkpoints read (``unitree._read.View``)."""
        structure = self._tree._sync()
        return View(structure, self._at, self._module)

    def named_parameters(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Param]]:
        """(path, Param) for every parameter, each tied parameter once, at its first path.

        Parameters are what the framework would train (torch's ``_parameters``,
        including frozen ones, as ``torch.nn.Module.named_parameters`` lists them);
        running statistics and counters are buffers.
        """
        return self._named(True, prefix, remove_duplicate)

    def parameters(self) -> Iterator[Param]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Param]]:
        """(path, Param) for non-trainable state: running statistics, counters."""
        return self._named(False, prefix, remove_duplicate)

    def buffers(self) -> Iterator[Param]:
        for _, p in self.named_buffers():
            yield p

    def _named(
        self, is_param: bool, prefix: str, remove_duplicate: bool
    ) -> Iterator[tuple[str, Param]]:
        if not self.path and not prefix and remove_duplicate:  # the common case, precomputed
            structure = self._tree._sync()
            return iter(structure.params if is_param else structure.buffers)
        pre = prefix + "." if prefix else ""
        seen: set[int] = set()
        out = []
        for path, p in self._view().leaves():
            if p.is_buffer is is_param:
                continue
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            out.append((pre + keystr(path), p))
        return iter(out)

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Node]]:
        """(path, Node), this node first; a module reused at several positions once, at its first."""
        seen: set[int] = set()
        for path, native in self._view().modules():
            if remove_duplicate:
                if id(native) in seen:
                    continue
                seen.add(id(native))
            yield join(prefix, keystr(path)), self._tree._node((*self._at, *path))

    def modules(self) -> Iterator[Node]:
        for _, node in self.named_modules():
            yield node

    def select(self, pattern: str) -> list[Param]:
        """Parameters and buffers whose path (any of them, when tied) matches the glob ``pattern``."""
        found: dict[int, Param] = {}
        for path, p in self._view().leaves():
            if fnmatch.fnmatchcase(keystr(path), pattern):
                found.setdefault(id(p), p)
        return list(found.values())

    def ties(self) -> list[tuple[str, ...]]:
        """The groups of paths that reach one storage: ``[("2.weight", "4.weight"), ...]``."""
        return [tuple(map(keystr, paths)) for paths, _ in self._view().unique() if len(paths) > 1]

    def state_dict(self) -> dict[str, np.ndarray]:
        """{path: array} of parameters and persistent buffers, canonical layout, ties once.

        The arrays are read-only views of the live values where the framework
        allows it (as torch's ``state_dict`` shares storage): copy them to keep a snapshot.
        For the few layers whose canonical leaves are computed from several native
        ones (Keras's single LSTM bias, linen's per-gate cells), the keys are the
        canonical leaves (``lstm.bias_hh_l0``), not the native paths.
        """
        return _canon.state(self._view())

    def load_state_dict(
        self,
        state_dict: Mapping[str, Any],
        strict: bool = True,
        *,
        cast: bool = False,
        error_if_nonfinite: bool = False,
    ) -> LoadResult:
        """Write every entry of ``state_dict`` (canonical layout) into the tree: all or nothing.

        Keys are paths; a tied parameter may be given under any of its paths,
        and if it is given under several they must agree. Every missing,
        unexpected or mismatched entry is named in one ``StateDictError``, and
        nothing is written. ``strict=False`` skips missing and unexpected keys
        and returns them; shapes and dtypes are always checked.

        The dtype policy is ``ut.load``'s and ``ut.port``'s: a value is converted to the
        parameter's dtype only when no value can change (numpy's ``can_cast(...,
        "safe")``: float16 -> float32, int8 -> int32), unless ``cast=True`` (any numeric
        conversion: float64 -> float32 rounds, as PyTorch's ``copy_`` would).
        ``error_if_nonfinite=True`` refuses a NaN or an infinity anywhere
        (:class:`NonFiniteError`), and nothing is written.

        Returns:
            ``LoadResult(missing_keys, unexpected_keys)``: empty lists under ``strict=True``.

        Raises:
            StateDictError: missing or unexpected keys (under ``strict``), a shape or dtype
                that does not fit, a value that is not a numeric array, tied paths given
                different values.
            NonFiniteError: with ``error_if_nonfinite=True``, a NaN or an infinity.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueTypeError(
                f"Expected a state dict, a mapping of paths to arrays, got {type(state_dict).__name__}. "
                "Nothing was written."
            )
        arrays, bad = as_arrays(self._tree._adapter, state_dict)
        return load(
            self._view(),
            {k: (a.shape, a.dtype) for k, a in arrays.items()},
            arrays.__getitem__,
            strict,
            bad,
            casting="unsafe" if cast else "safe",
            error_if_nonfinite=error_if_nonfinite,
        )

    # -- changing the structure ------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget every gradient below this node, as torch's ``zero_grad()``: ``p.grad`` is None
        until the next ``backward``. ``backward`` adds to the gradients until then."""
        adapter = self._tree._adapter
        for _, p in self.named_parameters():
            adapter.zero_grad(leaf_of(p))

    def tie(self, src: int | str, dst: int | str) -> None:
        """Make ``dst`` use ``src``'s storage: every leaf of module ``dst`` becomes the leaf of
        module ``src`` at the same relative path (or, given two leaf paths, that one leaf).

        This is native sharing (torch: ``dst.weight = src.weight``): gradients
        accumulate over both uses, and a checkpoint stores the leaf once. Both
        sides must have the same leaves with the same shapes and dtypes; if not,
        the error names each difference and nothing changes. ``dst`` takes
        ``src``'s values.
        """
        a, b = self[src], self[dst]
        if isinstance(a, Param) and isinstance(b, Param):
            pairs = [(self._key(dst), a, self._occurrences()[self._key(dst)])]
        elif isinstance(a, Node) and isinstance(b, Node):
            left = {path: p for path, (p, _, _) in a._occurrences().items()}
            right = b._occurrences()
            problems = [f"{path}: in {src!r}, not in {dst!r}" for path in left if path not in right]
            problems += [
                f"{path}: in {dst!r}, not in {src!r}" for path in right if path not in left
            ]
            if problems:
                raise ShapeError(
                    f"Cannot tie {dst!r} to {src!r}; nothing changed:\n  " + "\n  ".join(problems)
                )
            pairs = [(path, left[path], right[path]) for path in left]
        else:
            raise ValueTypeError(
                f"Cannot tie {src!r} ({type(a).__name__}) to {dst!r} ({type(b).__name__}): give two modules or two leaves."
            )

        def described(x: Param) -> str:
            return f"{x.shape} {x.dtype}" + (" buffer" if x.is_buffer else "")

        problems = [
            f"{label}: {described(p)} in {src!r}, {described(q)} in {dst!r}"
            for label, p, (q, _, _) in pairs
            if p is not q and described(p) != described(q)
        ]
        if problems:
            raise ShapeError(
                f"Cannot tie {dst!r} to {src!r}; nothing changed:\n  " + "\n  ".join(problems)
            )
        tree = self._tree
        try:
            share_all(
                tree._adapter,
                tree._native,
                [(p, owner, name) for _, p, (q, owner, name) in pairs if p is not q],
            )
        finally:
            tree._fp = None  # the tie pattern changed: rebuild on next use

    def _occurrences(self) -> dict[str, tuple[Param, Any, str]]:
        """{relative path: (Param, owner module, native name)} of every leaf occurrence."""
        view = self._view()
        out: dict[str, tuple[Param, Any, str]] = {}
        for path, native in view.modules():
            for name, native_name, p in view.own_leaves(native):
                out[join(keystr(path), name)] = (p, native, native_name)
        return out


class ParamTree(Node):
    """The whole model: the :class:`Node` of the root, plus what only the root can do.

    Made by :func:`unitree.wrap`. The structure is read on first use and
    cached; each traversal compares a cheap fingerprint of the native model
    (the identities of its modules and leaves) and re-reads it if modules,
    parameters or ties changed. A lookup by path follows the live model. Param
    objects survive a re-read, so identity (``tree[2].weight is tree[4].weight``)
    always means shared storage.
    """

    def __init__(self, adapter: Adapter, native: Any) -> None:
        super().__init__(self, ())
        self._adapter = adapter
        self._native = native
        self._structure: Structure | None = None  # the last read
        # None: not read yet, or known to be stale; the Structure: read, its fingerprint not
        # made yet (the first traversal does not pay for it); else the fingerprint
        self._fp: Any = None
        self._kinds = -1  # unitree._registry.generation() at the last read
        self._nodes: dict[Path, Node] = {}
        self._lock = threading.RLock()  # one re-read at a time: it re-places the Params

    @property
    def native(self) -> Any:
        """The wrapped model."""
        return self._adapter.native(self._native)

    @property
    def _module(self) -> Any:
        return self._native

    @property
    def backend(self) -> str:
        """``"torch"``, ``"keras"``, ``"flax"`` or ``"gluon"``."""
        return self._adapter.name

    @property
    def variables(self) -> Any:
        """Flax linen only: the current variables dict, with every write made so far.

        Linen arrays are immutable, so a write builds new variables; pass these
        to ``module.apply``.
        """
        return self._adapter.variables(self._native)

    def _sync(self) -> Structure:
        """The structure of the model as it is now: re-read if the model changed."""
        with self._lock:
            if type(self._fp) is Structure:
                self._fp = self._fp.fingerprint()
            if (
                self._fp is None
                or self._kinds != generation()  # a layer type registered since: kinds, rules
                or self._adapter.fingerprint(self._native) != self._fp
            ):
                self._build()
            assert self._structure is not None
            return self._structure

    def _build(self) -> None:
        """Read the whole structure: one pass over every module and leaf."""
        with self._lock:
            old = self._structure
            self._kinds = generation()
            self._structure = read(self._adapter, self._native, old.by_ident if old else None)
            self._nodes = {}
            self._fp = self._structure

    def _read_once(self) -> Structure:
        """The structure, read if it never was; not compared with the model (lookups follow
        the live model and re-read only on a miss)."""
        if self._structure is None or self._fp is None or self._kinds != generation():
            with self._lock:  # threads that arrive together: one reads, the others wait for it
                if self._structure is None or self._fp is None or self._kinds != generation():
                    self._build()
        assert self._structure is not None
        return self._structure

    def _own_leaves(self, native: Any) -> list[tuple[str, str, Param]]:
        """(canonical name, native name, Param) of one module's own leaves, read live."""
        found = self._read_once().own_leaves(native)
        if found is None:  # a leaf we have not seen: the model changed since the last read
            self._build()
            found = self._read_once().own_leaves(native)
            if found is None:
                raise PathError(
                    f"A {self._adapter.type_name(native)} module is no longer part of the model."
                )
        return found

    def _node(self, at: Path) -> Node:
        """The one Node object for the path ``at``, so that ``tree[2] is tree["2"]``."""
        if not at:
            return self
        node = self._nodes.get(at)
        if node is None:
            node = self._nodes[at] = Node(self, at)
        return node

    def _module_at(self, at: Path) -> Any:
        """The module at ``at`` in the live model."""
        adapter, native = self._adapter, self._native
        for seg in at:
            native = adapter.child(native, seg)
            if native is None:
                raise PathError(
                    f"There is no module at {keystr(at)!r} any more in the {self.backend} model."
                )
        return native

    def _find(self, base: Path, text: str) -> tuple[Path, Any, Param | None] | None:
        """Follow the user's dotted ``text`` from the module at ``base`` through the live
        model, each part turned into a segment by the adapter (a position, an alias): (its
        path, the module, None) for a module, (owner's path, owner, Param) for a leaf, or None."""
        self._read_once()
        adapter = self._adapter
        native = self._module_at(base)
        at = list(base)
        keys = parts(text)
        for i, key in enumerate(keys):
            seg = adapter.segment(native, key)
            child = adapter.child(native, seg)
            if child is not None:
                native = child
                at.append(seg)
                continue
            if i == len(keys) - 1:
                for name, _, p in self._own_leaves(native):
                    if name == key:
                        return tuple(at), native, p
            return None
        return tuple(at), native, None

    def _lookup(self, base: Path, text: str) -> Node | Param:
        found = self._find(base, text)
        if found is None:
            s = self._sync()
            known = [keystr((*pre, name)) for pre, name, _ in s.occurrences]
            known += [keystr(path) for path, _ in s.modules]
            full = join(keystr(base), text)
            raise PathError.missing(full, f"{self.type_name} (the {self.backend} model)", known)
        at, _, p = found
        return self._node(at) if p is None else p

    def backward(self, loss_fn: Callable[[Any], Any], *inputs: Any) -> float:
        """Run the model on ``inputs``, ``loss_fn`` on its native output, and differentiate natively.

        ``loss_fn`` takes the model's native output and returns a native
        scalar. numpy inputs are moved to the model's device and floating
        dtype; native tensors are passed as they are. Gradients land in
        ``p.grad`` (canonical layout) and accumulate over calls, as in PyTorch;
        a tied parameter gets the sum over its uses. Returns the loss.
        """
        return float(self._adapter.backward(self._native, loss_fn, inputs))


def wrap(model: Any, *state: Any) -> ParamTree:
    """The framework-neutral tree of ``model``.

    ``wrap(net)`` for a torch ``nn.Module``, a Keras layer or model, an NNX module or a Gluon
    block; ``wrap(module, variables)`` for a flax linen module and its variables. A
    ``ParamTree`` is returned as it is.

    Raises:
        UnsupportedModelError: no adapter claims ``model`` (its framework's extra is not
            installed, or it is not a model), or extra arguments given with a ``ParamTree``
            (its variables are already inside it) or with a model of a framework that keeps
            no variables apart.

    >>> tree = wrap(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    >>> [(path, p.shape) for path, p in tree.named_parameters()]
    [('0.weight', (8, 4)), ('0.bias', (8,)), ('2.weight', (1, 8)), ('2.bias', (1,))]
    """
    if isinstance(model, ParamTree):
        if state:
            raise UnsupportedModelError(
                f"wrap() got a ParamTree and {len(state)} more argument(s): a tree already holds "
                "its variables. Wrap the module itself: ut.wrap(module, variables)."
            )
        return model
    adapter = adapter_for(model)
    with gc_pause:  # an adapter may read the whole structure here (flax linen)
        root = adapter.root(model, *state)
    return ParamTree(adapter, root)


def as_node(obj: Any) -> Node:
    """``obj`` if it is a tree or a node of one, else ``wrap(obj)``: what every public function
    that takes a tree does with a native model."""
    return obj if isinstance(obj, Node) else wrap(obj)


def view_of(obj: Any) -> View:
    """The view of ``obj`` (a tree, a node, or a native model) of its model's current
    structure: how the core's other modules (ports, checkpoints) read a tree."""
    return as_node(obj)._view()


def summary(tree: Any) -> Summary:
    """The table of ``tree`` (a tree, a node, or a native model): path, type, shape, dtype,
    count, frozen, tied-with, and totals.

    Raises:
        UnsupportedModelError: ``tree`` is no tree and no model an adapter claims.

    >>> ut.summary(net)  # the deck's shared-layer model on torch, 0.weight frozen
    path      type    shape   dtype    count  frozen  tied with
    --------  ------  ------  -------  -----  ------  ---------
    0.weight  Linear  (8, 4)  float32  32     frozen
    0.bias    Linear  (8,)    float32  8
    2.weight  Linear  (8, 8)  float32  64             4.weight
    2.bias    Linear  (8,)    float32  8              4.bias
    6.weight  Linear  (1, 8)  float32  8
    6.bias    Linear  (1,)    float32  1
    parameters: 121 (32 frozen)   buffers: 0   size: 484 B
    """
    return Summary(as_node(tree)._view())
