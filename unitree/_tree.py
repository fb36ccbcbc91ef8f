"""The framework-neutral tree: :class:`ParamTree`, :class:`Node` and :class:`Param`."""

from __future__ import annotations

import fnmatch
import gc
import re
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _canon, _picture
from ._adapter import Adapter, Leaf, adapter_for
from ._dtypes import numpy_dtype
from ._errors import (
    NonFiniteError,
    ParamIndexError,
    PathError,
    ShapeError,
    StateDictError,
    UninitializedError,
    UnitreeError,
    UnsupportedModelError,
    ValueTypeError,
)
from .layouts import (
    CHANNELS_LAST,
    CONVS,
    NORMS,
    OPTIONAL,
    Flattened,
    FlattenedVector,
    Rule,
    has_rules,
    rules,
)


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

    Values are always in the canonical layout (PyTorch's). ``p.numpy()`` is
    read-only; write with ``p[i, j] = v`` or ``p.set(v)``, which tell the
    framework, so every alias and the native model see the change.
    """

    __slots__ = (
        "__weakref__",
        "_adapter",
        "_aliases",
        "_is_param",
        "_name",
        "_owner",
        "_path",
        "_persistent",
        "_rule",
    )

    def __init__(
        self,
        adapter: Adapter,
        owner: Any,
        name: str,
        path: str,
        rule: Rule | None,
        is_param: bool,
        persistent: bool,
    ) -> None:
        self._adapter = adapter
        self._owner = owner  # the native module holding it at its first path
        self._name = name  # its native name there
        self._rule = rule
        self._is_param = is_param
        self._persistent = persistent
        self._path = path  # the first path it appears at
        self._aliases: list[str] | None = (
            None  # the others, when tied (a list only then: fewer objects)
        )

    # -- where it is --------------------------------------------------------------
    @property
    def path(self) -> str:
        """The first path it appears at."""
        return self._path

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path it appears at, first first: ``("2.weight", "4.weight")`` when tied."""
        return (self._path, *self._aliases) if self._aliases else (self._path,)

    @property
    def native(self) -> Any:
        """The framework's own parameter object, untouched."""
        return self._adapter.native(self._leaf)

    @property
    def _leaf(self) -> Any:
        """The adapter's object for this leaf, read live (what the adapter's methods take)."""
        return self._adapter.leaf(self._owner, self._name)

    @property
    def data(self) -> Any:
        """The framework's own tensor, native layout, no copy."""
        return self._adapter.data(self._leaf)

    # -- what it is -----------------------------------------------------------------
    @property
    def _transform(self) -> Any:
        return None if self._rule is None else self._rule.transform

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Canonical shape; None while the framework has not decided it (lazy initialization)."""
        shape = self._adapter.shape(self._leaf)
        if shape is None:
            return None
        t = self._transform
        return t.shape(shape) if t else tuple(shape)

    @property
    def dtype(self) -> str:
        """The dtype as numpy spells it: ``"float32"`` on every backend."""
        return self._adapter.dtype(self._leaf)

    @property
    def device(self) -> str:
        """``"cpu"``, ``"cuda:0"``, ..."""
        return self._adapter.device(self._leaf)

    @property
    def trainable(self) -> bool:
        """False for buffers and for parameters the framework computes no gradient for."""
        return self._is_param and self._adapter.trainable(self._leaf)

    @property
    def is_buffer(self) -> bool:
        """Non-trainable state (running statistics, counters) rather than a parameter."""
        return not self._is_param

    # -- reading ----------------------------------------------------------------------
    def _native_checked(self) -> Any:
        leaf = self._leaf
        if self._adapter.shape(leaf) is None:
            raise UninitializedError(
                f"{self.path} is not initialized yet: its shape is decided by the first forward pass. "
                "Run the model once on an input, then read it."
            )
        return leaf

    def numpy(self) -> np.ndarray:
        """The value, canonical layout, read-only; a view of the framework's memory where it can be."""
        a = self._adapter.read(self._native_checked())
        t = self._transform
        return _readonly(t.to_canonical(a) if t else a)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        a = self.numpy()
        if dtype is not None:
            a = a.astype(dtype)
        return a.copy() if copy else a

    def __getitem__(self, index: Any) -> Any:
        """``p.numpy()[index]``; an index that does not fit raises ``ParamIndexError`` (an
        ``IndexError``) naming the path and the shape."""
        a = self.numpy()
        try:
            return a[index]
        except (IndexError, TypeError, ValueError) as e:
            raise ParamIndexError(
                f"Cannot read {self.path}[{_index_str(index)}]: {e} ({self.path} has shape {a.shape})."
            ) from None

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient, canonical layout, read-only; None before any backward pass.

        Like ``numpy()``, a view of the framework's memory where it keeps the gradient
        (torch, Keras on torch: the next backward adds to it in place, so an array read
        earlier changes too) and a snapshot elsewhere: ``.copy()`` it to keep a value.
        """
        g = self._adapter.grad(self._leaf)
        if g is None:
            return None
        t = self._transform
        return _readonly(t.to_canonical(g) if t else g)

    # -- writing ------------------------------------------------------------------------
    def __setitem__(self, index: Any, value: Any) -> None:
        """Write ``value`` into ``self[index]`` in place; numpy broadcasting applies."""
        self._assign(value, index)

    def set(self, value: Any, *, error_if_nonfinite: bool = False) -> None:
        """Replace the whole value with ``value`` (canonical layout, numpy or native), in place.

        An assignment, as numpy's and torch's ``copy_`` convert: a value of the same kind of
        number takes the parameter's dtype (float64 -> float32 rounds), but one that does not
        fit it (a finite number that would become infinite, an integer that would wrap) or
        of another kind (complex into float) raises ``ValueTypeError``; a shape that differs
        raises ``ShapeError``. Nothing is written then.

        ``error_if_nonfinite=True`` refuses a value holding a NaN or an infinity
        (:class:`NonFiniteError`), as torch's ``clip_grad_norm_`` does; nothing is written.
        """
        self._assign(value, None, error_if_nonfinite)

    def _assign(self, value: Any, index: Any, error_if_nonfinite: bool = False) -> None:
        current = self.numpy()
        where = self.path if index is None else f"{self.path}[{_index_str(index)}]"
        value = self._validated(value, current.dtype, where)
        if error_if_nonfinite:
            _check_finite(value, where)
        if index is None:
            if value.shape != current.shape:
                raise ShapeError(
                    f"Cannot set {where}: expected shape {current.shape}, got a value of shape {value.shape}. Nothing was written."
                )
            self._write(value)
            return
        try:
            target = current[index]
        except (IndexError, TypeError, ValueError) as e:
            raise ParamIndexError(
                f"Cannot write {where}: {e} ({self.path} has shape {current.shape}). Nothing was written."
            ) from None
        try:
            value = np.broadcast_to(value, np.shape(target))
        except ValueError:
            raise ShapeError(
                f"Cannot write a value of shape {value.shape} into {where}, of shape {np.shape(target)}. Nothing was written."
            ) from None
        if self._transform is None:
            self._adapter.write(self._leaf, value, index)
        else:
            full = current.copy()
            full[index] = value
            self._write(full)

    def _validated(self, value: Any, dtype: np.dtype, where: str) -> np.ndarray:
        try:
            a = self._adapter.asarray(value)
        except Exception as e:
            raise ValueTypeError(
                f"Cannot write {type(value).__name__} into {where}: not a numeric array ({e}). Nothing was written."
            ) from None
        if not _numeric(a):
            raise ValueTypeError(
                f"Cannot write {where} ({dtype}): expected a numeric value, got {a.dtype} {value!r:.60}. Nothing was written."
            )
        if not np.can_cast(a.dtype, dtype, casting="same_kind"):
            raise ValueTypeError(
                f"Cannot write {a.dtype} into {where}, which holds {dtype}, without changing kind of number. Nothing was written."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            out = a.astype(dtype, copy=False)
        if out is not a and _overflowed(a, out):
            raise ValueTypeError(
                f"Cannot write {a.dtype} into {where}, which holds {dtype}: some values do not "
                f"fit in {dtype} (they would become infinite or wrap around). Nothing was written."
            )
        return out

    def _write(self, value: np.ndarray) -> None:
        """Write a validated canonical value of the right shape and dtype."""
        t = self._transform
        native = _contiguous(t.to_native(value, self._adapter.shape(self._leaf))) if t else value
        self._adapter.write(self._leaf, native, None)

    def __repr__(self) -> str:
        shape = self.shape
        extra = f", tied={self.paths}" if self._aliases else ""
        kind = "Buffer" if not self._is_param else "Param"
        return f"{kind}({self.path!r}, shape={'unknown' if shape is None else shape}, dtype={self.dtype!r}, device={self.device!r}{extra})"


def _overflowed(a: np.ndarray, out: np.ndarray) -> bool:
    """Whether converting ``a`` to ``out``'s dtype lost values, not just precision: a finite
    number become infinite, or an integer wrapped around."""
    if out.dtype.kind in "iu":
        return a.dtype.kind in "iu" and not np.array_equal(out, a)
    if out.dtype.kind in "fcV" and a.dtype.kind in "iufcV":
        return int(np.count_nonzero(np.isfinite(out))) < int(np.count_nonzero(np.isfinite(a)))
    return False


def _check_finite(value: np.ndarray, where: str) -> None:
    if value.dtype.kind in "biu":
        return
    bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    if bad:
        raise NonFiniteError(
            f"Cannot write {where}: the value holds {bad} NaN or infinite numbers of {value.size}, "
            "and error_if_nonfinite=True refuses them. Nothing was written."
        )


def _contiguous(a: np.ndarray, tile: int = 256) -> np.ndarray:
    """``np.ascontiguousarray``, copying a large transposed matrix tile by tile: a tile's rows
    and columns stay in cache, which makes the copy about twice as fast."""
    if a.flags.c_contiguous or a.ndim != 2 or a.size < 1 << 16:
        return np.ascontiguousarray(a)
    out = np.empty(a.shape, a.dtype)
    rows, cols = a.shape
    for i in range(0, rows, tile):
        for j in range(0, cols, tile):
            out[i : i + tile, j : j + tile] = a[i : i + tile, j : j + tile]
    return out


def _index_str(index: Any) -> str:
    """``index`` as it was written between brackets: ``0, :``, ``...``, ``array([0, 1])``."""

    def one(i: Any) -> str:
        if isinstance(i, slice) and i == slice(None):
            return ":"
        if i is Ellipsis:
            return "..."
        text = repr(i)
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(one(i) for i in (index if isinstance(index, tuple) else (index,)))


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` and ``ut.load(strict=False)`` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


Entry = tuple[str, Param]


class Node:
    """The module at one path of the tree. Its methods act on its subtree, with paths relative to it.

    ``node[2]``, ``node["2"]`` and ``node["2.weight"]`` look up by path;
    ``node.weight`` reaches a leaf or a named child (a method of the same name
    wins: use ``node["name"]`` then). A node is a live view: it always shows
    the module that is at its path now.
    """

    __slots__ = ("__weakref__", "_tree", "path")

    def __init__(self, tree: ParamTree, path: str) -> None:
        self._tree = tree
        self.path = path  # dotted path from the root; "" for the root

    # -- what it is -------------------------------------------------------------------
    @property
    def native(self) -> Any:
        """The framework's own module."""
        return self._tree._adapter.native(self._module)

    @property
    def _module(self) -> Any:
        """The adapter's object for this module, read live (what the adapter's methods take)."""
        return self._tree._module_at(self.path)

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
        self._tree._sync()
        return _picture.draw(self._tree, self._module)

    # -- lookup -----------------------------------------------------------------------------
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

    def _segments(self) -> list[str]:
        return [seg for seg, _ in self._tree._adapter.children(self._module)]

    def __iter__(self) -> Iterator[Node]:
        """The children, in order."""
        return iter([self._tree._node(_join(self.path, seg)) for seg in self._segments()])

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
                return segments[key]
            return str(key)
        if isinstance(key, str):
            return key
        raise PathError(
            f"Expected a path (str) or a position (int), got {type(key).__name__} {key!r}."
        )

    # -- traversal ---------------------------------------------------------------------------
    def _relative(self, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The (path, item) pairs under this node, with paths relative to it."""
        if not self.path:
            return items
        own, pre = self.path, self.path + "."
        n = len(pre)
        return [
            (path[n:], item) if path != own else ("", item)
            for path, item in items
            if path == own or path.startswith(pre)
        ]

    def _entries(self) -> list[Entry]:
        """Every leaf occurrence under this node, in traversal order, aliases included."""
        self._tree._sync()
        return self._relative(self._tree._flat)

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
        tree = self._tree
        tree._sync()
        if not self.path and not prefix and remove_duplicate:  # the common case, precomputed
            return iter(tree._unique_params if is_param else tree._unique_buffers)
        pre = prefix + "." if prefix else ""
        seen: set[int] = set()
        out = []
        for path, p in self._relative(tree._flat):
            if p._is_param is not is_param:
                continue
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            out.append((pre + path, p))
        return iter(out)

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Node]]:
        """(path, Node), this node first; a module reused at several positions once, at its first."""
        tree = self._tree
        tree._sync()
        seen: set[int] = set()
        for path, native in self._relative([("", tree._native), *tree._modules]):
            if remove_duplicate:
                if id(native) in seen:
                    continue
                seen.add(id(native))
            yield _join(prefix, path), tree._node(_join(self.path, path))

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
        return [tuple(paths) for paths, _ in self._unique() if len(paths) > 1]

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
        For the few layers whose canonical leaves are computed from several native
        ones (Keras's single LSTM bias, linen's per-gate cells), the keys are the
        canonical leaves (``lstm.bias_hh_l0``), not the native paths.
        """
        return _canon.state(self)

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
        arrays: dict[str, np.ndarray] = {}
        bad: list[str] = []
        adapter = self._tree._adapter
        for key, value in state_dict.items():
            if not isinstance(key, str):
                bad.append(f"{key!r}: a key must be a path (str), not {type(key).__name__}")
                continue
            try:
                a = adapter.asarray(value)
            except Exception as e:
                bad.append(f"{key}: not a numeric array ({type(value).__name__}: {e})")
                continue
            if not _numeric(a):
                bad.append(f"{key}: not a numeric array ({type(value).__name__} {value!r:.40})")
                continue
            arrays[key] = a
        return self._load(
            {k: (a.shape, a.dtype) for k, a in arrays.items()},
            arrays.__getitem__,
            strict,
            bad,
            casting="unsafe" if cast else "safe",
            error_if_nonfinite=error_if_nonfinite,
        )

    def _load(
        self,
        header: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        get: Callable[[str], np.ndarray],
        strict: bool,
        problems: list[str] | None = None,
        casting: str = "safe",
        source: str = "the source",
        error_if_nonfinite: bool = False,
        stored: Mapping[str, str] | None = None,
    ) -> LoadResult:
        """Validate every entry against the tree, then write them all or none.

        ``casting`` is numpy's rule for a dtype change: "safe" (lossless only),
        "same_kind", or "unsafe". ``stored`` maps a key of ``header`` that a file ties to
        another (stores once) to that other key: two such keys need no comparison.
        """
        stored = stored or {}
        problems = list(problems or [])
        plan: dict[int, tuple[_canon.Layer, dict[str, Callable[[], np.ndarray]]]] = {}
        missing: list[str] = []
        used: set[str] = set()
        for slot in _canon.slots(self):
            layer, leaf = slot.layer, slot.leaf
            if not layer.persistent(leaf):
                continue
            keys = [k for k in slot.keys if k in header]
            used.update(keys)
            if not keys:
                missing.append(slot.keys[0])
                continue
            shape, dtype = header[keys[0]]
            want = layer.shapes()[leaf]
            if want is None:
                problems.append(
                    f"{keys[0]}: the model's parameter is not initialized yet; run the model once on an input first"
                )
                continue
            if tuple(shape) != want:
                problems.append(f"{keys[0]}: shape {tuple(shape)} in {source}, {want} in the model")
                continue
            np_dtype, model_dtype = np.dtype(dtype), numpy_dtype(layer.dtype(leaf))
            if not (np_dtype.kind in "biufcV" and np.can_cast(np_dtype, model_dtype, casting)):
                why = "" if casting != "safe" else " (a lossy cast: pass cast=True to allow it)"
                problems.append(
                    f"{keys[0]}: dtype {np_dtype} in {source}, {model_dtype} in the model{why}"
                )
                continue
            distinct = list(dict.fromkeys(stored.get(k, k) for k in keys))
            if len(distinct) > 1:
                first = get(distinct[0])
                for other in distinct[1:]:
                    if not np.array_equal(first, get(other)):
                        problems.append(
                            f"{keys[0]} and {other} are one tied parameter in the model but hold different values in {source}"
                        )
            plan.setdefault(id(layer), (layer, {}))[1][leaf] = lambda key=keys[0], dt=model_dtype: (
                get(key).astype(dt, copy=False)
            )
        unexpected = [k for k in header if k not in used]
        if strict:  # a leaf some frameworks lack (torch's batch-norm counter) is no error
            problems += [f"{k}: missing from {source}" for k in missing if not _optional(k)]
            problems += [
                f"{k}: unexpected, the model has no such path"
                for k in unexpected
                if not _optional(k)
            ]
        if problems:
            where = f" under {self.path!r}" if self.path else ""
            raise StateDictError(
                f"Cannot load into the {self._tree.backend} model{where}; nothing was written:\n  "
                + "\n  ".join(problems)
            )
        _write_all(
            (w for layer, values in plan.values() for w in layer.writes(values)), error_if_nonfinite
        )
        return LoadResult(missing, unexpected)

    # -- changing the structure ------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget every gradient below this node, as torch's ``zero_grad()``: ``p.grad`` is None
        until the next ``backward``. ``backward`` adds to the gradients until then."""
        adapter = self._tree._adapter
        for _, p in self.named_parameters():
            adapter.zero_grad(p._leaf)

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
        tree, adapter = self._tree, self._tree._adapter
        done: list[tuple[Any, Any, str]] = []  # (the leaf that was there, owner, name)
        try:
            for _, p, (q, owner, name) in pairs:
                if p is not q:  # kept first: a share that fails may have half happened
                    done.append((adapter.leaf(owner, name), owner, name))
                    adapter.share(p._leaf, owner, name)
        except BaseException:  # put back every leaf tied so far: all or nothing
            for old, owner, name in reversed(done):
                if adapter.leaf(owner, name) is not old:
                    adapter.share(old, owner, name)
            raise
        finally:
            adapter.shared(tree._native)
            tree._fp = None  # the tie pattern changed: rebuild on next use

    def _occurrences(self) -> dict[str, tuple[Param, Any, str]]:
        """{relative path: (Param, owner module, native name)} of every leaf occurrence."""
        tree = self._tree
        tree._sync()
        out: dict[str, tuple[Param, Any, str]] = {}
        for path, native in self._relative([("", tree._native), *tree._modules]):
            for name, native_name, p in tree._leaf_items(native):
                out[_join(path, name)] = (p, native, native_name)
        return out


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _check_name(backend: str, pre: str, segment: str, what: str) -> None:
    """Refuse a name no printed path could reach again: empty, holding the '.' that joins
    segments, or a control character (which would also reach a terminal as it is)."""
    if segment and "." not in segment and not _CONTROL.search(segment):
        return  # printable after all: a non-ASCII space, say
    raise UnsupportedModelError(
        f"The {backend} model has a {what} named {segment!r} under {pre[:-1] or 'the root'!r}: "
        "paths join their segments with '.', so a name that is empty or holds a '.' or a "
        "control character could not be looked up again. Rename it (a dict key, say), as "
        "torch's add_module requires."
    )


def _flattens(rule: Rule | None) -> bool:
    return rule is not None and type(rule.transform) in (Flattened, FlattenedVector)


def _optional(key: str) -> bool:
    return key.rpartition(".")[2] in OPTIONAL


def _join(base: str, path: str) -> str:
    return f"{base}.{path}" if base and path else base or path


class Foreign(NamedTuple):
    """Another framework's tensor for a leaf of the same layout and dtype (``ut.port``): it is
    copied device to device through DLPack, or through ``numpy()`` where that cannot be."""

    tensor: Any
    numpy: Callable[[], np.ndarray]


def _write_all(
    writes: Iterable[tuple[Param, Callable[[], Any]]], error_if_nonfinite: bool = False
) -> None:
    """Write (Param, value thunk) pairs; if any write fails, put back every value written so far.
    A thunk gives a canonical numpy value, or a :class:`Foreign` tensor. Values are checked
    for NaN and infinity as they come (a checkpoint is read one tensor at a time), so a
    refused one also puts back what was written before it."""
    journal = _Journal()
    try:
        for p, value in writes:
            journal.keep(p)
            v = value()
            if type(v) is Foreign:
                if not error_if_nonfinite and p._adapter.write_dlpack(p._leaf, v.tensor):
                    continue
                v = v.numpy()
            if error_if_nonfinite:
                _check_finite(v, p.path)
            p._write(v)
    except BaseException:
        journal.undo()
        raise
    finally:
        journal.close()


class _Journal:
    """The old values a multi-tensor write overwrote, to put back if it fails halfway.

    Copies go to memory up to a small budget, then to an unlinked temporary
    file: loading a large checkpoint holds at most one tensor beyond the model
    in memory. Immutable arrays (jax) are kept as they are, with no copy.
    """

    BUDGET = 64 << 20

    def __init__(self) -> None:
        self.kept: list[tuple[Param, Any, tuple[int, tuple[int, ...], np.dtype] | None]] = []
        self.size = 0
        self.file: Any = None

    def keep(self, p: Param) -> None:
        leaf = p._leaf
        backup = p._adapter.backup(leaf)
        if backup is not None:
            self.kept.append((p, backup, None))
            return
        a = p._adapter.read(leaf)
        if self.size + a.nbytes <= self.BUDGET:
            self.size += a.nbytes
            self.kept.append((p, a.copy(), None))
            return
        if self.file is None:
            import tempfile

            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (open until close())
        offset = self.file.tell()
        self.file.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
        self.kept.append((p, None, (offset, a.shape, a.dtype)))

    def undo(self) -> None:
        for p, backup, spilled in reversed(self.kept):
            if spilled is not None:
                offset, shape, dtype = spilled
                backup = np.empty(shape, dtype)
                self.file.seek(offset)
                self.file.readinto(backup.reshape(-1).view(np.uint8).data)
            p._adapter.restore(p._leaf, backup)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


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
        super().__init__(self, "")
        self._adapter = adapter
        self._native = native
        self._fp: Any = None  # None: not read yet, or known to be stale
        self._by_ident: dict[Hashable, Param] = {}
        self._flat: list[Entry] = []  # every leaf occurrence, in traversal order
        self._modules: list[
            tuple[str, Any]
        ] = []  # every module occurrence below the root, in order
        self._unique_params: list[Entry] = []  # named_parameters() of the root
        self._unique_buffers: list[Entry] = []
        self._nodes: dict[str, Node] = {}
        self._mixed: set[Param] = set()  # leaves no one canonical layout serves (see _read)
        self._lock = threading.RLock()  # one re-read at a time: it resets the Params' paths

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

    def _sync(self) -> bool:
        """Re-read the structure if the model changed; True if it did."""
        with self._lock:
            if type(self._fp) is _Seen:
                self._fp = self._fp.ids()
            if self._fp is not None and self._adapter.fingerprint(self._native) == self._fp:
                return False
            self._build()
            return True

    def _build(self) -> None:
        """Read the whole structure: one pass over every module and leaf."""
        with self._lock:
            self._read()

    def _read(self) -> None:
        adapter, backend = self._adapter, self._adapter.name
        same = type(adapter).identity is Adapter.identity  # identity is id(): no call
        with_rules = has_rules(backend)
        old, by_ident = self._by_ident, {}
        flat: list[Entry] = []
        modules: list[tuple[str, Any]] = []
        params: list[Entry] = []
        buffers: list[Entry] = []
        seen: list[tuple[Any, Any]] = []  # (module, its leaves): the fingerprint, made when needed
        renewed: dict[Param, tuple[Any, ...]] = {}  # Params of an earlier read, re-placed
        mixed: set[Param] = set()  # tied, and fed by a channels-last flatten at some uses only
        aliases: dict[Param, list[str]] = {}  # the paths after the first of each tied leaf

        plans: dict[Any, list[tuple[int, str, Rule | None]]] = {}
        channels_last = backend in CHANNELS_LAST
        channels = 0  # of the last conv output, while a flatten of it may feed a dense layer

        def flattened(
            native: Any,
            kind: str | None,
            leaves: list[Leaf],
            plan: list[tuple[int, str, Rule | None]],
        ) -> list[tuple[int, str, Rule | None]]:
            """The plan, with the dense kernel fed by a flattened conv output permuted, and the
            vectors of a norm between the flatten and the dense layer likewise."""
            nonlocal channels
            if kind in CONVS:
                i, _, rule = plan[0]  # the kernel
                shape = adapter.shape(leaves[i][1])
                if (
                    shape
                    and rule
                    and rule.transform
                    and adapter.settings(native).get("data_format") != "channels_first"
                ):
                    shape = rule.transform.shape(shape)  # canonical: (out, in, *k) or (in, out, *k)
                    channels = shape[1] if kind == "conv_transpose" else shape[0]
                else:  # a channels-first conv (Keras's data_format) flattens as PyTorch does
                    channels = 0
            elif kind == "dense" and channels:
                i, name, _ = plan[0]
                shape = adapter.shape(leaves[i][1])  # (in, out)
                if shape and shape[0] > channels and shape[0] % channels == 0:
                    plan = [(i, name, Rule(name, Flattened(channels))), *plan[1:]]
                channels = 0
            elif kind in NORMS and channels:  # over the channels, or over the flattened features
                plan = [
                    (i, name, Rule(name, FlattenedVector(channels)))
                    if (shape := adapter.shape(leaves[i][1]))
                    and len(shape) == 1
                    and shape[0] > channels
                    and shape[0] % channels == 0
                    else (i, name, rule)
                    for i, name, rule in plan
                ]
            elif kind not in NORMS:
                channels = 0
            return plan

        # The hot loop of the first traversal: kept flat, it runs once per module and leaf.
        def visit(native: Any, pre: str) -> None:
            leaves = adapter.leaves(native)
            seen.append((native, leaves))
            if leaves:
                if with_rules:
                    # the same kind with the same leaf names maps the same way: work it out once
                    key = (adapter.kind(native), *[leaf[0] for leaf in leaves])
                    plan = plans.get(key)
                    if plan is None:
                        plan = plans[key] = _plan(leaves, rules(backend, key[0], key[1:]))
                    if channels_last:
                        plan = flattened(native, key[0], leaves, plan)
                else:  # native names and order: the plan depends on the count alone
                    plan = plans.get(len(leaves))
                    if plan is None:
                        plan = plans[len(leaves)] = [(i, "", None) for i in range(len(leaves))]
                for i, name, rule in plan:
                    native_name, obj, is_param, persistent = leaves[i]
                    leaf_name = name or native_name
                    if not leaf_name or "." in leaf_name or not leaf_name.isprintable():
                        _check_name(backend, pre, leaf_name, "leaf")
                    path = pre + leaf_name
                    ident = id(obj) if same else adapter.identity(obj)
                    p = by_ident.get(ident)
                    if p is None:
                        p = old.get(ident) if old else None  # keep Param identity across re-reads
                        args = (adapter, native, native_name, path, rule, is_param, persistent)
                        if p is None:
                            p = Param(*args)
                        else:  # renewed once the read is done: another thread may be using it
                            renewed[p] = args
                        by_ident[ident] = p
                        entry = (path, p)
                        (params if is_param else buffers).append(entry)
                    else:
                        entry = (path, p)
                        aliases.setdefault(p, []).append(path)
                        first = renewed[p][4] if p in renewed else p._rule
                        if _flattens(first) != _flattens(rule):
                            mixed.add(p)
                    flat.append(entry)
            for seg, child in adapter.children(native):
                if not seg or "." in seg or not seg.isprintable():
                    _check_name(backend, pre, seg, "module")
                path = pre + seg
                modules.append((path, child))
                visit(child, path + ".")

        try:
            with _gc_pause:
                visit(self._native, "")
        except RecursionError:
            raise UnitreeError(
                f"The {backend} model is nested too deeply to read, or contains itself: a module tree cannot have cycles."
            ) from None
        for p, args in renewed.items():
            p.__init__(*args)
        for p, paths in aliases.items():
            p._aliases = paths
        self._by_ident, self._flat, self._modules = by_ident, flat, modules
        self._unique_params, self._unique_buffers = params, buffers
        self._nodes = {}
        self._mixed = mixed
        self._fp = _Seen(seen)

    def _leaf_items(self, native: Any) -> list[tuple[str, str, Param]]:
        """(canonical name, native name, Param) of one module's own leaves, read live."""
        adapter = self._adapter
        leaves = adapter.leaves(native)
        out = []
        table = rules(adapter.name, adapter.kind(native), [leaf[0] for leaf in leaves])
        for i, name, _ in _plan(leaves, table):
            native_name, obj = leaves[i][:2]
            p = self._by_ident.get(adapter.identity(obj))
            if p is None:  # a leaf we have not seen: the model changed since the last read
                self._build()
                p = self._by_ident.get(adapter.identity(obj))
                if p is None:
                    raise PathError(
                        f"A {adapter.type_name(native)} module is no longer part of the model."
                    )
            out.append((name, native_name, p))
        return out

    def _node(self, path: str) -> Node:
        """The one Node object for ``path``, so that ``tree[2] is tree[2]``."""
        if not path:
            return self
        node = self._nodes.get(path)
        if node is None:
            node = self._nodes[path] = Node(self, path)
        return node

    def _module_at(self, path: str) -> Any:
        found = self._find(path)
        if found is None:
            raise PathError(f"There is no module at {path!r} any more in the {self.backend} model.")
        return found[0]

    def _find(self, path: str) -> tuple[Any, Param | None] | None:
        """Follow ``path`` through the live model: (module, None), (owner, Param), or None."""
        if self._fp is None:
            with self._lock:  # threads that arrive together: one reads, the others wait for it
                if self._fp is None:
                    self._read()
        adapter = self._adapter
        native = self._native
        segments = path.split(".") if path else []
        for i, seg in enumerate(segments):
            child = adapter.child(native, seg)
            if child is not None:
                native = child
                continue
            if i == len(segments) - 1:
                for name, _, p in self._leaf_items(native):
                    if name == seg:
                        return native, p
            return None
        return native, None

    def _lookup(self, path: str, base: str) -> Node | Param:
        full = _join(base, path)
        found = self._find(full)
        if found is None:
            self._sync()
            known = [p for p, _ in self._flat] + [p for p, _ in self._modules]
            raise PathError.missing(full, f"{self.type_name} (the {self.backend} model)", known)
        return self._node(self._canonical(full)) if found[1] is None else found[1]

    def _canonical(self, path: str) -> str:
        """``path`` with each alias (a Keras layer's own name) replaced by its child's segment."""
        adapter = self._adapter
        if not path or type(adapter).segment is Adapter.segment:
            return path
        native, out = self._native, []
        for seg in path.split("."):
            out.append(adapter.segment(native, seg))
            native = adapter.child(native, seg)
        return ".".join(out)

    def backward(self, loss_fn: Callable[[Any], Any], *inputs: Any) -> float:
        """Run the model on ``inputs``, ``loss_fn`` on its native output, and differentiate natively.

        ``loss_fn`` takes the model's native output and returns a native
        scalar. numpy inputs are moved to the model's device and floating
        dtype; native tensors are passed as they are. Gradients land in
        ``p.grad`` (canonical layout) and accumulate over calls, as in PyTorch;
        a tied parameter gets the sum over its uses. Returns the loss.
        """
        return float(self._adapter.backward(self._native, loss_fn, inputs))


class _Seen:
    """What a read saw, from which the fingerprint is made on the next check, not on the read:
    the first traversal does not pay for it. The leaves hold the very objects the read saw."""

    __slots__ = ("seen",)

    def __init__(self, seen: list[tuple[Any, Any]]) -> None:
        self.seen = seen

    def ids(self) -> list[int]:
        """What :meth:`Adapter.fingerprint` returns for the model as it was read."""
        fp: list[int] = []
        for native, leaves in self.seen:
            fp.append(id(native))
            fp.extend([id(leaf[1]) for leaf in leaves])
        return fp


def _plan(
    leaves: list[Leaf], table: Mapping[str, Rule] | None
) -> list[tuple[int, str, Rule | None]]:
    """(index in ``leaves``, canonical name, rule) in canonical leaf order."""
    if not table:
        return [(i, leaf[0], None) for i, leaf in enumerate(leaves)]
    order = list(table)
    ranked = sorted(
        range(len(leaves)),
        key=lambda i: order.index(leaves[i][0]) if leaves[i][0] in order else len(order),
    )
    out: list[tuple[int, str, Rule | None]] = []
    for i in ranked:
        rule = table.get(leaves[i][0])
        out.append((i, rule.canonical if rule else leaves[i][0], rule))
    return out


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
    with _gc_pause:  # an adapter may read the whole structure here (flax linen)
        root = adapter.root(model, *state)
    return ParamTree(adapter, root)


def as_node(obj: Any) -> Node:
    """``obj`` if it is a tree or a node of one, else ``wrap(obj)``: what every public function
    that takes a tree does with a native model."""
    return obj if isinstance(obj, Node) else wrap(obj)


class _GCPause:
    """Pauses the cyclic GC while a model's structure is read, across threads.

    A read allocates tens of thousands of small objects, all reachable; each
    collection it triggers would walk the whole model graph (and the
    framework's heap) again, for nothing: it often doubled the time of a wrap.
    The switch is process-wide, so readers in several threads share one pause:
    the first one in turns the collector off, the last one out turns it back on,
    and only if it was on when the first one came in (a user's own
    ``gc.disable()`` stays in force).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._readers == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._readers += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._resume:
                self._resume = False
                gc.enable()


_gc_pause = _GCPause()
