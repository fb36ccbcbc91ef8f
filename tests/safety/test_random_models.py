"""Property-based tests on random architectures, and on random paths and globs.

A spec is plain data, the same on every backend: ``(shape, layers)``, the input shape
channels-first and each layer one of ``("conv", in, out, k, dims)``, ``("bn", c, dims)``,
``("ln", c)``, ``("dense", in, out)``, ``("flatten",)`` or ``("tie", i)`` (the dense layer at
position i used again: one parameter set). Each builder's ``random_model(spec, device)``
builds it natively with random values drawn from a seed, with the same paths (positions) on
every backend.
Values are compared bit for bit, through each framework's own view (``native_state``).
"""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from unitree.conformance import backends
from unitree.conformance.builders import RICH
from unitree_checks import assert_close

import unitree as ut

Layer = tuple  # one of the tuples of the module docstring
Spec = tuple[tuple[int, ...], tuple[Layer, ...]]
State = dict[str, tuple[int, np.ndarray]]

EXAMPLES = 20
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TORCH = backends.load("torch")  # in every environment: the other side of every port
WIDTHS = st.integers(1, 8)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """1-5 layers with parameters: an optional 1-d or 2-d conv block (convs and batch norms
    over channels, then a flatten), then dense layers, layer and batch norms, and ties; half
    the specs end on a square dense layer and its tie, if nothing before made one."""
    depth = draw(st.integers(1, 5))
    dims = draw(st.integers(0, 2))
    tied = depth >= 2 + bool(dims) and draw(st.booleans())
    c = draw(st.integers(1, 4) if dims else WIDTHS)
    size = draw(st.integers(2, 4))  # and it stays >= 2: a flatten that reorders
    shape = (2, c, *(size,) * dims)
    layers: list[Layer] = []
    convs = draw(st.integers(1, depth - 2 * tied)) if dims else 0
    for _ in range(convs):
        if draw(st.sampled_from(["conv", "conv", "bn"])) == "bn":
            layers.append(("bn", c, dims))
            continue
        k, out = draw(st.integers(1, min(3, size - 1))), draw(WIDTHS)
        layers.append(("conv", c, out, k, dims))
        c, size = out, size - k + 1
    if dims:
        layers.append(("flatten",))
        c *= size**dims
    for left in range(depth - convs, 0, -1):
        square = [i for i, x in enumerate(layers) if x[0] == "dense" and x[1] == x[2] == c]
        if tied and not any(x[0] == "tie" for x in layers) and left <= 2:
            kind = "tie" if left == 1 else "square"
        else:
            kind = draw(st.sampled_from(["dense", "square", "tie", "ln", "bn"]))
        if kind == "tie" and square:
            layers.append(("tie", draw(st.sampled_from(square))))
        elif kind in ("dense", "square", "tie"):  # a square one (c -> c) can be tied later
            out = draw(WIDTHS) if kind == "dense" else c
            layers.append(("dense", c, out))
            c = out
        else:
            layers.append(("bn", c, 0) if kind == "bn" else ("ln", c))
    return shape, tuple(layers)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def groups(state: State) -> list[list[int]]:
    """Which entries of a native state are one object, by position (names differ on Keras)."""
    by: dict[int, list[int]] = {}
    for i, (ident, _) in enumerate(state.values()):
        by.setdefault(ident, []).append(i)
    return sorted(by.values())


def assert_same_state(b: ModuleType, want: State, got: State) -> None:
    """Bit-equal values in the framework's own order; the same names (but on Keras, whose
    automatic layer names count every layer the process made) and the same sharing."""
    assert len(got) == len(want)
    if b.name != "keras":
        assert list(got) == list(want)
    for (key, (_, x)), (_, y) in zip(want.items(), got.values()):
        assert same_bits(y, x), key
    assert groups(got) == groups(want)


