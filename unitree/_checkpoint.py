"""Canonical checkpoints: safetensors files with canonical names and layouts.

One file that every backend reads: paths and layouts are the canonical ones
(docs/architecture.md), a tied parameter is stored once under its first path, and the
metadata records the tie groups, the source backend and the format version.
Nothing is ever unpickled: files are read through ``_files``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Callable

import numpy as np

from ._canon import layers, slot_value, slots
from ._dtypes import numpy_dtype
from ._errors import CheckpointError, UninitializedError, ValueTypeError
from ._files import (
    CODES,
    FORMAT,
    FORMAT_VERSION,
    VERSION_KEY,
    PathLike,
    bad_name,
    file_path,
    open_checkpoint,
)
from ._paths import join
from ._tree import view_of
from ._write import LoadResult
from ._write import load as load_into

__all__ = ["atomic_write", "load", "save"]


def save(tree: Any, path: PathLike, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``tree``'s parameters and persistent buffers to a safetensors file, atomically.

    ``tree`` is a tree, a node of one (its subtree, paths relative to it), or a native model
    (wrapped first).

    Canonical names and layouts; a tied parameter is stored once, under its
    first path. The header is written first, then the tensors one at a time in
    traversal order, so saving holds at most one tensor beyond the model (one
    layer, for a layer whose canonical leaves are computed from several). The
    file is written under a temporary name in the same folder, flushed to
    disk, then renamed over ``path``: a reader sees the old file or the new
    one, never a torn one. ``metadata`` adds string entries to the header. The file is
    what ``open(path, "wb")`` would make: see :func:`atomic_write`.

    Raises:
        UninitializedError: a parameter whose shape is not known yet.
        ValueTypeError: a dtype safetensors has no code for (complex128), or a ``path``
            that is no path.
        CheckpointError: a path a checkpoint cannot hold (a slash, a control character).
        UnsupportedModelError: ``tree`` is no tree and no model an adapter claims.
        OSError: as ``open`` raises it (a folder that does not exist, a directory, no
            permission), naming ``path``; the file there, if any, is unchanged.
    """
    path = file_path(path)
    view = view_of(tree)
    listed = layers(view)
    entries = [s for s in slots(view, listed) if s.layer.persistent(s.leaf)]
    for key in (key for slot in entries for key in slot.keys):
        why = bad_name(key)  # what Checkpoint refuses to read, save refuses to write
        if why:
            raise CheckpointError(f"Cannot save the path {key!r} to {path}: {why}.")
    header: dict[str, Any] = {}
    offset = 0
    turned = {id(slot) for slot in entries if slot.leaf in stored_transposed(slot.layer.kind)}
    for slot in entries:
        shape = slot.layer.shapes()[slot.leaf]
        if id(slot) in turned and shape is not None:
            shape = shape[::-1]
        if shape is None:
            raise UninitializedError(
                f"Cannot save {slot.keys[0]}: it is not initialized yet. Run the model once on an input first."
            )
        dtype = numpy_dtype(slot.layer.dtype(slot.leaf))
        if dtype.name not in CODES:
            raise ValueTypeError(
                f"Cannot save {slot.keys[0]} to {path}: safetensors has no {dtype.name} "
                f"type (it holds {', '.join(sorted(CODES))}). Cast the parameter to one of "
                "those first; nothing was written."
            )
        size = math.prod(shape) * dtype.itemsize
        header[slot.keys[0]] = {
            "dtype": CODES[dtype.name],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {
        **(metadata or {}),
        "format": FORMAT,
        VERSION_KEY: FORMAT_VERSION,
        "transposed": json.dumps([slot.keys[0] for slot in entries if id(slot) in turned]),
        "backend": view.adapter.name,
        "ties": json.dumps([s.keys for s in entries if len(s.keys) > 1]),
        # the model's order, aliases included (readers may sort the header)
        "paths": json.dumps(
            [
                join(layer.path, leaf)
                for layer in listed
                for leaf in layer.shapes()
                if layer.persistent(leaf)
            ]
        ),
    }
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned

    def write(f: Any) -> None:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        computed: dict[int, dict[str, np.ndarray]] = {}
        for slot in entries:
            value = slot_value(slot, computed, drop=True)
            if id(slot) in turned:
                value = value.T
            want = header[slot.keys[0]]
            if list(value.shape) != want["shape"]:
                raise CheckpointError(
                    f"{slot.keys[0]} changed shape while saving: {value.shape}, not {tuple(want['shape'])}."
                )
            value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
            f.write(value.reshape(-1).view(np.uint8).data)

    atomic_write(path, write)


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    The file is what ``open(path, "wb")`` would make of it: the permissions of the file it
    replaces, or for a new file 0o666 less the process's umask (the temporary file is
    created with that mode, so the umask applies as it does to ``open``); a symbolic link is
    written through, to its target; a folder that does not exist, or a directory at
    ``path``, raises the ``OSError`` ``open`` raises, naming ``path``.
    """
    import errno
    import secrets

    given = file_path(path)
    path = os.path.realpath(given) if os.path.islink(given) else given  # open() writes through
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), given)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new file
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:  # no such folder, no permission: as open() says it, of the path
            raise type(e)(e.errno, e.strerror, given) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dfd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load(
    tree: Any,
    path: PathLike,
    strict: bool = True,
    *,
    cast: bool = False,
    error_if_nonfinite: bool = False,
) -> LoadResult:
    """Read a checkpoint onto ``tree`` (a tree, a node, or a native model), whatever backend
    wrote it: all or nothing.

    ``path`` is a unitree (safetensors) checkpoint, any safetensors file with
    canonical names, or a PyTorch ``state_dict`` file (read with
    ``weights_only=True``, never a plain unpickle). Every entry is checked
    against the header (names, shapes, dtypes) before anything is written;
    then tensors are read from the file one at a time. A dtype is converted to
    the model's only when no value can change (float16 -> float32), unless
    ``cast=True``. ``strict=False`` skips missing and unexpected keys and returns them.
    ``error_if_nonfinite=True`` refuses a NaN or an infinity in any tensor
    (:class:`unitree.NonFiniteError`); tensors are checked as they are read,
    and what was written before the refused one is put back. A tensor is read straight
    into the model's memory where the model holds it as the file does (a torch tensor on
    the host: ``Adapter.writable_view``), else into a fresh array that is written. Where no
    write into the model can fail once validated (``Adapter.write_can_fail``: torch, Keras,
    Flax on the host) no copy of the old values is kept: a file truncated by another
    process while it is read, or a machine out of memory, leaves the model partly written,
    which the error's note says (``unitree._write.write_all``). A tied parameter's other
    paths, which the file stores once, are keys too, as in torch's ``state_dict``.

    Returns:
        ``LoadResult(missing_keys, unexpected_keys)``: empty lists under ``strict=True``.

    Raises:
        CheckpointError: a file that cannot be read safely (missing, truncated, a header
            that lies, a newer format version, a PyTorch file without torch), naming it.
        StateDictError: keys missing or unexpected (under ``strict``), shapes that differ,
            a lossy dtype change without ``cast=True``; every one listed, nothing written.
        NonFiniteError: with ``error_if_nonfinite=True``, a NaN or an infinity.
    """
    view = view_of(tree)
    with open_checkpoint(path) as ckpt:
        # a tied tensor's other paths are keys too, holding the stored tensor's value
        aliases = ckpt.aliases()
        header = {**ckpt.header, **{a: ckpt.header[k] for a, k in aliases.items()}}
        turned = _transposed_in(ckpt, view, aliases)
        for key in turned & set(header):
            shape, dtype = header[key]
            header[key] = (shape[::-1], dtype)

        def get(key: str) -> Any:  # a Stored tensor, read where it is written (_write)
            value = ckpt.stored(aliases.get(key, key))
            return value.T if key in turned else value

        return load_into(
            view,
            header,
            get,
            strict,
            casting="unsafe" if cast else "safe",
            source=os.path.basename(ckpt.path),
            error_if_nonfinite=error_if_nonfinite,
            stored=aliases,
        )


def stored_transposed(kind: Any) -> frozenset[str]:
    """The canonical leaves a layer kind's files hold transposed: a registered type whose
    PyTorch class stores them so (Hugging Face's ``Conv1D``: weight (in, out)), so that a
    file holds what that PyTorch model's ``state_dict`` holds."""
    return getattr(kind, "stored", frozenset())


def _transposed_in(ckpt: Any, view: Any, aliases: dict[str, str]) -> set[str]:
    """The keys whose tensors ``ckpt`` holds transposed from canonical: those its metadata lists,
    in a file unitree wrote; in any other file (``save_pretrained``'s, ``torch.save``'s), which
    holds PyTorch's own layouts, those of the model's layers that PyTorch stores transposed
    (:func:`stored_transposed`)."""
    if getattr(ckpt, "ours", False):
        listed = set(ckpt.transposed)
        return listed | {a for a, k in aliases.items() if k in listed}
    return {
        key
        for slot in slots(view)
        if slot.leaf in stored_transposed(slot.layer.kind)
        for key in slot.keys
    }
