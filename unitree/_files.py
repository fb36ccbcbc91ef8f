"""Reading checkpoint files safely: safetensors files, checked in full by our own header
validator before any tensor is read, and PyTorch ``state_dict`` files, read by torch with
``weights_only=True``. Nothing is ever unpickled; :func:`open_checkpoint` tells the two
apart by their contents.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import threading
from typing import Any, Union

import numpy as np

from ._adapter import adapter_named
from ._dtypes import numpy_dtype
from ._errors import CheckpointError, ValueTypeError
from ._param import WORKERS, pool

PathLike = Union[str, "os.PathLike[str]"]
# The safetensors "format" a file holds: "pt", PyTorch's names and layouts, which transformers'
# from_pretrained requires; unitree's own files say so by the version key beside it (files of
# unitree before it said "format": "unitree", with "format_version").
FORMAT, FORMAT_VERSION, VERSION_KEY = "pt", "1", "unitree_format_version"
OLD_FORMAT = "unitree"

# safetensors' dtype names -> numpy's
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip
CODES = {v: k for k, v in DTYPES.items()}


def file_path(path: Any) -> str:
    """``os.fspath(path)``, or a ``ValueTypeError`` for what is no path (an int, None)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise ValueTypeError(
            f"Expected a file path (a str or an os.PathLike), got {type(path).__name__} {path!r:.60}."
        ) from None


_MAX_HEADER = 100_000_000  # safetensors' own limit on the header's length
_MAX_NDIM = 32  # numpy 1.x's limit


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object_pairs_hook: a key given twice is an error, not a silent overwrite."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def bad_name(name: str) -> str | None:
    """Why ``name`` cannot be a tensor's path (dotted segments, never a file path), or None."""
    if not name:
        return "it is empty"
    if _CONTROL.search(name):
        return "it holds a control character"
    if not _unicode(name):
        return "it holds a lone surrogate, not valid Unicode"
    if "/" in name or "\\" in name:
        return "it holds a slash"
    if "" in name.split("."):
        return "it has an empty segment (a leading, trailing or double dot)"
    return None


def _unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON's "\\ud800"): no UTF-8 encodes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(x: Any) -> str:
    """What JSON calls ``x``'s type."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    return names.get(type(x), type(x).__name__)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _file_error(path: str) -> CheckpointError | None:
    """Why ``path`` is no file to read a checkpoint from (missing, a directory...), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return CheckpointError(f"{path}: no such checkpoint file.")
    except OSError as e:
        return CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror}).")
    if stat.S_ISDIR(st.st_mode):
        return CheckpointError(f"{path} is a directory, not a checkpoint file.")
    if not stat.S_ISREG(st.st_mode):
        return CheckpointError(f"{path} is not a regular file, not a checkpoint file.")
    return None


