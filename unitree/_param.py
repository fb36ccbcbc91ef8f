"""One parameter or buffer of a tree: :class:`Param`, and the value checks every write makes.

A Param is addressed by its owner module and native name and re-reads its leaf
through the adapter on every access (frameworks replace parameters). Its values
are canonical: the leaf's rule (``layouts.Rule``) turns them to and from the
native layout. The functions at the end are the interface the rest of the core
uses to reach a Param's leaf; nothing outside this module reads its slots.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._adapter import Adapter
from ._errors import (
    NonFiniteError,
    ParamIndexError,
    ShapeError,
    UninitializedError,
    ValueTypeError,
)
from .layouts import Rule


def _readonly(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def numeric(a: np.ndarray) -> bool:
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
            check_finite(value, where)
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
        if not numeric(a):
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
        self._adapter.write(self._leaf, _native(self, self._transform, value), None)

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


def check_finite(value: np.ndarray, where: str) -> None:
    if value.dtype.kind in "biu":
        return
    bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    if bad:
        raise NonFiniteError(
            f"Cannot write {where}: the value holds {bad} NaN or infinite numbers of {value.size}, "
            "and error_if_nonfinite=True refuses them. Nothing was written."
        )


def contiguous(a: np.ndarray, out: np.ndarray | None = None, tile: int = 128) -> np.ndarray:
    """``np.ascontiguousarray(a)``, or ``a`` copied into ``out`` (C-contiguous, ``a``'s shape
    and dtype), which is returned. A large strided matrix (a transposed view) is copied tile by
    tile, a tile's rows and columns staying in cache, on every core (numpy releases the GIL
    while it copies): 5-8x numpy's own strided copy of a 4096 x 4096 float32 matrix on 2 cores
    (benchmarks/)."""
    if a.ndim != 2 or a.size < 1 << 16 or a.flags.c_contiguous:
        if out is None:
            return np.ascontiguousarray(a)
        out[...] = a
        return out
    if out is None:
        out = np.empty(a.shape, a.dtype)
    rows, cols = a.shape

    def band(start: int, stop: int) -> None:
        for i in range(start, stop, tile):
            for j in range(0, cols, tile):
                out[i : i + tile, j : j + tile] = a[i : i + tile, j : j + tile]

    step = -(-rows // (WORKERS * tile)) * tile  # one band of whole tiles per worker
    bands = [(i, min(i + step, rows)) for i in range(0, rows, step)]
    if len(bands) == 1:
        band(*bands[0])
    else:
        list(pool().map(lambda b: band(*b), bands))
    return out


def fresh(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` in a new C-contiguous buffer aligned to 64 bytes: jax takes such a
    buffer as its array's own without copying it again (``jax.device_put`` on the host), where
    it copies one of numpy's (16-byte aligned when large). A strided ``a`` is copied by
    :func:`contiguous`."""
    buffer = np.empty(a.nbytes + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    out = buffer[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    return contiguous(a, out)


WORKERS = max(1, min(os.cpu_count() or 1, 8))
_POOL: list[Any] = []


def pool() -> Any:
    """The threads of :func:`contiguous` and of a checkpoint's reads, started on first use
    (``import unitree`` starts none and imports no ``concurrent.futures``)."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(WORKERS, thread_name_prefix="unitree-copy"))
        if hasattr(os, "register_at_fork"):  # a forked child has the pool but not its threads
            os.register_at_fork(after_in_child=_POOL.clear)
    return _POOL[0]


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


# -- the core's interface to a Param's leaf ---------------------------------------------------
def adapter_of(p: Param) -> Adapter:
    """The adapter of ``p``'s framework."""
    return p._adapter


def leaf_of(p: Param) -> Any:
    """The adapter's object for ``p``'s leaf, read live (what the adapter's methods take)."""
    return p._leaf


def rule_of(p: Param) -> Rule | None:
    """The layout rule ``p``'s canonical value comes from, or None (native is canonical)."""
    return p._rule


def transform_of(p: Param) -> Any:
    """The transform between ``p``'s native and canonical layouts, or None (the same)."""
    return p._transform


def is_persistent(p: Param) -> bool:
    """Whether ``p`` is saved in ``state_dict`` and checkpoints (torch: not a non-persistent buffer)."""
    return p._persistent


def write_canonical(p: Param, value: np.ndarray) -> None:
    """Write a validated canonical value of ``p``'s shape and dtype, whole."""
    p._write(value)


def read_with_rule(p: Param, rule: Rule | None) -> np.ndarray:
    """``p``'s value as canonical under ``rule`` instead of its own (one of the candidates of
    a ``layouts.Unknown``: ``View.unknown(p).candidates[name]``), read-only. Its shape is the
    same as under ``p``'s own rule (the candidates differ in order, never in shape)."""
    a = p._adapter.read(p._native_checked())
    t = None if rule is None else rule.transform
    return _readonly(t.to_canonical(a) if t else a)


def write_with_rule(p: Param, rule: Rule | None, value: np.ndarray) -> None:
    """Write a validated canonical ``value`` of ``p``'s shape and dtype, whole, as canonical
    under ``rule`` instead of ``p``'s own (a candidate of a ``layouts.Unknown``): what a port
    writes once it knows which candidate the model computes with. ``p``'s rule stays."""
    p._adapter.write(p._leaf, _native(p, None if rule is None else rule.transform, value), None)


def _native(p: Param, transform: Any, value: np.ndarray) -> np.ndarray:
    """A canonical value in ``p``'s native layout through ``transform``: a view where the
    transform allows, made contiguous here unless the adapter copies strided values itself
    (one copy per tensor, not two)."""
    if not transform:
        return value
    native = transform.to_native(value, p._adapter.shape(p._leaf))
    return native if p._adapter.strided_writes else contiguous(native)


def set_rule(p: Param, rule: Rule | None) -> None:
    """Give ``p``, made by the read in progress, the rule a later layer decided (a dense layer
    whose output a reshape turns into a feature map: ``_read``)."""
    p._rule = rule


def placed(p: Param, *args: Any) -> None:
    """Re-place ``p`` after a re-read of the structure: the same Param object, found again,
    with :class:`Param`'s arguments."""
    p.__init__(*args)


def set_aliases(p: Param, paths: list[str] | None) -> None:
    """The paths after ``p``'s first, where it is tied; None when it is not."""
    p._aliases = paths
