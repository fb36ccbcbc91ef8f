"""Canonical checkpoints: safetensors files with canonical names and layouts.

One file that every backend reads: paths and layouts are the canonical ones
(DESIGN §3), a tied parameter is stored once under its first path, and the
metadata records the tie groups, the source backend and the format version.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ._dtypes import numpy_dtype
from ._errors import CheckpointError

if TYPE_CHECKING:
    from ._tree import LoadResult, Node

PathLike = Union[str, "os.PathLike[str]"]
FORMAT, FORMAT_VERSION = "unitree", "1"

# safetensors' dtype names -> numpy's
_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64",
}  # fmt: skip


def save(tree: Node, path: PathLike, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``tree``'s parameters and persistent buffers to a safetensors file, atomically.

    The file is written under a temporary name in the same folder, flushed to
    disk, then renamed over ``path``: a reader sees the old file or the new
    one, never a torn one. ``metadata`` adds string entries to the header.
    """
    import tempfile

    from safetensors.numpy import save_file

    state = {k: np.ascontiguousarray(v) for k, v in tree.state_dict().items()}
    meta = {
        **(metadata or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": tree._tree.backend,
        "ties": json.dumps(tree.ties()),
        # safetensors sorts its header: this keeps the model's order, aliases included
        "paths": json.dumps([path for path, p in tree._entries() if p._persistent]),
    }
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.close(fd)
        save_file(state, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
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


class Checkpoint:
    """A safetensors file opened for reading: header first, tensors one at a time."""

    def __init__(self, path: PathLike) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such checkpoint file.")
        try:
            self._file = safe_open(self.path, framework="numpy")
            self.metadata: dict[str, str] = self._file.metadata() or {}
            self.header: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for key in self._file.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                view = self._file.get_slice(key)
                self.header[key] = (
                    tuple(view.get_shape()),
                    numpy_dtype(_DTYPES.get(view.get_dtype(), view.get_dtype())),
                )
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e}).") from None

    def __getitem__(self, key: str) -> np.ndarray:
        a = self._file.get_tensor(key)
        want = self.header[key][1]
        return a.view(want) if a.dtype != want and a.dtype.itemsize == want.itemsize else a

    def paths(self, aliases: bool = False) -> list[str]:
        """The stored keys (and with ``aliases``, the other paths of tied ones) in the writer's
        traversal order when it recorded one, else in natural order."""
        known = set(self.header) | (set(self.aliases()) if aliases else set())
        order = [k for k in json.loads(self.metadata.get("paths", "[]")) if k in known]
        if len(set(order)) == len(known):
            return list(dict.fromkeys(order))
        return sorted(
            known,
            key=lambda k: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in k.split(".")],
        )

    def aliases(self) -> dict[str, str]:
        """{path of a tied parameter that is not stored: the stored path}."""
        return {other: group[0] for group in self.ties() for other in group[1:]}

    def ties(self) -> list[tuple[str, ...]]:
        return [tuple(group) for group in json.loads(self.metadata.get("ties", "[]"))]

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.__exit__(*exc)


def load(tree: Node, path: PathLike, strict: bool = True) -> LoadResult:
    """Read a checkpoint onto ``tree``, whatever backend wrote it: all or nothing.

    Every entry is checked against the header (names, shapes, dtypes) before
    anything is written; then tensors are read from the file one at a time.
    Values are cast to the model's dtype only when the kind of number stays
    the same. ``strict=False`` skips missing and unexpected keys and returns them.
    """
    with Checkpoint(path) as ckpt:
        return tree._load(ckpt.header, ckpt.__getitem__, strict)
