"""Writing many tensors as one: validate everything, then write all or nothing.

Every multi-tensor write (``load_state_dict``, ``ut.load``, ``ut.port``) ends in
:func:`write_all`, which keeps what it needs to put every value back if the
framework fails halfway (:class:`Journal`); :func:`load` is the validation that
``load_state_dict`` and ``ut.load`` share.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, NamedTuple

import numpy as np

from ._adapter import Adapter
from ._canon import Layer, slots
from ._dtypes import numpy_dtype
from ._errors import StateDictError
from ._files import Stored
from ._param import (
    Param,
    adapter_of,
    check_finite,
    leaf_of,
    numeric,
    transform_of,
    write_canonical,
)
from ._read import View
from .layouts import OPTIONAL, Permute, weight_norm, weight_norm_axes, weight_norm_keys


class LoadResult(NamedTuple):
    """What ``load_state_dict(strict=False)`` and ``ut.load(strict=False)`` skipped."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load(
    view: View,
    header: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    get: Callable[[str], np.ndarray],
    strict: bool,
    problems: list[str] | None = None,
    casting: str = "safe",
    source: str = "the source",
    error_if_nonfinite: bool = False,
    stored: Mapping[str, str] | None = None,
) -> LoadResult:
    """Validate every entry of ``header`` ({key: (shape, dtype)}; ``get(key)`` reads its
    canonical value) against the node of ``view``, then write them all or none: what
    ``load_state_dict`` and ``ut.load`` do once they hold a header.

    ``casting`` is numpy's rule for a dtype change: "safe" (lossless only),
    "same_kind", or "unsafe". ``stored`` maps a key of ``header`` that a file ties to
    another (stores once) to that other key: two such keys need no comparison. A weight
    ``header`` lacks is also read as PyTorch's weight norm stores it, its magnitude and
    direction ("0.weight_g" and "0.weight_v", or "0.parametrizations.weight.original0" and
    "original1"), as torch's own ``load_state_dict`` takes them for a weight-normed layer:
    the weight is computed from them (``layouts.weight_norm``).
    """
    stored = stored or {}
    problems = list(problems or [])
    plan: dict[int, tuple[Layer, dict[str, Callable[[], np.ndarray]]]] = {}
    missing: list[str] = []
    used: set[str] = set()
    made: dict[str, tuple[str, str]] = {}  # keys computed from a weight norm's g and v keys
    get = _computing(get, made)
    for slot in slots(view):
        layer, leaf = slot.layer, slot.leaf
        if not layer.persistent(leaf):
            continue
        keys = [k for k in slot.keys if k in header]
        if not keys:  # a weight as torch's weight norm stores it, which its load_state_dict takes
            factors = _weight_norm_factors(slot.keys[0], header)
            if factors is not None:
                made[slot.keys[0]] = factors
                header = {**header, slot.keys[0]: header[factors[1]]}  # v's shape and dtype
                keys = [slot.keys[0]]
                used.update(factors)
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
        plan.setdefault(id(layer), (layer, {}))[1][leaf] = (
            lambda key=keys[0], dt=model_dtype, whole=layer.codec is None: _as(get(key), dt, whole)
        )
    unexpected = [k for k in header if k not in used]
    if strict:  # a leaf some frameworks lack (torch's batch-norm counter) is no error
        problems += [f"{k}: missing from {source}" for k in missing if not _optional(k)]
        problems += [
            f"{k}: unexpected, the model has no such path" for k in unexpected if not _optional(k)
        ]
    if problems:
        where = f" under {view.name!r}" if view.base else ""
        raise StateDictError(
            f"Cannot load into the {view.adapter.name} model{where}; nothing was written:\n  "
            + "\n  ".join(problems)
        )
    write_all(
        (w for layer, values in plan.values() for w in layer.writes(values)), error_if_nonfinite
    )
    return LoadResult(missing, unexpected)


class Foreign(NamedTuple):
    """Another framework's tensor for a leaf of the same layout and dtype (``ut.port``): it is
    copied device to device through DLPack, or through ``numpy()`` where that cannot be."""

    tensor: Any
    numpy: Callable[[], np.ndarray]


