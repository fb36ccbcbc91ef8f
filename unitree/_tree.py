"""The framework-neutral tree: :class:`ParamTree`, :class:`Node` and :class:`Param`."""

from __future__ import annotations

import fnmatch
import gc
from collections.abc import Hashable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Callable, NamedTuple, Union

import numpy as np

from . import _picture
from ._adapter import Adapter, adapter_for
from ._errors import (
    PathError,
    ShapeError,
    StateDictError,
    UninitializedError,
    UnitreeError,
    ValueTypeError,
)
from .layouts import Rule, inverse, rules


def _readonly(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _numeric(a: np.ndarray) -> bool:
    # "V" covers bfloat16 and the float8 types, which numpy knows only through ml_dtypes.
    return a.dtype.kind in "biufcV" and a.dtype.names is None


class Param:
    """One parameter or buffer: one underlying storage, however many paths reach it.

    Values are always in the canonical layout (DESIGN §3). ``p.numpy()`` is
    read-only; write with ``p[i, j] = v`` or ``p.set(v)``, which tell the
    framework, so every alias and the native model see the change.
    """

    __slots__ = ("__weakref__", "_adapter", "_ident", "_name", "_owner", "_paths", "_persistent", "_rule", "_is_param")

    def __init__(self, adapter: Adapter, owner: Any, name: str, ident: Hashable, rule: Rule | None, is_param: bool, persistent: bool) -> None:
        self._adapter = adapter
        self._owner = owner  # the native module holding it at its first path
        self._name = name  # its native name there
        self._ident = ident
        self._rule = rule
        self._is_param = is_param
        self._persistent = persistent
        self._paths: list[str] = []

    # -- where it is --------------------------------------------------------------
    @property
    def path(self) -> str:
        """The first path it appears at."""
        return self._paths[0]

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path it appears at, first first: ``("2.weight", "4.weight")`` when tied."""
        return tuple(self._paths)

    @property
    def native(self) -> Any:
        """The framework's own parameter object, untouched."""
        return self._adapter.leaf(self._owner, self._name)

    @property
    def data(self) -> Any:
        """The framework's own tensor, native layout, no copy."""
        return self._adapter.data(self.native)

    # -- what it is -----------------------------------------------------------------
    def _perm(self, ndim: int) -> tuple[int, ...] | None:
        if self._rule is None or self._rule.perm is None:
            return None
        perm = self._rule.perm(ndim)
        return None if perm == tuple(range(ndim)) else perm

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Canonical shape; None while the framework has not decided it (lazy initialization)."""
        shape = self._adapter.shape(self.native)
        if shape is None:
            return None
        perm = self._perm(len(shape))
        return tuple(shape[i] for i in perm) if perm else tuple(shape)

    @property
    def dtype(self) -> str:
        """The dtype as numpy spells it: ``"float32"`` on every backend."""
        return self._adapter.dtype(self.native)

    @property
    def device(self) -> str:
        """``"cpu"``, ``"cuda:0"``, ..."""
        return self._adapter.device(self.native)

    @property
    def trainable(self) -> bool:
        """False for buffers and for parameters the framework computes no gradient for."""
        return self._is_param and self._adapter.trainable(self.native, True)

    @property
    def is_buffer(self) -> bool:
        """Non-trainable state (running statistics, counters) rather than a parameter."""
        return not self._is_param

    def _np_dtype(self) -> np.dtype:
        try:
            return np.dtype(self.dtype)
        except TypeError:  # bfloat16 and friends: numpy knows them only through ml_dtypes
            return self.numpy().dtype

    # -- reading ----------------------------------------------------------------------
    def _native_checked(self) -> Any:
        leaf = self.native
        if self._adapter.shape(leaf) is None:
            raise UninitializedError(
                f"{self.path} is not initialized yet: its shape is decided by the first forward pass. "
                "Run the model once on an input, then read it."
            )
        return leaf

    def numpy(self) -> np.ndarray:
        """The value, canonical layout, read-only; a view of the framework's memory where it can be."""
        a = self._adapter.read(self._native_checked())
        perm = self._perm(a.ndim)
        return _readonly(a.transpose(perm) if perm else a)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = self.numpy()
        if dtype is not None:
            a = a.astype(dtype)
        return a.copy() if copy else a

    def __getitem__(self, index: Any) -> Any:
        return self.numpy()[index]

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient, canonical layout, read-only; None before any backward pass."""
        g = self._adapter.grad(self.native)
        if g is None:
            return None
        perm = self._perm(g.ndim)
        return _readonly(g.transpose(perm) if perm else g)

    # -- writing ------------------------------------------------------------------------
    def __setitem__(self, index: Any, value: Any) -> None:
        """Write ``value`` into ``self[index]`` in place; numpy broadcasting applies."""
        self._assign(value, index)

    def set(self, value: Any) -> None:
        """Replace the whole value with ``value`` (canonical layout, numpy or native), in place."""
        self._assign(value, None)

    def _assign(self, value: Any, index: Any) -> None:
        current = self.numpy()
        where = self.path if index is None else f"{self.path}[{_index_str(index)}]"
        value = self._validated(value, current.dtype, where)
        if index is None:
            if value.shape != current.shape:
                raise ShapeError(f"Cannot set {where}: expected shape {current.shape}, got a value of shape {value.shape}. Nothing was written.")
            self._write(value)
            return
        try:
            target = current[index]
        except (IndexError, TypeError, ValueError) as e:
            raise ShapeError(f"Cannot write {where}: {e} ({self.path} has shape {current.shape}). Nothing was written.") from None
        try:
            value = np.broadcast_to(value, np.shape(target))
        except ValueError:
            raise ShapeError(f"Cannot write a value of shape {value.shape} into {where}, of shape {np.shape(target)}. Nothing was written.") from None
        if self._perm(current.ndim) is None:
            self._adapter.write(self.native, value, index)
        else:
            full = current.copy()
            full[index] = value
            self._write(full)

    def _validated(self, value: Any, dtype: np.dtype, where: str) -> np.ndarray:
        try:
            a = self._adapter.asarray(value)
        except Exception as e:
            raise ValueTypeError(f"Cannot write {type(value).__name__} into {where}: not a numeric array ({e}). Nothing was written.") from None
        if not _numeric(a):
            raise ValueTypeError(f"Cannot write {where} ({dtype}): expected a numeric value, got {a.dtype} {value!r:.60}. Nothing was written.")
        if not np.can_cast(a.dtype, dtype, casting="same_kind"):
            raise ValueTypeError(f"Cannot write {a.dtype} into {where}, which holds {dtype}, without changing kind of number. Nothing was written.")
        return a.astype(dtype, copy=False)

    def _write(self, value: np.ndarray) -> None:
        """Write a validated canonical value of the right shape and dtype."""
        perm = self._perm(value.ndim)
        native = np.ascontiguousarray(value.transpose(inverse(perm))) if perm else value
        self._adapter.write(self.native, native, None)

    def __repr__(self) -> str:
        shape = self.shape
        extra = "" if len(self._paths) < 2 else f", tied={self.paths}"
        kind = "Buffer" if not self._is_param else "Param"
        return f"{kind}({self.path!r}, shape={'unknown' if shape is None else shape}, dtype={self.dtype!r}, device={self.device!r}{extra})"


def _index_str(index: Any) -> str:
    items = index if isinstance(index, tuple) else (index,)
    return ", ".join(":" if i == slice(None) else "..." if i is Ellipsis else repr(i) for i in items)


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` and ``ut.load(strict=False)`` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


Entry = tuple[str, Param]
_NO_NAMES: Mapping[str, str] = MappingProxyType({})  # shared by every node whose leaf names are canonical


class Node:
    """One module of the tree. Its methods act on its subtree, with paths relative to it.

    ``node[2]``, ``node["2"]`` and ``node["2.weight"]`` look up by path;
    ``node.weight`` reaches a leaf or a named child (a method of the same name
    wins: use ``node["name"]`` then).
    """

    __slots__ = ("__weakref__", "_children", "_leaves", "_names", "_native", "_tree", "path")

    def __init__(self, tree: ParamTree, native: Any, path: str) -> None:
        self._tree = tree
        self._native = native
        self.path = path  # dotted path from the root; "" for the root
        # filled by ParamTree._build
        self._children: dict[str, Node]
        self._leaves: dict[str, Param]
        self._names: Mapping[str, str]  # canonical -> native leaf name, where they differ

    # -- what it is -------------------------------------------------------------------
    @property
    def native(self) -> Any:
        """The framework's own module."""
        return self._native

    @property
    def type_name(self) -> str:
        """The native class name: ``"Linear"``, ``"Dense"``."""
        return self._tree._adapter.type_name(self._native)

    @property
    def kind(self) -> str | None:
        """The layer kind of the canonical tables (``"dense"``, ``"conv"``...) or None."""
        return self._tree._adapter.kind(self._native)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path or '(root)'!r}: {self.type_name}>"

    def __str__(self) -> str:
        return _picture.draw(self._current())

    # -- lookup -----------------------------------------------------------------------------
    def _current(self) -> Node:
        """This node in the tree as it is now: the structure is re-read if the model changed."""
        if self._tree._sync() and self is not self._tree:
            return self._tree._lookup(self.path, "")
        return self

    def __getitem__(self, key: int | str) -> Node | Param:
        return self._tree._lookup(self._key(key), self.path)

    def __getattr__(self, name: str) -> Node | Param:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._tree._lookup(name, self.path)

    def __contains__(self, key: int | str) -> bool:
        try:
            self[key]
        except PathError:
            return False
        return True

    def __iter__(self) -> Iterator[Node]:
        """The children, in order."""
        return iter(list(self._current()._children.values()))

    def __len__(self) -> int:
        return len(self._current()._children)

    def _key(self, key: int | str) -> str:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if key < 0:  # from the end, like a list
                segments = list(self._current()._children)
                if -key > len(segments):
                    raise PathError(f"Index {key} is out of range: {self.path or 'the root'} has {len(segments)} children.")
                return segments[key]
            return str(key)
        if isinstance(key, str):
            return key
        raise PathError(f"Expected a path (str) or a position (int), got {type(key).__name__} {key!r}.")

    # -- traversal ---------------------------------------------------------------------------
    def _walk(self, prefix: str = "") -> list[Entry]:
        """Every leaf occurrence under this node, in traversal order, aliases included."""
        out: list[Entry] = []

        def visit(node: Node, pre: str) -> None:
            out.extend((pre + name, p) for name, p in node._leaves.items())
            for seg, child in node._children.items():
                visit(child, pre + seg + ".")

        visit(self, prefix)
        return out

    def _entries(self) -> list[Entry]:
        node = self._current()
        return node._tree._flat if node is node._tree else node._walk()

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Param]]:
        """(path, Param) for every parameter, each tied parameter once, at its first path.

        Parameters are what the framework would train (torch's ``_parameters``,
        including frozen ones, as ``torch.nn.Module.named_parameters`` lists them);
        running statistics and counters are buffers.
        """
        return self._named(True, prefix, remove_duplicate)

    def parameters(self) -> Iterator[Param]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Param]]:
        """(path, Param) for non-trainable state: running statistics, counters."""
        return self._named(False, prefix, remove_duplicate)

    def buffers(self) -> Iterator[Param]:
        for _, p in self.named_buffers():
            yield p

    def _named(self, is_param: bool, prefix: str, remove_duplicate: bool) -> Iterator[tuple[str, Param]]:
        pre = prefix + "." if prefix else ""
        seen: set[int] = set()
        for path, p in self._entries():
            if p._is_param is not is_param:
                continue
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            yield pre + path, p

    def named_modules(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Node]]:
        """(path, Node), this node first; a module reused at several positions once, at its first."""
        seen: set[int] = set()
        stack: list[tuple[str, Node]] = [(prefix, self._current())]
        while stack:
            path, node = stack.pop()
            if remove_duplicate:
                if id(node._native) in seen:
                    continue
                seen.add(id(node._native))
            yield path, node
            pre = path + "." if path else ""
            stack.extend(reversed([(pre + seg, child) for seg, child in node._children.items()]))

    def modules(self) -> Iterator[Node]:
        for _, node in self.named_modules():
            yield node

    def select(self, pattern: str) -> list[Param]:
        """Parameters and buffers whose path (any of them, when tied) matches the glob ``pattern``."""
        found: dict[int, Param] = {}
        for path, p in self._entries():
            if fnmatch.fnmatchcase(path, pattern):
                found.setdefault(id(p), p)
        return list(found.values())

    def ties(self) -> list[tuple[str, ...]]:
        """The groups of paths that reach one storage: ``[("2.weight", "4.weight"), ...]``."""
        groups: dict[int, list[str]] = {}
        for path, p in self._entries():
            groups.setdefault(id(p), []).append(path)
        return [tuple(paths) for paths in groups.values() if len(paths) > 1]

    def _unique(self) -> list[tuple[list[str], Param]]:
        """Each leaf once, with every path it has under this node, in traversal order."""
        groups: dict[int, tuple[list[str], Param]] = {}
        for path, p in self._entries():
            group = groups.get(id(p))
            if group is None:
                groups[id(p)] = ([path], p)
            else:
                group[0].append(path)
        return list(groups.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """{path: array} of parameters and persistent buffers, canonical layout, ties once.

        The arrays are read-only views of the live values where the framework
        allows it (as torch's ``state_dict`` shares storage): copy them to keep a snapshot.
        """
        return {paths[0]: p.numpy() for paths, p in self._unique() if p._persistent}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> LoadResult:
        """Write every entry of ``state_dict`` (canonical layout) into the tree: all or nothing.

        Keys are paths; a tied parameter may be given under any of its paths,
        and if it is given under several they must agree. Every missing,
        unexpected or mismatched entry is named in one ``StateDictError``, and
        nothing is written. ``strict=False`` skips missing and unexpected keys
        and returns them; shapes and dtypes are always checked. Values are cast
        to the parameter's dtype when the kind of number stays the same
        (float64 -> float32, not float -> int).
        """
        arrays: dict[str, np.ndarray] = {}
        bad: list[str] = []
        adapter = self._tree._adapter
        for key, value in state_dict.items():
            try:
                a = adapter.asarray(value)
            except Exception as e:
                bad.append(f"{key}: not a numeric array ({type(value).__name__}: {e})")
                continue
            arrays[key] = a
        return self._load({k: (a.shape, a.dtype) for k, a in arrays.items()}, arrays.__getitem__, strict, bad)

    def _load(
        self,
        header: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        get: Callable[[str], np.ndarray],
        strict: bool,
        problems: list[str] | None = None,
        cast: str = "same_kind",
    ) -> LoadResult:
        """Validate every entry against the tree, then write them all or none."""
        problems = list(problems or [])
        plan: list[tuple[Param, str]] = []
        missing: list[str] = []
        used: set[str] = set()
        for paths, p in self._unique():
            if not p._persistent:
                continue
            keys = [k for k in paths if k in header]
            used.update(keys)
            if not keys:
                missing.append(paths[0])
                continue
            shape, dtype = header[keys[0]]
            want = p.shape
            if want is None:
                problems.append(f"{keys[0]}: the model's parameter is not initialized yet; run the model once on an input first")
                continue
            if tuple(shape) != want:
                problems.append(f"{keys[0]}: shape {tuple(shape)} in the source, {want} in the model")
                continue
            np_dtype = np.dtype(dtype)
            if not (np_dtype.kind in "biufcV" and np.can_cast(np_dtype, p._np_dtype(), casting=cast)):
                problems.append(f"{keys[0]}: dtype {np_dtype} in the source, {p.dtype} in the model")
                continue
            if len(keys) > 1:
                first = get(keys[0])
                for other in keys[1:]:
                    if not np.array_equal(first, get(other)):
                        problems.append(f"{keys[0]} and {other} are one tied parameter in the model but hold different values in the source")
            plan.append((p, keys[0]))
        unexpected = [k for k in header if k not in used]
        if strict:
            problems += [f"{k}: missing from the source" for k in missing]
            problems += [f"{k}: unexpected, the model has no such path" for k in unexpected]
        if problems:
            where = f" under {self.path!r}" if self.path else ""
            raise StateDictError(f"Cannot load into the {self._tree.backend} model{where}; nothing was written:\n  " + "\n  ".join(problems))
        _write_all((p, lambda key=key, p=p: get(key).astype(p._np_dtype(), copy=False)) for p, key in plan)
        return LoadResult(missing, unexpected)

    # -- changing the structure ------------------------------------------------------------
    def tie(self, src: int | str, dst: int | str) -> None:
        """Make ``dst`` use ``src``'s storage: every leaf of module ``dst`` becomes the leaf of
        module ``src`` at the same relative path (or, given two leaf paths, that one leaf).

        This is native sharing (torch: ``dst.weight = src.weight``): gradients
        accumulate over both uses, and a checkpoint stores the leaf once. Both
        sides must have the same leaves with the same shapes and dtypes; if not,
        the error names each difference and nothing changes. ``dst`` takes
        ``src``'s values.
        """
        node = self._current()
        a, b = node[src], node[dst]
        adapter = self._tree._adapter
        if isinstance(a, Param) and isinstance(b, Param):
            pairs = [(a, node._owner_of(str(dst)))]
        elif isinstance(a, Node) and isinstance(b, Node):
            left = {path: p for path, p in a._walk()}
            right = b._occurrences()
            problems = [f"{path}: in {src!r}, not in {dst!r}" for path in left if path not in right]
            problems += [f"{path}: in {dst!r}, not in {src!r}" for path in right if path not in left]
            for path, p in left.items():
                if path in right:
                    q = right[path][0]
                    if (p.shape, p.dtype) != (q.shape, q.dtype):
                        problems.append(f"{path}: {p.shape} {p.dtype} in {src!r}, {q.shape} {q.dtype} in {dst!r}")
            if problems:
                raise ShapeError(f"Cannot tie {dst!r} to {src!r}; nothing changed:\n  " + "\n  ".join(problems))
            pairs = [(left[path], right[path]) for path in left]
        else:
            raise ValueTypeError(f"Cannot tie {src!r} ({type(a).__name__}) to {dst!r} ({type(b).__name__}): give two modules or two leaves.")
        for p, (q, owner, name) in pairs:
            if p is not q and (p.shape, p.dtype) != (q.shape, q.dtype):
                raise ShapeError(f"Cannot tie {dst!r} to {src!r}: {q.shape} {q.dtype} against {p.shape} {p.dtype}. Nothing changed.")
        for p, (q, owner, name) in pairs:
            if p is not q:
                adapter.share(p._owner, p._name, owner, name)
        self._tree._fp = None  # the tie pattern changed: rebuild on next use

    def _owner_of(self, path: str) -> tuple[Param, Any, str]:
        """(Param, owner module, native name) of the occurrence at ``path``."""
        parent, _, name = path.rpartition(".")
        node = self[parent] if parent else self._current()
        assert isinstance(node, Node)
        return node._leaves[name], node._native, node._names.get(name, name)

    def _occurrences(self) -> dict[str, tuple[Param, Any, str]]:
        out: dict[str, tuple[Param, Any, str]] = {}

        def visit(node: Node, pre: str) -> None:
            for name, p in node._leaves.items():
                out[pre + name] = (p, node._native, node._names.get(name, name))
            for seg, child in node._children.items():
                visit(child, pre + seg + ".")

        visit(self._current(), "")
        return out


def _write_all(writes: Any) -> None:
    """Write (Param, value thunk) pairs; if any write fails, put back every value written so far."""
    done: list[tuple[Param, np.ndarray]] = []
    try:
        for p, value in writes:
            old = p.numpy().copy()
            p._write(value())
            done.append((p, old))
    except BaseException:
        for p, old in reversed(done):
            p._write(old)
        raise


Item = Union[Node, Param]


class ParamTree(Node):
    """The whole model: a :class:`Node` for the root, plus what only the root can do.

    Made by :func:`unitree.wrap`. The structure is read once and cached; each
    traversal checks a cheap fingerprint of the native model and re-reads it
    if modules, parameters or ties changed, and a lookup by path checks the
    modules along the path. Param objects survive a re-read, so identity
    (``tree[2].weight is tree[4].weight``) always means shared storage.
    """

    def __init__(self, adapter: Adapter, native: Any) -> None:
        self._adapter = adapter
        super().__init__(self, native, "")
        self._fp: Hashable = None
        self._by_ident: dict[Hashable, Param] = {}
        self._flat: list[Entry] = []  # every leaf occurrence of the whole tree, in order
        self._sync()

    @property
    def backend(self) -> str:
        """``"torch"``, ``"keras"``, ``"flax"`` or ``"gluon"``."""
        return self._adapter.name

    def _sync(self) -> bool:
        """Re-read the structure if the model changed; True if it did."""
        fp = self._adapter.fingerprint(self._native)
        if fp == self._fp and fp is not None:
            return False
        self._build()
        self._fp = fp
        return True

    def _build(self) -> None:
        adapter, backend = self._adapter, self._adapter.name
        identity = id if type(adapter).identity is Adapter.identity else adapter.identity
        old, by_ident = self._by_ident, {}
        entries: list[Entry] = []
        add = entries.append
        active: set[int] = set()

        # The hot loop of wrap(): kept flat, since it runs once per module and leaf.
        def visit(node: Node, native: Any, pre: str) -> None:
            key = id(native)
            if key in active:
                raise UnitreeError(f"The model contains itself at {pre.rstrip('.')!r}: a module tree cannot have cycles.")
            active.add(key)
            kind = adapter.kind(native)
            table = rules(backend, kind) if kind else None
            leaves = adapter.leaves(native)
            if table:
                order = list(table)
                leaves = sorted(leaves, key=lambda leaf: order.index(leaf[0]) if leaf[0] in order else len(order))
            node._leaves = node_leaves = {}
            names: dict[str, str] = {}
            for native_name, obj, is_param, persistent in leaves:
                rule = table.get(native_name) if table else None
                name = native_name
                if rule is not None and rule.canonical != native_name:
                    name = rule.canonical
                    names[name] = native_name
                ident = identity(obj)
                p = by_ident.get(ident)
                if p is None:
                    p = old.get(ident)  # keep Param identity across re-reads
                    if p is None:
                        p = Param(adapter, native, native_name, ident, rule, is_param, persistent)
                    else:
                        p.__init__(adapter, native, native_name, ident, rule, is_param, persistent)
                    by_ident[ident] = p
                path = pre + name
                p._paths.append(path)
                node_leaves[name] = p
                add((path, p))
            node._names = names or _NO_NAMES
            node._children = children = {}
            for seg, child_native in adapter.children(native):
                path = pre + seg
                child = children[seg] = Node(self, child_native, path)
                visit(child, child_native, path + ".")
            active.discard(key)

        # Pause the cyclic GC: the build allocates tens of thousands of objects, all
        # reachable, and each collection would walk the whole model graph again.
        paused = gc.isenabled()
        gc.disable()
        try:
            visit(self, self._native, "")
        finally:
            if paused:
                gc.enable()
        self._by_ident, self._flat = by_ident, entries

    def _lookup(self, path: str, base: str) -> Node | Param:
        """The node or leaf at ``base.path``, re-reading the structure once if it is stale."""
        full = f"{base}.{path}" if base and path else base or path
        for attempt in range(2):
            found = self._find(full)
            if found is not None:
                return found
            if attempt == 0 and not self._sync():
                break
        known = [p for p, _ in self._flat] + [p for p, _ in self.named_modules(remove_duplicate=False) if p]
        where = f"{self.type_name} (the {self.backend} model)"
        raise PathError.missing(full, where, known)

    def _find(self, full: str) -> Node | Param | None:
        """Follow the path; None if it is missing or the cached structure no longer matches."""
        adapter = self._adapter
        node: Node = self
        segments = full.split(".") if full else []
        for i, seg in enumerate(segments):
            child = node._children.get(seg)
            if child is not None:
                if adapter.child(node._native, seg) is not child._native:
                    return None
                node = child
                continue
            p = node._leaves.get(seg)
            if p is None or i != len(segments) - 1:
                return None
            name = node._names.get(seg, seg)
            if adapter.identity(adapter.leaf(node._native, name)) != p._ident:
                return None
            return p
        return node

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

    ``wrap(net)`` for a torch ``nn.Module``. A ``ParamTree`` is returned as is.

    >>> tree = wrap(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    >>> [(path, p.shape) for path, p in tree.named_parameters()]
    [('0.weight', (8, 4)), ('0.bias', (8,)), ('2.weight', (1, 8)), ('2.bias', (1,))]
    """
    if isinstance(model, ParamTree):
        return model
    adapter = adapter_for(model)
    return ParamTree(adapter, adapter.root(model, *state))