def flatten_tied(b: ModuleType, spec: Spec) -> bool:
    """A channels-last dense layer fed by a conv's flatten at one use and by features at
    another (a tie): no one PyTorch weight serves both, and a port refuses it."""
    kinds = [x[0] for x in spec[1]]
    if b.name not in ("keras", "flax") or "flatten" not in kinds:
        return False
    i = kinds.index("flatten")
    return (
        "conv" in kinds[:i] and "dense" in kinds[i:] and ("tie", kinds.index("dense", i)) in spec[1]
    )


def torch_device(device: str) -> str:
    return device if device == "cpu" or device.startswith("cuda") else f"cuda:{device[4:]}"


@SETTINGS
@given(spec=specs())
def test_save_load_round_trip(builder: ModuleType, device: str, spec: Spec) -> None:
    """Save A, load into B of the same spec (other values): B is A, bit for bit, ties kept."""
    a = builder.wrap(builder.random_model(spec, device, seed=0))
    b = builder.wrap(builder.random_model(spec, device, seed=1))
    want, before = builder.native_state(a), builder.native_state(b)
    assert groups(before) == groups(want)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.safetensors"
        ut.save(a, path)
        assert ut.load(b, path) == ([], [])
    assert_same_state(builder, want, builder.native_state(b))
    assert b.ties() == a.ties()


FLATTEN_TIED: Spec = ((2, 2, 3), (("conv", 2, 3, 2, 1), ("flatten",), ("dense", 6, 6), ("tie", 2)))


@SETTINGS
@given(spec=specs())
@example(spec=FLATTEN_TIED)
def test_port_round_trip(builder: ModuleType, device: str, spec: Spec) -> None:
    """Port A into a torch model C and C into a fresh D like A: C's canonical state is A's and
    D's native state is A's, bit for bit, ties kept both ways."""
    a = builder.wrap(builder.random_model(spec, device, seed=0))
    c = TORCH.wrap(TORCH.random_model(spec, torch_device(device), seed=1))
    ties = a.ties()
    assert len(ties) == 2 * sum(x[0] == "tie" for x in spec[1])
    if flatten_tied(builder, spec):
        with pytest.raises(ut.PortError, match="flatten at some of its uses only"):
            ut.port(a, c)
        return
    report = ut.port(a, c)
    assert report.ties_kept == ties and not report.ties_split and c.ties() == ties
    mine, theirs = a.state_dict(), c.state_dict()
    for key, value in mine.items():
        assert same_bits(theirs[key], value), key
    assert all(k in mine or k.endswith("num_batches_tracked") for k in theirs)

    want = builder.native_state(a)
    d = builder.wrap(builder.random_model(spec, device, seed=2))
    report = ut.port(c, d)
    assert report.ties_kept == ties and not report.ties_split and d.ties() == ties
    assert_same_state(builder, want, builder.native_state(d))


# Two frameworks running up to five layers, each summing in its own order, in EPS32 of the
# largest output. Looser than cases.PORT_ULPS: with every value in [-1, 1], a norm's scale can
# be near zero, and a norm after it divides its rounding by that small spread (two layer norms
# in a row differ by up to 730 EPS32 over 450 random specs and seeds; the examples here, by 4).
OUTPUT_ULPS = 1024