def as_arrays(
    adapter: Adapter, state_dict: Mapping[Any, Any]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The numeric arrays of a user's state dict (numpy, scalars or the framework's tensors,
    through ``adapter.asarray``), and what is wrong with the entries that are not ones."""
    arrays: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str):
            bad.append(f"{key!r}: a key must be a path (str), not {type(key).__name__}")
            continue
        try:
            a = adapter.asarray(value)
        except Exception as e:
            bad.append(f"{key}: not a numeric array ({type(value).__name__}: {e})")
            continue
        if not numeric(a):
            bad.append(f"{key}: not a numeric array ({type(value).__name__} {value!r:.40})")
            continue
        arrays[key] = a
    return arrays, bad


def share_all(adapter: Adapter, root: Any, shares: Iterable[tuple[Param, Any, str]]) -> None:
    """Make each ``owner.name`` the very leaf of its Param (``tree.tie``), through
    ``adapter.share``; if one fails, share back every leaf that was there before: all or
    nothing. ``adapter.shared(root)`` is told once, whatever happened."""
    done: list[tuple[Any, Any, str]] = []  # (the leaf that was there, owner, name)
    try:
        for p, owner, name in shares:
            done.append((adapter.leaf(owner, name), owner, name))  # first: a share may half happen
            adapter.share(leaf_of(p), owner, name)
    except BaseException:
        for old, owner, name in reversed(done):
            if adapter.leaf(owner, name) is not old:
                adapter.share(old, owner, name)
        raise
    finally:
        adapter.shared(root)


def write_all(
    writes: Iterable[tuple[Param, Callable[[], Any]]],
    error_if_nonfinite: bool = False,
    journal: Journal | None = None,
) -> None:
    """Write (Param, value thunk) pairs, all or nothing. A thunk gives a canonical numpy value,
    or a :class:`Foreign` tensor. Values are checked for NaN and infinity as they come (a
    checkpoint is read one tensor at a time), so a refused one puts back what was written
    before it. A caller that may still undo the whole write after it succeeded (a port's check)
    passes its own ``journal``: it is then the caller's to undo and close, and a Param it kept
    already is not kept again.

    Every value has been validated against its leaf before the first write. So unless one of
    the writes can still fail (``Adapter.write_can_fail``), or a value can still be refused
    (``error_if_nonfinite``), or the caller's ``journal`` keeps every write, nothing is journaled:
    one copy per tensor, not two. An interrupt (Ctrl-C) then waits until the last write, so
    that it never leaves a model half written."""
    own = journal is None
    journal = Journal(every=error_if_nonfinite) if journal is None else journal
    writes = list(writes)  # (Param, thunk): the values are read as they are written
    if not journal.every and any(adapter_of(p).write_can_fail(leaf_of(p)) for p, _ in writes):
        journal.every = True  # one write that can fail: every one before it must be undoable
    caught: list[int] = []  # SIGINTs held back
    try:
        with nullcontext() if journal.every else _interrupts_deferred(caught):
            for p, value in writes:
                journal.keep(p)
                _write_one(p, value(), error_if_nonfinite)
                journal.written += 1
    except BaseException:
        if own:
            journal.undo()
        raise
    finally:
        if own:
            journal.close()
    if caught:  # every value is written: now the interrupt
        signal.raise_signal(signal.SIGINT)


@contextmanager
def _interrupts_deferred(caught: list[int]) -> Iterator[None]:
    """SIGINT held back while the block runs, into ``caught``, for the caller to deliver once
    it is done: in the main thread only, where Python runs signal handlers, and only where
    Python's handler is there to put back."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_one(p: Param, v: Any, error_if_nonfinite: bool) -> None:
    if type(v) is Stored:  # a file's tensor: read into the leaf's own memory where it can be
        if not error_if_nonfinite and _read_into(p, v):
            return
        v = np.asarray(v)
    if type(v) is Foreign:
        if not error_if_nonfinite and adapter_of(p).write_dlpack(leaf_of(p), v.tensor):
            return
        v = v.numpy()
    if error_if_nonfinite:
        check_finite(v, p.path)
    write_canonical(p, v)


def _read_into(p: Param, stored: Stored) -> bool:
    """Read a file's tensor straight into ``p``'s memory, where the adapter gives a view of it
    (``Adapter.writable_view``) that holds the canonical layout in the file's dtype."""
    transform = transform_of(p)
    if stored.turned:  # the file holds it transposed: a leaf that holds it so too takes it
        if not (isinstance(transform, Permute) and transform.axes(2) == (1, 0)):
            return False
    elif transform is not None:
        return False
    out = adapter_of(p).writable_view(leaf_of(p))
    shape = stored.shape[::-1] if stored.turned else stored.shape
    if out is None or out.shape != shape or out.dtype != stored.dtype:
        return False
    stored.read_into(out)
    return True


class Journal:
    """What puts back the values a multi-tensor write overwrote, if it fails halfway.

    ``every=True`` keeps what undoes every write: a port's check may undo a write that
    succeeded, a value checked for NaN may be refused after others were written, and a write
    may fail (``Adapter.write_can_fail``). ``every=False`` keeps nothing, for a batch of
    validated values none of whose writes can fail (:func:`write_all` decides): a load into
    torch, Keras or Flax on the host costs one copy per tensor, not two.

    What is kept is the adapter's own backup where it has one (jax's immutable arrays are
    kept as they are, with no copy), else a copy: in memory up to a small budget, then in an
    unlinked temporary file, so that a load holds at most one tensor beyond the model.
    """

    BUDGET = 64 << 20

    def __init__(self, every: bool = True) -> None:
        self.every = every
        self.kept: list[tuple[Param, Any, tuple[int, tuple[int, ...], np.dtype] | None]] = []
        self.written = 0  # writes done, counted by write_all
        self.size = 0
        self.file: Any = None
        self.seen: set[Param] = set()

    def keep(self, p: Param) -> None:
        if p in self.seen:  # the first value is the one to put back
            return
        self.seen.add(p)
        leaf, adapter = leaf_of(p), adapter_of(p)
        adapter.batch_begin(leaf)
        if not self.every:
            return
        backup = adapter.backup(leaf)
        if backup is not None:
            self.kept.append((p, backup, None))
            return
        a = adapter.read(leaf)
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
        """Put back what was kept, last first; called while the error that stopped the write
        is handled, which gets a note where some writes could not be put back."""
        lost = []
        for p, backup, spilled in reversed(self.kept):
            if spilled is not None:
                offset, shape, dtype = spilled
                backup = np.empty(shape, dtype)
                self.file.seek(offset)
                self.file.readinto(backup.reshape(-1).view(np.uint8).data)
            try:
                adapter_of(p).restore(leaf_of(p), backup)
            except Exception:  # the leaf whose write failed may refuse this one too
                if not _holds(p, backup):
                    lost.append(p.path)
        error = sys.exc_info()[1]
        if lost and error is not None and hasattr(error, "add_note"):
            error.add_note(f"unitree: these could not be put back: {', '.join(lost)}")
        # every=False: what was begun had nothing kept, and cannot be put back
        if not self.every and self.seen and error is not None and hasattr(error, "add_note"):
            error.add_note(
                f"unitree: the model is partly written: {self.written} tensors were written before "
                "this failure, and the one being written may be partly written. Their writes cannot "
                "fail once validated, so no copy of their old values was kept (what failed is the "
                "machine or the source) and they cannot be put back: load or port again."
            )

    def close(self) -> None:
        try:
            for p in self.seen:
                adapter_of(p).batch_end(leaf_of(p))
        finally:
            if self.file is not None:
                self.file.close()


def _holds(p: Param, backup: Any) -> bool:
    """Whether ``p``'s leaf holds ``backup`` (a native array) still: one whose write failed
    before it changed anything needs no restore."""
    try:
        return isinstance(backup, np.ndarray) and np.array_equal(
            adapter_of(p).read(leaf_of(p)), backup
        )
    except Exception:
        return False


def _weight_norm_factors(
    key: str, header: Mapping[str, tuple[tuple[int, ...], np.dtype]]
) -> tuple[str, str] | None:
    """The keys of a magnitude g and a direction v under which ``header`` holds the canonical
    ``key`` as PyTorch's weight norm stores it (``layouts.weight_norm_keys``: "0.weight_g"
    and "0.weight_v", or "0.parametrizations.weight.original0" and "...original1"), with
    shapes a weight norm gives; None where it holds no such pair."""
    for g, v in weight_norm_keys(key):
        if (
            g in header
            and v in header
            and weight_norm_axes(tuple(header[g][0]), tuple(header[v][0])) is not None
        ):
            return g, v
    return None


def _as(value: Any, dtype: np.dtype, whole: bool) -> Any:
    """A value of ``get`` as the model's ``dtype``: a file's tensor (``Stored``) of that dtype
    is left unread for :func:`_write_one` to read where it goes, when it is written whole (not
    through a codec, which computes with it), else read here."""
    if whole and type(value) is Stored and value.dtype == dtype:
        return value
    return np.asarray(value).astype(dtype, copy=False)


def _computing(
    get: Callable[[str], np.ndarray], made: Mapping[str, tuple[str, str]]
) -> Callable[[str], np.ndarray]:
    """``get``, which also reads the keys of ``made`` (filled as the caller goes), each
    computed from its weight norm's g and v (``layouts.weight_norm``)."""

    def read(key: str) -> np.ndarray:
        factors = made.get(key)
        if factors is None:
            return get(key)
        return weight_norm(np.asarray(get(factors[0])), np.asarray(get(factors[1])))

    return read


def _optional(key: str) -> bool:
    return key.rpartition(".")[2] in OPTIONAL