class Checkpoint:
    """A safetensors file opened for reading: the header first, then tensors one at a time.

    The header is validated in full when the file is opened, reading no more
    than its declared length (at most safetensors' 100 MB): names, dtypes,
    shapes, offsets (contiguous, covering the data exactly) and our own
    metadata (ties, paths). A problem raises a ``CheckpointError`` naming the
    file and the problem. Tensors are read with ``pread``, never through a memory
    map (a file truncated by another process while it is mapped kills the reader
    with SIGBUS; a read past its end is an error): ``ckpt[key]`` into a fresh
    array, :meth:`read_into` straight into the model's own memory where a load
    can (one copy per tensor). A load holds one tensor of the file at a time.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = file_path(path)
        self._lock = threading.Lock()
        problem = _file_error(self.path)
        if problem is not None:
            raise problem
        try:  # O_NONBLOCK: a FIFO put in the file's place must not hang the open
            self._fd = os.open(
                self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
            )
        except OSError as e:
            raise CheckpointError(
                f"{self.path}: cannot read the checkpoint ({e.strerror})."
            ) from None
        try:
            self._read_header()
        except BaseException:
            os.close(self._fd)
            raise

    def _error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {problem}.")

    def _pread(self, view: memoryview, offset: int) -> int:
        """Read into ``view`` from ``offset``: the number of bytes read, 0 at the end of the file.
        ``os.preadv`` leaves the file position alone, so threads may read at once; where there
        is none (Windows), a seek and a read, one thread at a time."""
        if hasattr(os, "preadv"):
            return os.preadv(self._fd, [view], offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            data = os.read(self._fd, len(view))
        view[: len(data)] = data
        return len(data)

    def _read(self, n: int, offset: int) -> bytes:
        out = bytearray(n)
        view, done = memoryview(out), 0
        while done < n:
            got = self._pread(view[done:], offset + done)
            if not got:
                raise self._error("truncated: the file ends inside the header")
            done += got
        return bytes(out)

    def _json(self, text: str | bytes, what: str) -> Any:
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        except _Duplicate as e:
            raise self._error(f"duplicate key {e.args[0]!r} in {what}") from None
        except (ValueError, RecursionError) as e:
            raise self._error(f"{what} is not valid JSON ({str(e)[:200]})") from None

    def _read_header(self) -> None:
        st = os.fstat(self._fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode):
            raise self._error("not a regular file")
        if size == 0:
            raise self._error("the file is empty, not a safetensors file")
        if size < 8:
            raise self._error(f"{size} bytes is too short to be a safetensors file")
        n = int.from_bytes(self._read(8, 0), "little")
        if n > _MAX_HEADER:
            raise self._error(
                f"the header length {n:,} is over safetensors' limit of {_MAX_HEADER:,} bytes: "
                "not a safetensors file, or a damaged one"
            )
        if n > size - 8:
            raise self._error(
                f"truncated: the header length is {n:,} bytes, the file holds {size - 8:,} after it"
            )
        if n == 0:
            raise self._error("the header length is 0: no header")
        try:
            text = self._read(n, 8).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error(
                f"the header is not valid UTF-8 ({e.reason} at byte {8 + e.start})"
            ) from None
        raw = self._json(text, "the header")
        if not isinstance(raw, dict):
            raise self._error(f"the header is {_kind(raw)}, not a JSON object")

        meta = raw.pop("__metadata__", {})
        if not isinstance(meta, dict):
            raise self._error("__metadata__ must be an object mapping strings to strings")
        for key, value in meta.items():
            if not isinstance(value, str):
                raise self._error(
                    f"__metadata__ must map strings to strings: {key!r} is {_kind(value)}"
                )
            if not (_unicode(key) and _unicode(value)):
                raise self._error(f"__metadata__ {key!r} holds a lone surrogate, not valid Unicode")
        self.metadata: dict[str, str] = meta
        version = meta.get(VERSION_KEY) or (
            meta.get("format_version", FORMAT_VERSION) if meta.get("format") == OLD_FORMAT else None
        )
        self.ours = version is not None  # written by unitree
        if self.ours and version != FORMAT_VERSION:
            raise self._error(
                f"written in unitree's checkpoint format version {version!r}; this version of "
                f"unitree reads version {FORMAT_VERSION!r}: upgrade unitree to read it"
            )

        self._start = 8 + n
        self.header: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._offsets: dict[str, int] = {}
        spans: list[tuple[int, int, str]] = []
        for name, entry in raw.items():
            why = bad_name(name)
            if why:
                raise self._error(f"invalid tensor name {name!r}: {why}")
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                got = sorted(entry) if isinstance(entry, dict) else _kind(entry)
                raise self._error(
                    f"the entry of tensor {name!r} must be an object with exactly the keys dtype, shape and data_offsets, not {got}"
                )
            code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not isinstance(code, str) or code not in DTYPES:
                raise self._error(f"unknown dtype {code!r} for tensor {name!r}")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                raise self._error(
                    f"the shape of tensor {name!r} must be a list of non-negative integers, not {str(shape)[:100]}"
                )
            if len(shape) > _MAX_NDIM:
                raise self._error(
                    f"the shape of tensor {name!r} has {len(shape)} dimensions, over {_MAX_NDIM}"
                )
            if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets)):
                raise self._error(
                    f"the data_offsets of tensor {name!r} must be two integers, not {str(offsets)[:100]}"
                )
            begin, end = offsets
            if begin < 0 or end < 0:
                raise self._error(f"negative data_offsets {offsets} for tensor {name!r}")
            if begin > end:
                raise self._error(
                    f"the data_offsets {offsets} of tensor {name!r} begin after they end"
                )
            try:
                dtype = numpy_dtype(DTYPES[code])
            except ValueTypeError as e:
                raise ValueTypeError(f"{self.path}: tensor {name!r} is {code}: {e}") from None
            if math.prod(max(d, 1) for d in shape) * dtype.itemsize > sys.maxsize:
                raise self._error(f"the shape {shape} of tensor {name!r} is too large")
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes:
                raise self._error(
                    f"tensor {name!r}: the header says {nbytes:,} bytes for {code} {shape} but its offsets span {end - begin:,}"
                )
            self.header[name] = (tuple(shape), dtype)
            self._offsets[name] = self._start + begin
            spans.append((begin, end, name))

        data = size - self._start
        total = max((end for _, end, _ in spans), default=0)
        if total > data:
            raise self._error(
                f"truncated: the header says the data is {total:,} bytes, the file holds {data:,}"
            )
        done, previous = 0, ""
        for begin, end, name in sorted(spans):  # contiguous from 0, as safetensors requires
            if begin > done:
                raise self._error(
                    f"a gap in the data: bytes {done:,} to {begin:,} (before tensor {name!r}) belong to no tensor"
                )
            if begin < done:
                raise self._error(f"tensor {name!r} overlaps tensor {previous!r} in the data")
            done, previous = end, name
        if done < data:
            raise self._error(f"trailing bytes: {data - done:,} after the last tensor's data")

        # our own metadata, checked now: a lie is refused at open, not at first use
        ties = self._json(meta.get("ties", "[]"), "the metadata 'ties'")
        if not isinstance(ties, list) or not all(
            isinstance(g, list) and g and all(isinstance(k, str) for k in g) for g in ties
        ):
            raise self._error("the metadata 'ties' must be a JSON list of lists of names")
        self._aliases: dict[str, str] = {}
        for group in ties:
            if group[0] not in self.header:
                raise self._error(
                    f"the tie group {str(group)[:100]} does not start with a stored tensor"
                )
            for other in group[1:]:
                if other in self.header:
                    raise self._error(f"the tie alias {other!r} is also a stored tensor")
                if other in self._aliases:
                    raise self._error(f"the tie alias {other!r} is in two tie groups")
                why = bad_name(other)
                if why:
                    raise self._error(f"invalid tie alias {other!r}: {why}")
                self._aliases[other] = group[0]
        self._ties = [tuple(group) for group in ties]
        order = self._json(meta.get("paths", "[]"), "the metadata 'paths'")
        if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
            raise self._error("the metadata 'paths' must be a JSON list of names")
        self._order: list[str] = order
        turned = self._json(meta.get("transposed", "[]"), "the metadata 'transposed'")
        if not isinstance(turned, list) or not all(
            isinstance(k, str) and k in self.header and len(self.header[k][0]) == 2 for k in turned
        ):
            raise self._error("the metadata 'transposed' must be a JSON list of stored 2-d tensors")
        self.transposed: list[str] = turned

    def __getitem__(self, key: str) -> np.ndarray:
        shape, dtype = self.header[key]
        a = np.empty(shape, dtype.newbyteorder("<"))
        self.read_into(key, a)
        return a

    def stored(self, key: str) -> Stored:
        """The tensor ``key``, not read yet: read with :meth:`Stored.read_into` straight into
        the memory that is to hold it (a load into a torch tensor: one copy), or into a fresh
        array by ``np.asarray``."""
        shape, dtype = self.header[key]
        return Stored(self, key, shape, dtype.newbyteorder("<"))

    def read_into(self, key: str, out: np.ndarray) -> None:
        """Read the tensor ``key`` into ``out``: C-contiguous, of its shape and (little-endian)
        dtype. A file that ends before the tensor does raises a ``CheckpointError``."""
        if not out.flags.c_contiguous:  # reshape would read into a copy
            raise ValueError(f"read_into {key}: the array to read into is not C-contiguous")
        view, offset = memoryview(out.reshape(-1).view(np.uint8)), self._offsets[key]

        def part(begin: int, end: int) -> None:
            while begin < end:
                n = self._pread(view[begin:end], offset + begin)
                if n == 0:
                    raise CheckpointError(
                        f"{self.path}: the file ends inside {key}: it was truncated."
                    )
                begin += n

        size = len(view)
        parts = min(WORKERS, size // _PART) if hasattr(os, "preadv") else 1
        if parts < 2:
            part(0, size)
            return
        step = -(-size // parts)  # the kernel's copies of a large tensor, on every core
        list(pool().map(lambda b: part(b, min(b + step, size)), range(0, size, step)))

    def paths(self, aliases: bool = False) -> list[str]:
        """The stored keys (and with ``aliases``, the other paths of tied ones) in the writer's
        traversal order when it recorded one, else in natural order."""
        known = set(self.header) | (set(self._aliases) if aliases else set())
        order = [k for k in self._order if k in known]
        if len(set(order)) == len(known):
            return list(dict.fromkeys(order))
        return sorted(
            known,
            key=lambda k: [
                (0, int(s), "") if s.isascii() and s.isdigit() else (1, 0, s) for s in k.split(".")
            ],
        )

    def aliases(self) -> dict[str, str]:
        """{path of a tied parameter that is not stored: the stored path}."""
        return dict(self._aliases)

    def ties(self) -> list[tuple[str, ...]]:
        return list(self._ties)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self._fd)


_PART = 1 << 20  # a tensor is read in parts of at least this size, one per core


class Stored:
    """A tensor of a :class:`Checkpoint` not read yet (``shape``, little-endian ``dtype``):
    ``np.asarray`` reads it into a fresh array, :meth:`read_into` into a given one. ``.T`` is
    the same tensor transposed (a 2-d tensor the file holds transposed from canonical):
    ``shape`` is then the transposed one, and :meth:`read_into` still reads the file's
    layout, into an array of the file's shape."""

    __slots__ = ("ckpt", "dtype", "key", "shape", "turned")

    def __init__(
        self,
        ckpt: Checkpoint,
        key: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        turned: bool = False,
    ) -> None:
        self.ckpt, self.key, self.shape, self.dtype, self.turned = ckpt, key, shape, dtype, turned

    @property
    def T(self) -> Stored:
        return Stored(self.ckpt, self.key, self.shape[::-1], self.dtype, not self.turned)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.ckpt[self.key]
        a = a.T if self.turned else a
        return a if dtype is None else a.astype(dtype, copy=False)

    def read_into(self, out: np.ndarray) -> None:
        self.ckpt.read_into(self.key, out)