def output(b: ModuleType, tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    """The model's output on X (channels-first), run natively, in inference mode."""
    if b.name in ("keras", "flax") and X.ndim > 2:
        X = np.ascontiguousarray(np.moveaxis(X, 1, -1))  # channels-last frameworks
    if b.label == "flax-nnx":  # its deck forward reads layers[0].kernel, which a norm lacks
        return np.asarray(tree.native(X))
    return np.asarray(b.forward(tree, X))


# a norm between the flatten of a channels-last conv and the dense layer: its per-feature
# values are in the flattened order too
FLAT_NORMS = [
    ((2, 2, 3), (("conv", 2, 3, 2, 1), ("flatten",), ("bn", 6, 0), ("dense", 6, 2))),
    ((2, 2, 3), (("conv", 2, 3, 2, 1), ("flatten",), ("ln", 6), ("dense", 6, 2))),
]


@settings(SETTINGS, max_examples=15)
@given(spec=specs())
@example(spec=FLAT_NORMS[0])
@example(spec=FLAT_NORMS[1])
def test_port_keeps_outputs(builder: ModuleType, device: str, spec: Spec) -> None:
    """A port means the same function: C computes what A computes (the canonical
    order of a flattened axis is PyTorch's, whatever follows the flatten)."""
    kinds = [x[0] for x in spec[1]]
    if builder.name in ("keras", "flax") and "flatten" in kinds:
        # channels-last: only a dense layer after a conv brings the flattened axis into a
        # common order (a flatten of the input itself, or as the output, has no PyTorch twin)
        i = kinds.index("flatten")
        assume("conv" in kinds[:i] and "dense" in kinds[i:] and not flatten_tied(builder, spec))
    a = builder.wrap(builder.random_model(spec, device, seed=0))
    c = TORCH.wrap(TORCH.random_model(spec, torch_device(device), seed=1))
    X = np.random.default_rng(0).standard_normal(spec[0]).astype(np.float32)
    # a flatten inside a channels-last model's call is opaque to unitree: the port proves the
    # layout it picks on X (each model's input in its own layout)
    X_a = np.moveaxis(X, 1, -1) if builder.name in ("keras", "flax") and X.ndim > 2 else X
    ut.port(a, c, check=ut.Check(np.ascontiguousarray(X_a), dst_inputs=X))
    want = output(builder, a, X)
    assert_close(output(TORCH, c, X), want, ulps=OUTPUT_ULPS)


# -- random paths and globs ------------------------------------------------------------------


class Known(NamedTuple):
    """What the tree holds, read once through its public traversal."""

    tree: ut.ParamTree
    leaves: list[ut.Param]  # each parameter and buffer once
    modules: set[str]  # every module path, the root "" included
    occurrences: list[tuple[str, ut.Param]]  # every path of every leaf


_known: dict[tuple[str, str, str], Known] = {}


def known(b: ModuleType, device: str, which: str) -> Known:
    key = (b.label, device, which)
    if key not in _known:
        model = b.port_model(device) if which == "port" else b.random_model(RICH, device)
        tree = b.wrap(model)
        leaves = [p for _, p in [*tree.named_parameters(), *tree.named_buffers()]]
        modules = {path for path, _ in tree.named_modules(remove_duplicate=False)}
        occurrences = [
            *tree.named_parameters(remove_duplicate=False),
            *tree.named_buffers(remove_duplicate=False),
        ]
        _known[key] = Known(tree, leaves, modules, occurrences)
    return _known[key]


CHARS = st.sampled_from(
    [
        *"0123456789abeghistw.*?[]!-_/\\ +",
        "\u0301",
        "\u00e9",
        "\u00b2",
        "\u0663",
        "\uff11",
        "\x00",
        "\n",
        "\u200b",
        "\u0130",
    ]
)
# what int() or str.isdigit() take for a position: a path segment that only looks like one
NUMERALS = st.sampled_from(
    [
        "00",
        "01",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1_0",
        "0x1",
        "1e0",
        "\u00b2",
        "\u0663",
        "\uff11",
        "\u2070",
    ]
)
TEXT = st.one_of(st.text(CHARS, max_size=12), st.text(max_size=8), NUMERALS)
INTS = st.one_of(st.integers(-12, 12), st.integers(-(2**70), 2**70))
OTHER_KEYS = st.sampled_from([None, 1.5, True, (0,), b"0", np.int64(0), np.int64(-1)])


@st.composite
def mutated(draw: st.DrawFn, paths: list[str]) -> str:
    """A real path with segments dropped, repeated, swapped, emptied or edited."""
    segs = draw(st.sampled_from(paths)).split(".")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(segs) - 1)) if segs else 0
        op = draw(st.sampled_from(["drop", "repeat", "swap", "dot", "edit", "numeral", "pad"]))
        if op == "drop" and segs:
            del segs[i]
        elif op == "repeat" and segs:
            segs.insert(i, segs[i])
        elif op == "swap" and len(segs) > 1:
            j = draw(st.integers(0, len(segs) - 1))
            segs[i], segs[j] = segs[j], segs[i]
        elif op == "dot":
            segs.insert(i, "")
        elif op == "edit" and segs:
            segs[i] = draw(TEXT)
        elif op == "numeral" and segs:
            segs[i] = draw(NUMERALS)
        elif segs:
            segs[i] = draw(st.sampled_from(["0", "+", "-", " ", "_", "*"])) + segs[i]
    return ".".join(segs)


