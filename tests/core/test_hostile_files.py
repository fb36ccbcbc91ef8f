"""Hostile safetensors files: each one is refused, in bounded time and memory.

Every file here starts from a valid checkpoint written by ``ut.save`` and breaks one thing:
truncation at every byte of the header and at several bytes of the data, a lying header
length, lying offsets, sizes or dtypes, duplicate keys, names that could be file paths,
trailing bytes, a header that is not JSON or not an object, metadata that lies. For each,
``ut.load`` raises a ``CheckpointError`` (also a ``ValueError``) naming the file and the
problem, the model it was loading into keeps its values, no file descriptor is leaked, and
``unitree show`` exits with a one-line error instead of a traceback.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import pytest
from safetensors.numpy import load_file
from unitree_fake import FakeAdapter, Mod, mlp, values

import unitree as ut
from unitree._cli import main
from unitree._files import Checkpoint

NAME = "hostile.safetensors"
ROOT = Path(__file__).resolve().parents[2]


def tree(seed: int = 5) -> tuple[ut.ParamTree, Mod]:
    """A tree of the model that wrote the valid file (other values), and its native model."""
    model = mlp(shared=True, backend="torch", seed=seed)
    return ut.ParamTree(FakeAdapter("torch"), model), model


@functools.cache
def valid() -> bytes:
    """A valid checkpoint, as ``ut.save`` writes it: 6 stored tensors, 2 ties, 484 data bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "valid.safetensors")
        ut.save(tree(seed=0)[0], path)
        with open(path, "rb") as f:
            return f.read()