class TorchFile:
    """A PyTorch ``state_dict`` file (``torch.save``: ``.pt``, ``.pth``, ``.bin``), read by the
    torch adapter with ``weights_only=True`` (torch's restricted unpickler: tensors and plain
    containers, never arbitrary objects) and memory-mapped: tensors are read one at a time."""

    def __init__(self, path: PathLike) -> None:
        self.path = file_path(path)
        self.metadata: dict[str, str] = {}
        problem = _file_error(self.path)
        if problem is not None:
            raise problem
        try:
            self._adapter = adapter_named("torch")
        except ImportError:
            raise CheckpointError(
                f"{self.path} is a PyTorch file: reading it needs torch (pip install torch)."
            ) from None
        self._state = self._adapter.state_dict_file(self.path)
        for key in self._state:  # the names a safetensors file may hold, and no others
            why = bad_name(key)
            if why:
                raise CheckpointError(f"{self.path}: invalid tensor name {key!r}: {why}.")
        self.header = {
            k: (tuple(t.shape), numpy_dtype(self._adapter.dtype(t))) for k, t in self._state.items()
        }
        # every key stays in the header (torch's own load fills an untied model from it too)
        self._aliases = self._adapter.shared_storage(self._state)

    def __getitem__(self, key: str) -> np.ndarray:
        return self._adapter.read(self._state[key])

    stored = __getitem__  # torch's memory-mapped tensors, read by torch: no copy of ours

    def paths(self, aliases: bool = False) -> list[str]:
        return [k for k in self.header if aliases or k not in self._aliases]

    def aliases(self) -> dict[str, str]:
        """{key of a tensor torch stored once under several keys: its first key}."""
        return dict(self._aliases)

    def ties(self) -> list[tuple[str, ...]]:
        groups: dict[str, list[str]] = {}
        for alias, first in self._aliases.items():
            groups.setdefault(first, [first]).append(alias)
        return [tuple(g) for g in groups.values()]

    def __enter__(self) -> TorchFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._state = {}


# How a PyTorch file begins: a zip archive (torch.save's format since 1.6), or the pickled
# magic number of the legacy format.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19")
_TORCH_NAMES = (".pt", ".pth", ".bin")


def open_checkpoint(path: PathLike) -> Checkpoint | TorchFile:
    """A safetensors checkpoint, or a PyTorch file, told apart by their contents (a zip
    archive or torch's legacy magic number is a PyTorch file), whatever their names say; a
    file named .pt/.pth/.bin that is neither a safetensors file nor recognizably PyTorch's
    is reported as a PyTorch file that does not load."""
    name = file_path(path)
    problem = _file_error(name)
    if problem is not None:
        raise problem
    try:
        with open(name, "rb") as f:
            start = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{name}: cannot read the checkpoint ({e.strerror}).") from None
    if start.startswith(_TORCH_MAGIC):
        return TorchFile(name)
    if not name.endswith(_TORCH_NAMES):
        return Checkpoint(name)
    try:
        return Checkpoint(name)  # safetensors under a PyTorch name
    except CheckpointError:
        return TorchFile(name)  # for torch's own words on what is wrong with it