def check_found(k: Known, found: Any, key: object) -> None:
    """What a lookup returned is part of the tree, at a path the tree lists."""
    if isinstance(found, ut.Param):
        assert any(found is p for p in k.leaves), key
        assert k.tree[found.path] is found
    else:
        assert isinstance(found, ut.Node), (key, found)
        assert found.path in k.modules, (key, found.path)
        assert k.tree[found.path].native is found.native


def check_lookup(k: Known, node: ut.Node, key: object) -> None:
    typed = isinstance(key, (str, int, np.integer)) and not isinstance(key, bool)
    try:
        found = node[key]  # type: ignore[index]
    except ut.UnitreeError:
        found = None
    except TypeError:
        assert not typed, key
        found = None
    if found is not None:
        check_found(k, found, key)
    try:
        inside = key in node
    except ut.UnitreeError:
        return
    except TypeError:
        assert not typed, key
        return
    assert inside is (found is not None), key


def check_select(k: Known, node: ut.Node, pattern: str) -> None:
    found = node.select(pattern)
    assert len({id(p) for p in found}) == len(found), pattern  # each leaf once
    pre = f"{node.path}." if node.path else ""
    want = {
        id(p)
        for p in k.leaves
        if any(fnmatch.fnmatchcase(q[len(pre) :], pattern) for q in p.paths if q.startswith(pre))
    }
    assert {id(p) for p in found} == want, pattern


def check_getattr(k: Known, name: str) -> None:
    try:
        found = getattr(k.tree, name)
    except ut.UnitreeError:
        return
    except AttributeError:
        assert name.startswith("_"), name  # Python's own protocol for private names
        return
    if not (name.startswith("_") or hasattr(type(k.tree), name)):  # not a method or property
        check_found(k, found, name)


def test_real_paths(builder: ModuleType, device: str) -> None:
    """Every path the traversal lists leads back to what it listed, from the root and from
    every module above it; a glob of a path selects exactly its leaf."""
    for which in ("port", "random"):
        k = known(builder, device, which)
        for path, p in k.occurrences:
            assert k.tree[path] is p and path in p.paths, path
            assert k.tree.select(path) == [p], path
            assert path in k.tree and getattr(k.tree, path) is p
        for path in k.modules - {""}:
            node = k.tree[path]
            assert isinstance(node, ut.Node) and node.path == path
            for full, p in k.occurrences:
                if full.startswith(path + "."):
                    assert node[full[len(path) + 1 :]] is p, (path, full)
        for p in k.leaves:  # p.paths: every occurrence the traversal lists, and no other
            assert sorted(p.paths) == sorted(q for q, x in k.occurrences if x is p)


@settings(SETTINGS, max_examples=150)
@given(data=st.data())
def test_random_paths(builder: ModuleType, device: str, data: st.DataObject) -> None:
    """Random strings, integers, other objects and mutations of real paths: a lookup, ``in``,
    ``getattr`` and ``select`` raise nothing but unitree's errors, and what they return is
    part of the tree; ``select`` agrees with fnmatch over every path of every leaf."""
    k = known(builder, device, data.draw(st.sampled_from(["port", "random"])))
    real = sorted({path for path, _ in k.occurrences} | k.modules - {""})
    node = (
        k.tree[data.draw(st.sampled_from(sorted(k.modules)))]
        if data.draw(st.booleans())
        else k.tree
    )
    key = data.draw(st.one_of(TEXT, mutated(real), INTS, OTHER_KEYS))
    check_lookup(k, node, key)
    if isinstance(key, str):
        check_getattr(k, key)
        check_select(k, node, key)
    check_select(k, k.tree, data.draw(st.one_of(TEXT, mutated(real))))