def parts() -> tuple[dict[str, Any], bytes]:
    """The valid file's header (in its order, ``__metadata__`` last) and its data."""
    raw = valid()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st(header: dict[str, Any] | bytes, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file: the header's length (``length`` to lie about it), header, data."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(blob) if length is None else length).to_bytes(8, "little") + blob + data


Edit = Callable[[dict[str, Any], bytes], bytes]
CASES: list[Any] = []


def case(id: str, word: str, edit: Edit) -> None:
    """A hostile file: ``edit`` gets a copy of the valid header and the data, returns the file."""
    CASES.append(pytest.param(edit, word, id=id))


def entry(name: str, **changes: Any) -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        h[name].update(changes)
        return st(h, d)

    return edit


def rename(old: str, new: str) -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        return st({new if k == old else k: v for k, v in h.items()}, d)

    return edit


def meta(**changes: Any) -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        h["__metadata__"].update(changes)
        return st(h, d)

    return edit


def raw_header(text: bytes) -> Edit:
    return lambda h, d: st(text, d)


def entries_text(h: dict[str, Any]) -> str:
    """The header's tensor entries as JSON text without the braces, to splice raw text into."""
    return json.dumps({k: v for k, v in h.items() if k != "__metadata__"})[1:-1]


# truncated: at every byte of the length and the header, at several bytes of the data
SIZE = len(valid())
HEADER_END = 8 + int.from_bytes(valid()[:8], "little")
case("truncated-at-0", "empty", lambda h, d: b"")
for _at in range(1, 8):
    case(f"truncated-at-{_at}", "too short", lambda h, d, at=_at: valid()[:at])
for _at in [
    *range(8, HEADER_END),
    *(HEADER_END + k for k in (0, 1, 3, 4, 100, 127, 128, 129, 483)),
]:
    case(f"truncated-at-{_at}", "truncated", lambda h, d, at=_at: valid()[:at])
case("truncated-one-byte-short", "truncated", lambda h, d: valid()[:-1])

# the header's length lies
case("length-past-the-end", "truncated", lambda h, d: st(h, d, len(st(h, d)) - 8 + 1))
case("length-2**63", "limit", lambda h, d: st(h, d, 2**63))
case("length-2**64-1", "limit", lambda h, d: st(h, d, 2**64 - 1))
case("length-100MB-claim", "truncated", lambda h, d: st(h, d, 100_000_000))
case("length-over-100MB", "limit", lambda h, d: st(h, d, 100_000_001))
case("length-zero", "length is 0", lambda h, d: st(h, d, 0))
case("length-too-short", "json", lambda h, d: st(h, d, len(st(h, b"")) - 8 - 20))
case("length-too-long", "json", lambda h, d: st(h, b"\0" * 4 + d, len(st(h, b"")) - 8 + 4))


# the offsets lie
def _shift(by: int, prepend: bytes = b"") -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        for k, v in h.items():
            if k != "__metadata__":
                v["data_offsets"] = [o + by for o in v["data_offsets"]]
        return st(h, prepend + d)

    return edit


def _drop(name: str) -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        del h[name]
        return st(h, d)

    return edit


case("offsets-gap-at-start", "gap", _shift(4, b"\0" * 4))
case("offsets-gap-in-middle", "gap", _drop("2.weight"))
case("offsets-gap-zero-size-tensor-missing-data", "gap", entry("0.bias", data_offsets=[132, 164]))
case("offsets-overlap", "overlap", entry("0.bias", data_offsets=[124, 156]))
case("offsets-same-span", "overlap", entry("6.weight", data_offsets=[416, 448], shape=[8]))
case("offsets-out-of-range", "truncated", entry("6.bias", data_offsets=[10**6, 10**6 + 4]))
case("offsets-past-2**64", "truncated", entry("0.weight", data_offsets=[2**64, 2**64 + 128]))
case("offsets-all-shifted-past-end", "truncated", _shift(4))
case("offsets-begin-after-end", "after", entry("6.bias", data_offsets=[484, 480]))
case("offsets-negative", "negative", entry("0.weight", data_offsets=[-128, 0]))
case("offsets-negative-end", "negative", entry("6.bias", data_offsets=[480, -4]))
case("offsets-strings", "two integers", entry("0.bias", data_offsets=["128", "160"]))
case("offsets-floats", "two integers", entry("0.bias", data_offsets=[128.0, 160.0]))
case("offsets-bools", "two integers", entry("6.bias", data_offsets=[True, True]))
case("offsets-three", "two integers", entry("0.bias", data_offsets=[128, 160, 192]))
case("offsets-one", "two integers", entry("0.bias", data_offsets=[128]))
case("offsets-null", "two integers", entry("0.bias", data_offsets=None))
case("offsets-object", "two integers", entry("0.bias", data_offsets={"0": 128, "1": 160}))

# sizes and dtypes that do not match the offsets
case("shape-bigger-than-span", "offsets span", entry("0.weight", shape=[8, 5]))
case("shape-smaller-than-span", "offsets span", entry("2.weight", shape=[8, 7]))
case("shape-zero-dim", "offsets span", entry("0.weight", shape=[0, 4]))
case("shape-scalar-for-vector", "offsets span", entry("0.bias", shape=[]))
case("dtype-F64-named-for-F32", "offsets span", entry("0.weight", dtype="F64"))
case("dtype-F16-named-for-F32", "offsets span", entry("2.bias", dtype="F16"))
case("dtype-U8-named-for-F32", "offsets span", entry("6.bias", dtype="U8"))
case("dtype-unknown", "unknown dtype 'F33' for tensor '0.bias'", entry("0.bias", dtype="F33"))
case("dtype-numpy-spelling", "unknown dtype 'float32'", entry("0.bias", dtype="float32"))
case("dtype-lowercase", "unknown dtype 'f32'", entry("0.bias", dtype="f32"))
case("dtype-not-a-string", "unknown dtype", entry("0.bias", dtype=4))
case("dtype-list", "unknown dtype", entry("0.bias", dtype=["F32"]))
case("shape-negative", "non-negative integers", entry("0.weight", shape=[-8, -4]))
case("shape-floats", "non-negative integers", entry("0.weight", shape=[8.0, 4.0]))
case("shape-bools", "non-negative integers", entry("6.bias", shape=[True]))
case("shape-string", "non-negative integers", entry("0.weight", shape="8x4"))
case("shape-null", "non-negative integers", entry("0.weight", shape=None))
case("shape-nested", "non-negative integers", entry("0.weight", shape=[[8, 4]]))
case(
    "shape-nan",
    "non-negative integers",
    raw_header(b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}'),
)
case("shape-too-many-dims", "dimensions", entry("6.bias", shape=[1] * 40))
case("shape-too-large-empty", "too large", entry("6.bias", shape=[2**62, 2**62, 0, 1]))


# the entries themselves
def _set(name: str, value: Any) -> Edit:
    def edit(h: dict[str, Any], d: bytes) -> bytes:
        h[name] = value
        return st(h, d)

    return edit


case("entry-list", "exactly the keys", _set("0.bias", [128, 160]))
case("entry-string", "exactly the keys", _set("0.bias", "F32"))
case("entry-null", "exactly the keys", _set("0.bias", None))
case("entry-extra-key", "exactly the keys", entry("0.bias", offset=3))
case("entry-missing-key", "exactly the keys", _set("0.bias", {"dtype": "F32", "shape": [8]}))

# duplicate keys: at the top, inside an entry, in the metadata
case(
    "duplicate-tensor",
    "duplicate key '0.bias'",
    lambda h, d: st(
        (
            "{"
            + entries_text(h)
            + ',"0.bias":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}'
            + "}"
        ).encode(),
        d,
    ),
)
case(
    "duplicate-key-in-entry",
    "duplicate key 'dtype'",
    lambda h, d: st(
        (
            "{"
            + entries_text(h).replace('"dtype": "F32"', '"dtype": "F64", "dtype": "F32"', 1)
            + "}"
        ).encode(),
        d,
    ),
)
case(
    "duplicate-offsets-in-entry",
    "duplicate key 'data_offsets'",
    lambda h, d: st(
        (
            "{"
            + entries_text(h).replace(
                '"data_offsets": [0, 128]', '"data_offsets": [0, 128], "data_offsets": [0, 128]'
            )
            + "}"
        ).encode(),
        d,
    ),
)
case(
    "duplicate-metadata",
    "duplicate key '__metadata__'",
    lambda h, d: st(("{" + entries_text(h) + ',"__metadata__":{},"__metadata__":{}}').encode(), d),
)

# names that are not paths of a tree: file paths, control characters, empty segments
for _id, _name in [
    ("dotdot", ".."),
    ("dot", "."),
    ("parent-path", "../etc/passwd"),
    ("absolute-path", "/etc/passwd"),
    ("slash", "a/b"),
    ("backslash", "a\\b"),
    ("windows-parent", "..\\x"),
    ("nul", "a\x00b"),
    ("newline", "a\nb"),
    ("escape", "a\x1b[2Jb"),
    ("del", "a\x7fb"),
    ("c1-control", "a\x9bb"),
    ("surrogate", "a\ud800b"),
    ("empty", ""),
    ("leading-dot", ".a"),
    ("trailing-dot", "a."),
    ("double-dot", "a..b"),
]:
    case(f"name-{_id}", "invalid tensor name", rename("0.bias", _name))

# after the data
case("trailing-bytes", "trailing", lambda h, d: st(h, d + b"\0" * 4))
case("trailing-byte", "trailing", lambda h, d: st(h, d + b"x"))
case("trailing-tensor-missing", "trailing", _drop("6.bias"))

# headers that are not a JSON object
case("not-json", "json", raw_header(b"this is not json"))
case("json-unterminated", "json", raw_header(b'{"0.bias": {"dtype": "F32"'))
case("json-trailing-garbage", "json", lambda h, d: st(json.dumps(h).encode() + b"}", d))
case("json-deeply-nested", "json", raw_header(b"[" * 100_000))
case("json-array", "not a json object", raw_header(b"[]"))
case("json-string", "not a json object", raw_header(b'"0.bias"'))
case("json-number", "not a json object", raw_header(b"8"))
case("json-null", "not a json object", raw_header(b"null"))
case("not-utf8", "utf-8", lambda h, d: st(json.dumps(h).encode().replace(b"0.bias", b"0.\xff"), d))
case("not-utf8-latin1", "utf-8", lambda h, d: st('{"caf\xe9": 1}'.encode("latin-1"), d))
case("nul-bytes-header", "json", raw_header(b"\0" * 64))

# metadata that is not str -> str
case("metadata-int", "strings to strings", meta(format_version=1))
case("metadata-nested", "strings to strings", meta(note={"a": "b"}))
case("metadata-null", "strings to strings", meta(note=None))
case("metadata-list", "strings to strings", _set("__metadata__", ["format", "unitree"]))
case("metadata-string", "strings to strings", _set("__metadata__", "unitree"))
case("metadata-surrogate", "surrogate", meta(note="\udc80"))

# our own metadata lies: ties and paths
case("ties-not-json", "'ties' is not valid json", meta(ties="[["))
case("ties-object", "list of lists", meta(ties='{"2.weight": "4.weight"}'))
case("ties-flat-list", "list of lists", meta(ties='["2.weight", "4.weight"]'))
case("ties-empty-group", "list of lists", meta(ties="[[]]"))
case("ties-numbers", "list of lists", meta(ties="[[1, 2]]"))
case("ties-unknown-head", "stored tensor", meta(ties='[["9.weight", "4.weight"]]'))
case("ties-alias-head", "stored tensor", meta(ties='[["4.weight", "2.weight"]]'))
case("ties-alias-is-stored", "also a stored tensor", meta(ties='[["2.weight", "0.weight"]]'))
case(
    "ties-alias-twice",
    "in two tie groups",
    meta(ties='[["2.weight", "4.weight"], ["2.bias", "4.weight"]]'),
)
case("ties-alias-path", "invalid tie alias", meta(ties='[["2.weight", "../4.weight"]]'))
case("ties-duplicate-key", "duplicate key", meta(ties='[{"a": 1, "a": 2}]'))
case("paths-not-json", "'paths' is not valid json", meta(paths="not json"))
case("paths-string", "list of names", meta(paths='"0.weight"'))
case("paths-numbers", "list of names", meta(paths="[0, 1]"))
case("paths-nested", "list of names", meta(paths='[["0.weight"]]'))


def _write(tmp_path: Path, edit: Edit) -> Path:
    header, data = parts()
    path = tmp_path / NAME
    path.write_bytes(edit(copy.deepcopy(header), data))
    return path


def _open_fds() -> int | None:
    folder = "/proc/self/fd"
    return len(os.listdir(folder)) if os.path.isdir(folder) else None


def assert_refused(path: Path, word: str, capsys: pytest.CaptureFixture[str]) -> None:
    """ut.load and ``unitree show`` refuse ``path`` with a message naming it and ``word``."""
    dst, model = tree()
    before = values(model)
    fds = _open_fds()
    with pytest.raises(ut.CheckpointError) as e:
        ut.load(dst, path)
    assert isinstance(e.value, ValueError)
    message = str(e.value)
    assert path.name in message, message
    assert word.lower() in message.lower(), message
    assert values(model) == before  # nothing was written
    with pytest.raises(ut.CheckpointError):
        Checkpoint(path)
    assert _open_fds() == fds  # no file descriptor leaked
    capsys.readouterr()
    assert main(["show", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("unitree: ") and path.name in err, err
    assert "Traceback" not in err and word.lower() in err.lower()


@pytest.mark.parametrize("edit, word", CASES)
def test_a_hostile_file_is_refused(tmp_path, capsys, edit, word):
    assert_refused(_write(tmp_path, edit), word, capsys)


def test_the_valid_file_loads_and_the_harness_would_see_a_write(tmp_path, capsys):
    built = load_file(_write(tmp_path, st))  # the hostile files' builder, unedited: valid
    path = _write(tmp_path, lambda h, d: valid())
    assert sorted(load_file(path)) == sorted(built) == sorted(parts()[0].keys() - {"__metadata__"})
    dst, model = tree()
    before = values(model)
    assert ut.load(dst, path) == ([], [])
    assert values(model) != before
    assert main(["show", str(path)]) == 0
    with Checkpoint(path) as ckpt:
        assert ckpt.ties() == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
        assert ckpt.aliases() == {"4.weight": "2.weight", "4.bias": "2.bias"}


@pytest.mark.parametrize("name", ["a/b", "a\\b"])
def test_save_refuses_to_write_a_name_that_load_would_refuse(tmp_path, name):
    model = Mod("Net", ok=mlp(backend="torch"), **{name: mlp(backend="torch")})
    path = tmp_path / NAME
    with pytest.raises(ut.CheckpointError, match="Cannot save the path") as e:
        ut.save(ut.ParamTree(FakeAdapter("torch"), model), path)
    assert NAME in str(e.value) and repr(f"{name}.0.weight") in str(e.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["a..b", "a.b", "", "a\nb", "\x1b[2J", "a\x9bb"])
def test_a_name_no_path_can_reach_is_refused_before_a_save(tmp_path, name):
    """A segment holding a dot, or empty, would print a path that names something else, and a
    control character would reach the terminal as it is: the tree refuses to read it, so
    neither a save nor a traversal shows such a path."""
    model = Mod("Net", ok=mlp(backend="torch"), **{name: mlp(backend="torch")})
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    with pytest.raises(ut.UnsupportedModelError, match="could not be looked up again") as e:
        ut.save(tree, tmp_path / NAME)
    assert repr(name) in str(e.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ut.UnsupportedModelError):
        list(tree.named_parameters())


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / NAME
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    return path


@pytest.mark.parametrize(
    "make, word",
    [
        pytest.param(lambda p: p / NAME, "no such checkpoint file", id="missing"),
        pytest.param(lambda p: (p / NAME).mkdir() or p / NAME, "is a directory", id="directory"),
        pytest.param(
            _fifo,
            "not a regular file",
            id="fifo",
            marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs"),
        ),
    ],
)
def test_a_path_that_is_no_file_is_refused(tmp_path, capsys, make, word):
    assert_refused(make(tmp_path), word, capsys)


def test_an_unreadable_file_is_refused(tmp_path, capsys, monkeypatch):
    """As the operating system refuses a file without read permission (root reads any file, so
    the refusal is played by ``os.open``)."""
    path = _write(tmp_path, lambda h, d: valid())
    real = os.open

    def refuse(file: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert_refused(path, "permission denied", capsys)


def _sparse(tmp_path: Path, length: int, size: int) -> Path:
    """A file of ``size`` bytes (sparse: no disk used) that claims a ``length``-byte header."""
    path = tmp_path / NAME
    with open(path, "wb") as f:
        f.write(length.to_bytes(8, "little"))
        f.truncate(size)
    return path


@pytest.mark.parametrize(
    "make, word",
    [
        pytest.param(lambda p: _write(p, lambda h, d: st(h, d, 2**63)), "limit", id="2**63"),
        pytest.param(
            lambda p: _write(p, lambda h, d: st(h, d, 100_000_000)), "truncated", id="100MB-claim"
        ),
        pytest.param(
            lambda p: _sparse(p, 100_000_001, 100_000_016), "limit", id="over-100MB-sparse"
        ),
        pytest.param(
            lambda p: _write(
                p, entry("6.bias", shape=[10**6, 10**6], data_offsets=[480, 4 * 10**12 + 480])
            ),
            "truncated",
            id="tensor-claims-4TB",
        ),
    ],
)
def test_a_giant_claim_is_refused_before_anything_is_allocated(tmp_path, capsys, make, word):
    path = make(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ut.CheckpointError, match=word):
            ut.load(tree()[0], path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak Python allocation {peak:,} bytes"
    assert_refused(path, word, capsys)


def test_a_file_truncated_after_it_was_opened_is_refused_when_read(tmp_path):
    path = _write(tmp_path, lambda h, d: valid())
    dst, model = tree()
    before = values(model)
    with Checkpoint(path) as ckpt:
        os.truncate(path, HEADER_END + 200)  # the second line of defence: pread finds the end
        ckpt["0.weight"]  # data bytes 0..128: still there
        with pytest.raises(ut.CheckpointError, match=r"hostile\.safetensors.*inside 2\.weight"):
            ckpt["2.weight"]  # data bytes 160..416: cut at 200
    with pytest.raises(ut.CheckpointError, match=r"hostile\.safetensors.*truncated"):
        ut.load(dst, path)
    assert values(model) == before


@pytest.mark.parametrize("id", ["truncated-at-300", "length-2**63", "name-parent-path", "dir"])
def test_the_command_line_prints_one_line_and_no_traceback(tmp_path, id):
    if id == "dir":
        path = tmp_path / NAME
        path.mkdir()
    else:
        (edit,) = [c.values[0] for c in CASES if c.id == id]
        path = _write(tmp_path, edit)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-m", "unitree._cli", "show", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unitree: ") and NAME in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_the_count_of_hostile_inputs():
    """Every parametrized hostile file above, for the record (the tests collected are more)."""
    assert len(CASES) > 700
    assert len({c.id for c in CASES}) == len(CASES)
