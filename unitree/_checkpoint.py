"""Canonical checkpoints: safetensors files with canonical names and layouts.

One file that every backend reads: paths and layouts are the canonical ones
(DESIGN §3), a tied parameter is stored once under its first path, and the
metadata records the tie groups, the source backend and the format version.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from ._dtypes import numpy_dtype
from ._errors import CheckpointError, UninitializedError

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


_CODES = {v: k for k, v in _DTYPES.items()} | {"float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def save(tree: Node, path: PathLike, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``tree``'s parameters and persistent buffers to a safetensors file, atomically.

    Canonical names and layouts; a tied parameter is stored once, under its
    first path. The header is written first, then the tensors one at a time in
    traversal order, so saving holds at most one tensor beyond the model (one
    layer, for a layer whose canonical leaves are computed from several). The
    file is written under a temporary name in the same folder, flushed to
    disk, then renamed over ``path``: a reader sees the old file or the new
    one, never a torn one. ``metadata`` adds string entries to the header.
    """
    from ._canon import _join, layers, slots

    entries = [s for s in slots(tree) if s.layer.persistent(s.leaf)]
    header: dict[str, Any] = {}
    offset = 0
    for slot in entries:
        shape = slot.layer.shapes()[slot.leaf]
        if shape is None:
            raise UninitializedError(
                f"Cannot save {slot.keys[0]}: it is not initialized yet. Run the model once on an input first."
            )
        dtype = numpy_dtype(slot.layer.dtype(slot.leaf))
        size = math.prod(shape) * dtype.itemsize
        header[slot.keys[0]] = {
            "dtype": _CODES[dtype.name],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {
        **(metadata or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": tree._tree.backend,
        "ties": json.dumps([s.keys for s in entries if len(s.keys) > 1]),
        # the model's order, aliases included (readers may sort the header)
        "paths": json.dumps(
            [
                _join(layer.path, leaf)
                for layer in layers(tree)
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
            layer = slot.layer
            if layer.codec is None:
                value = layer.params[slot.leaf].numpy()
            else:  # one layer at a time: drop it once its last leaf is written
                values = computed.setdefault(id(layer), layer.read())
                value = values.pop(slot.leaf)
                if not values:
                    del computed[id(layer)]
            want = header[slot.keys[0]]
            if list(value.shape) != want["shape"]:
                raise CheckpointError(
                    f"{slot.keys[0]} changed shape while saving: {value.shape}, not {tuple(want['shape'])}."
                )
            value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
            f.write(value.reshape(-1).view(np.uint8).data)

    atomic_write(path, write)


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    import tempfile

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
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


class Checkpoint:
    """A safetensors file opened for reading: the header first, then tensors one at a time.

    safetensors validates the header; the tensors are read with ``pread`` into
    fresh arrays rather than through a memory map, so a load holds one tensor
    at a time, not the pages of the whole file.
    """

    def __init__(self, path: PathLike) -> None:
        from safetensors import safe_open

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such checkpoint file.")
        try:
            with safe_open(self.path, framework="numpy") as f:  # validates the header
                self.metadata: dict[str, str] = f.metadata() or {}
            with open(self.path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                raw = json.loads(f.read(length))
        except Exception as e:
            raise CheckpointError(f"{self.path}: not a readable safetensors file ({e}).") from None
        self._fd = os.open(self.path, os.O_RDONLY)
        self._start = 8 + length
        self.header: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._offsets: dict[str, int] = {}
        for key, entry in raw.items():
            if key == "__metadata__":
                continue
            code = entry["dtype"]
            self.header[key] = (tuple(entry["shape"]), numpy_dtype(_DTYPES.get(code, code)))
            self._offsets[key] = self._start + entry["data_offsets"][0]

    def __getitem__(self, key: str) -> np.ndarray:
        shape, dtype = self.header[key]
        a = np.empty(shape, dtype.newbyteorder("<"))
        view, offset = memoryview(a.reshape(-1).view(np.uint8)), self._offsets[key]
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise CheckpointError(f"{self.path}: the file ends inside {key}: it was truncated.")
            done += n
        return a

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
        os.close(self._fd)


class TorchFile:
    """A PyTorch ``state_dict`` file (``torch.save``: ``.pt``, ``.pth``, ``.bin``), read by the
    torch adapter with ``weights_only=True`` (torch's restricted unpickler: tensors and plain
    containers, never arbitrary objects) and memory-mapped: tensors are read one at a time."""

    def __init__(self, path: PathLike) -> None:
        from ._adapter import ADAPTERS, _load

        self.path = os.fspath(path)
        self.metadata: dict[str, str] = {}
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such checkpoint file.")
        try:
            self._adapter = _load(ADAPTERS["torch"][0])
        except ImportError:
            raise CheckpointError(
                f"{self.path} is a PyTorch file: reading it needs torch (pip install torch)."
            ) from None
        self._state = self._adapter.state_dict_file(self.path)  # type: ignore[attr-defined]
        self.header = {
            k: (tuple(t.shape), numpy_dtype(self._adapter.dtype(t))) for k, t in self._state.items()
        }

    def __getitem__(self, key: str) -> np.ndarray:
        return self._adapter.read(self._state[key])

    def paths(self, aliases: bool = False) -> list[str]:
        return list(self.header)

    def aliases(self) -> dict[str, str]:
        return {}

    def ties(self) -> list[tuple[str, ...]]:
        return []

    def __enter__(self) -> TorchFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._state = {}


def open_checkpoint(path: PathLike) -> Checkpoint | TorchFile:
    """A safetensors checkpoint, or a PyTorch file (a zip archive, or named .pt/.pth/.bin)."""
    name = os.fspath(path)
    if name.endswith((".pt", ".pth", ".bin")):
        return TorchFile(name)
    try:
        with open(name, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read the checkpoint ({e.strerror}).") from None
    return TorchFile(name) if magic == b"PK\x03\x04" else Checkpoint(name)


def load(tree: Node, path: PathLike, strict: bool = True, *, cast: bool = False) -> LoadResult:
    """Read a checkpoint onto ``tree``, whatever backend wrote it: all or nothing.

    ``path`` is a unitree (safetensors) checkpoint, any safetensors file with
    canonical names, or a PyTorch ``state_dict`` file (read with
    ``weights_only=True``, never a plain unpickle). Every entry is checked
    against the header (names, shapes, dtypes) before anything is written;
    then tensors are read from the file one at a time. A dtype is converted to
    the model's only when no value can change (float16 -> float32), unless
    ``cast=True``. ``strict=False`` skips missing and unexpected keys and returns them.
    """
    with open_checkpoint(path) as ckpt:
        return tree._load(
            ckpt.header,
            ckpt.__getitem__,
            strict,
            casting="unsafe" if cast else "safe",
            source=os.path.basename(ckpt.path),
        )
