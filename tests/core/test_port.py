"""``ut.port`` between two framework-free fakes that play two backends in one process.

The "flax" and "keras" fakes hold dense kernels (in, out) and channels-last
conv kernels (*k, in, out); the "torch" fake holds PyTorch's layouts. Every
expected value below is computed from the native arrays with numpy, not
through unitree.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from unitree_checks import assert_close
from unitree_fake import FakeAdapter, Mod, conv, dense, flatten, leaf, lstm, mlp, values

import unitree as ut
from unitree import ParamTree


def wrap(model: Mod, backend: str) -> ParamTree:
    return ParamTree(FakeAdapter(backend), model)


def seq(*layers: Mod, **named: Mod) -> Mod:
    return Mod("Sequential", **{str(i): m for i, m in enumerate(layers)}, **named)


DENSE_PATHS = ["0", "2", "4", "6"]


def test_by_path_both_ways():
    flax, torch = mlp(), mlp(backend="torch", seed=10)
    report = ut.port(wrap(flax, "flax"), wrap(torch, "torch"))
    assert report.rules == {"path": 4}
    assert [(p.src, p.dst, p.rule) for p in report.pairs] == [(p, p, "path") for p in DENSE_PATHS]
    for p in DENSE_PATHS:
        np.testing.assert_array_equal(leaf(torch, f"{p}.weight"), leaf(flax, f"{p}.kernel").T)
        np.testing.assert_array_equal(leaf(torch, f"{p}.bias"), leaf(flax, f"{p}.bias"))
    assert report.tensors == 8
    assert report.bytes == sum(len(b) for b in values(torch).values())

    back = mlp(seed=20)
    assert ut.port(wrap(torch, "torch"), wrap(back, "flax")).rules == {"path": 4}
    for p in DENSE_PATHS:
        np.testing.assert_array_equal(leaf(back, f"{p}.kernel"), leaf(flax, f"{p}.kernel"))


def test_a_position_is_the_rank_among_the_parameterized_layers_of_its_container():
    src = mlp()
    # a leading Dropout shifts every torch layer by one: position k of the flax model is the
    # k-th layer with parameters of the torch one
    dst = seq(
        Mod("Dropout"),
        dense(4, 8, 11, "torch"),
        Mod("relu"),
        dense(8, 8, 12, "torch"),
        Mod("relu"),
        dense(8, 8, 13, "torch"),
        Mod("relu"),
        dense(8, 1, 14, "torch"),
    )
    report = ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    assert report.rules == {"path": 4}
    pairs = [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]
    assert [(p.src, p.dst) for p in report.pairs] == pairs
    for s, d in pairs:
        np.testing.assert_array_equal(leaf(dst, f"{d}.weight"), leaf(src, f"{s}.kernel").T)
        np.testing.assert_array_equal(leaf(dst, f"{d}.bias"), leaf(src, f"{s}.bias"))
    text = str(report)
    assert "4 layers (4 by path)" in text.splitlines()[0]
    for p in report.pairs:  # one line per pair: source, destination, rule
        assert any(
            line.split()[:3] == [p.src, "->", p.dst] and f"by {p.rule}]" in line
            for line in text.splitlines()
        )


def test_rename_makes_a_path_match_that_structure_would_get_wrong():
    def src() -> Mod:
        return Mod("Model", x=dense(8, 8, 1), y=dense(8, 8, 2))

    def dst() -> Mod:
        return Mod("Model", q=dense(8, 8, 11, "torch"), p=dense(8, 8, 12, "torch"))

    a, b = src(), dst()
    report = ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={r"^x$": "p", r"^y$": "q"})
    assert report.rules == {"rename": 2}
    assert {(p.src, p.dst) for p in report.pairs} == {("x", "p"), ("y", "q")}
    np.testing.assert_array_equal(leaf(b, "p.weight"), leaf(a, "x.kernel").T)
    np.testing.assert_array_equal(leaf(b, "q.weight"), leaf(a, "y.kernel").T)
    assert "by rename" in str(report)
    # without it, nothing decides: the same kind and shapes, names that differ, and an order
    # (registration) no framework promises to be the forward order
    a, b = src(), dst()
    before = values(b)
    with pytest.raises(
        ut.PortError, match=r"cannot decide which of x \(.*y \(.* pairs with which of q \(.*p \("
    ):
        ut.port(wrap(a, "flax"), wrap(b, "torch"))
    assert values(b) == before
    report = ut.port(wrap(a, "flax"), wrap(b, "torch"), strict=False)
    assert report.pairs == [] and values(b) == before  # never one picked


def test_a_shape_mismatch_names_both_sides_and_writes_nothing():
    src = seq(dense(4, 8, 1), Mod("relu"), dense(8, 2, 2))
    dst = Mod("Model", first=dense(4, 8, 11, "torch"), second=dense(8, 3, 12, "torch"))
    before, src_before = values(dst), values(src)
    with pytest.raises(ut.PortError) as e:
        ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    message = str(e.value)
    assert "nothing was written" in message
    assert "2 (flax Dense: weight (2, 8), bias (2,))" in message
    assert "second (torch Linear: weight (3, 8), bias (3,))" in message
    assert values(dst) == before and values(src) == src_before


def layer_norm(backend: str, eps: float, seed: int) -> Mod:
    rng = np.random.default_rng(seed)
    scale, bias = (
        rng.standard_normal(6).astype(np.float32),
        rng.standard_normal(6).astype(np.float32),
    )
    if backend == "torch":
        return Mod("LayerNorm", "layer_norm", settings={"eps": eps}, weight=scale, bias=bias)
    return Mod("LayerNorm", "layer_norm", settings={"eps": eps}, scale=scale, bias=bias)


def test_settings_that_differ():
    src, dst = seq(layer_norm("flax", 1e-5, 1)), seq(layer_norm("torch", 1e-6, 2))
    before = values(dst)
    want = r"eps is 1e-05 in the flax layer 0 \(LayerNorm\), 1e-06 in the torch layer 0"
    with pytest.raises(ut.PortError, match=want):
        ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    assert values(dst) == before
    report = ut.port(wrap(src, "flax"), wrap(dst, "torch"), strict=False)
    assert len(report.settings) == 1 and "eps" in report.settings[0]
    assert "settings that differ" in str(report)
    np.testing.assert_array_equal(leaf(dst, "0.weight"), leaf(src, "0.scale"))
    np.testing.assert_array_equal(leaf(dst, "0.bias"), leaf(src, "0.bias"))
    # equal up to float rounding is the same setting
    same = seq(layer_norm("torch", 1e-5 * (1 + 1e-9), 3))
    assert ut.port(wrap(src, "flax"), wrap(same, "torch")).settings == []


def test_a_source_tie_into_an_untied_destination():
    src, dst = mlp(shared=True), mlp(backend="torch", seed=10)
    before = values(dst)
    with pytest.raises(ut.PortError, match=r"tied in the source, separate in the destination"):
        ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    assert values(dst) == before
    report = ut.port(wrap(src, "flax"), wrap(dst, "torch"), strict=False)
    assert report.ties_split == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    for p in ("2", "4"):  # copied into each
        np.testing.assert_array_equal(leaf(dst, f"{p}.weight"), leaf(src, "2.kernel").T)
    # into a tied destination, the tie is kept
    tied = mlp(shared=True, backend="torch", seed=10)
    report = ut.port(wrap(src, "flax"), wrap(tied, "torch"))
    assert report.ties_kept == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    assert report.ties_split == [] and report.tensors == 6


def test_a_destination_tie_fed_two_different_values():
    src, dst = mlp(), mlp(shared=True, backend="torch", seed=10)
    before = values(dst)
    with pytest.raises(ut.PortError, match=r"one storage in the destination") as e:
        ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    assert "2.weight = 4.weight" in str(e.value)
    assert values(dst) == before
    # the same values on both sides of the tie: fine
    for name in ("kernel", "bias"):
        leaf(src, f"4.{name}")[...] = leaf(src, f"2.{name}")
    ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    np.testing.assert_array_equal(leaf(dst, "4.weight"), leaf(src, "4.kernel").T)


def test_dtypes_convert_only_when_lossless_unless_cast():
    src = seq(dense(4, 3, 1, dtype=np.float64))
    dst = seq(dense(4, 3, 2, "torch", dtype=np.float32))
    before = values(dst)
    with pytest.raises(ut.PortError, match=r"float64 in the source, float32 .*cast=True"):
        ut.port(wrap(src, "flax"), wrap(dst, "torch"))
    assert values(dst) == before
    ut.port(wrap(src, "flax"), wrap(dst, "torch"), cast=True)
    assert leaf(dst, "0.weight").dtype == np.float32
    np.testing.assert_array_equal(leaf(dst, "0.weight"), leaf(src, "0.kernel").T.astype(np.float32))
    wide = seq(dense(4, 3, 3, "torch", dtype=np.float64))
    ut.port(wrap(dst, "torch"), wrap(wide, "torch"))  # float32 -> float64: exact, no cast needed
    assert leaf(wide, "0.weight").dtype == np.float64
    np.testing.assert_array_equal(leaf(wide, "0.weight"), leaf(dst, "0.weight"))


C_IN, C, K, L_IN, OUT = 2, 3, 3, 6, 5
L = L_IN - K + 1  # the conv's output length


def conv_net(backend: str, seed: int) -> Mod:
    return seq(conv(C_IN, C, K, seed, backend), flatten(), dense(L * C, OUT, seed + 1, backend))


def run_channels_last(net: Mod, x: np.ndarray) -> np.ndarray:
    """Conv1d (valid) on (L_IN, C_IN), flatten (L, C) with channels fastest, dense."""
    kernel, b = leaf(net, "0.kernel"), leaf(net, "0.bias")
    y = np.stack([np.einsum("ki,kio->o", x[t : t + K], kernel) for t in range(L)]) + b
    return y.reshape(-1) @ leaf(net, "2.kernel") + leaf(net, "2.bias")


def run_channels_first(net: Mod, x: np.ndarray) -> np.ndarray:
    """PyTorch: Conv1d on (C_IN, L_IN), Flatten of (C, L), Linear."""
    weight, b = leaf(net, "0.weight"), leaf(net, "0.bias")
    y = np.stack([np.einsum("ik,oik->o", x[:, t : t + K], weight) for t in range(L)], 1)
    y = y + b[:, None]
    return leaf(net, "2.weight") @ y.reshape(-1) + leaf(net, "2.bias")


@pytest.mark.parametrize("backend", ["flax", "keras"])
def test_conv_flatten_dense_from_channels_last_to_torch_and_back(backend):
    src, dst = conv_net(backend, 1), conv_net("torch", 10)
    report = ut.port(wrap(src, backend), wrap(dst, "torch"))
    assert report.rules == {"path": 2}
    kernel, w = leaf(src, "0.kernel"), leaf(dst, "0.weight")
    dense_k, dense_w = leaf(src, "2.kernel"), leaf(dst, "2.weight")
    assert w.shape == (C, C_IN, K) and dense_w.shape == (OUT, C * L)
    for o, i, k in itertools.product(range(C), range(C_IN), range(K)):
        assert w[o, i, k] == kernel[k, i, o]
    # torch flattens (C, L): input c*L + l is the channels-last flatten's l*C + c
    for o, c, pos in itertools.product(range(OUT), range(C), range(L)):
        assert dense_w[o, c * L + pos] == dense_k[pos * C + c, o]
    x = np.random.default_rng(0).standard_normal((L_IN, C_IN))  # float64: both sides exact
    assert_close(run_channels_first(dst, x.T), run_channels_last(src, x))
    back = conv_net(backend, 20)
    ut.port(wrap(dst, "torch"), wrap(back, backend))
    for path in ("0.kernel", "0.bias", "2.kernel", "2.bias"):
        np.testing.assert_array_equal(leaf(back, path), leaf(src, path))


@pytest.mark.parametrize("backend", ["flax", "keras"])
def test_a_tied_dense_fed_by_a_flatten_at_one_use_only_is_refused(backend):
    """One kernel after the flatten (its input axis permuted for PyTorch) and after a dense
    layer (not permuted): no one torch weight computes both uses."""

    def net(backend: str, seed: int) -> Mod:
        shared = dense(L * C, L * C, seed + 1, backend)
        return seq(conv(C_IN, C, K, seed, backend), flatten(), shared, shared)

    src, dst = net(backend, 1), net("torch", 10)
    before = values(dst)
    with pytest.raises(ut.PortError, match=r"2\.weight: tied, and fed by a channels-last flatten"):
        ut.port(wrap(src, backend), wrap(dst, "torch"))
    assert values(dst) == before
    report = ut.port(wrap(src, backend), wrap(dst, "torch"), strict=False)
    assert "flatten at some of its uses only" in report.pairs[1].note
    ut.port(wrap(src, backend), wrap(net(backend, 20), backend))  # the same on both sides: fine
    untied = seq(conv(C_IN, C, K, 1, backend), flatten(), dense(L * C, L * C, 2, backend))
    ut.port(
        wrap(untied, backend),
        wrap(
            seq(conv(C_IN, C, K, 1, "torch"), flatten(), dense(L * C, L * C, 2, "torch")), "torch"
        ),
    )


def test_a_failure_halfway_through_the_writes_puts_everything_back():
    src, dst = mlp(), mlp(backend="torch", seed=10)
    adapter = FakeAdapter("torch")
    adapter.fail_after = 3
    before = values(dst)
    with pytest.raises(RuntimeError, match="injected failure"):
        ut.port(wrap(src, "flax"), ParamTree(adapter, dst))
    assert adapter.writes >= 3  # three were written before the failure, then undone
    assert values(dst) == before


# -- layers with codecs: canonical leaves computed from the whole layer ----------------------------

HID, N_IN = 3, 2


def linen_lstm(seed: int) -> Mod:
    return lstm(N_IN, HID, seed, "flax")


def torch_lstm(seed: int) -> Mod:
    return lstm(N_IN, HID, seed, "torch")


def test_a_per_gate_cell_to_torch_and_back():
    cell, torch = linen_lstm(1), torch_lstm(2)
    report = ut.port(wrap(seq(cell), "flax"), wrap(seq(torch), "torch"))
    assert report.rules == {"path": 1} and "one bias per gate" in report.pairs[0].note
    gates = "ifgo"
    np.testing.assert_array_equal(
        leaf(torch, "weight_ih_l0"), np.concatenate([leaf(cell, f"i{g}.kernel").T for g in gates])
    )
    np.testing.assert_array_equal(
        leaf(torch, "weight_hh_l0"), np.concatenate([leaf(cell, f"h{g}.kernel").T for g in gates])
    )
    # one bias per gate: torch gets it as bias_ih (as from Keras), bias_hh zero
    np.testing.assert_array_equal(
        leaf(torch, "bias_ih_l0"), np.concatenate([leaf(cell, f"h{g}.bias") for g in gates])
    )
    np.testing.assert_array_equal(leaf(torch, "bias_hh_l0"), np.zeros(4 * HID))
    # back from a torch LSTM with both biases: the state dense's bias holds their sum
    other = torch_lstm(3)
    ut.port(wrap(seq(other), "torch"), wrap(seq(cell), "flax"))
    b = leaf(other, "bias_ih_l0") + leaf(other, "bias_hh_l0")
    b_scale = np.abs(leaf(other, "bias_ih_l0")) + np.abs(leaf(other, "bias_hh_l0"))  # one rounding
    for n, g in enumerate(gates):
        rows = slice(n * HID, (n + 1) * HID)
        np.testing.assert_array_equal(
            leaf(cell, f"i{g}.kernel"), leaf(other, "weight_ih_l0")[rows].T
        )
        assert_close(leaf(cell, f"h{g}.bias"), b[rows], scale=b_scale[rows], ulps=1)


def test_keras_lstm_cell_leaves_under_cell():
    keras = lstm(N_IN, HID, 4, "keras")
    torch = torch_lstm(5)
    ut.port(wrap(seq(torch), "torch"), wrap(seq(keras), "keras"))
    np.testing.assert_array_equal(leaf(keras, "cell.kernel"), leaf(torch, "weight_ih_l0").T)
    np.testing.assert_array_equal(
        leaf(keras, "cell.recurrent_kernel"), leaf(torch, "weight_hh_l0").T
    )
    ih, hh = leaf(torch, "bias_ih_l0"), leaf(torch, "bias_hh_l0")
    assert_close(leaf(keras, "cell.bias"), ih + hh, scale=np.abs(ih) + np.abs(hh), ulps=1)


# (backend, kind, native kernel shape, torch weight shape): a channels-last layer whose output
# channels (C) feed a flatten and a dense layer. conv_transpose: Keras holds (k, out, in), Flax
# (k, in, out); depthwise: (k, in, multiplier), C = in * multiplier.
OTHER_CONVS = [
    ("flax", "conv_transpose", (K, C_IN, C), (C_IN, C, K)),
    ("keras", "conv_transpose", (K, C, C_IN), (C_IN, C, K)),
    ("keras", "depthwise_conv", (K, 1, C), (C, 1, K)),
]


@pytest.mark.parametrize("backend, kind, native, canonical", OTHER_CONVS)
def test_flatten_after_other_channels_last_convs(backend, kind, native, canonical):
    rng = np.random.default_rng(0)

    def net(backend: str, shape: tuple[int, ...]) -> Mod:
        name = "kernel" if backend != "torch" else "weight"
        layer = Mod("Conv", kind, **{name: rng.standard_normal(shape).astype(np.float32)})
        return seq(layer, flatten(), dense(L * C, OUT, 1, backend))

    src, dst = net(backend, native), net("torch", canonical)
    ut.port(wrap(src, backend), wrap(dst, "torch"))
    dense_k, dense_w = leaf(src, "2.kernel"), leaf(dst, "2.weight")
    for o, c, pos in itertools.product(range(OUT), range(C), range(L)):
        assert dense_w[o, c * L + pos] == dense_k[pos * C + c, o]


def test_a_keras_gru_resetting_before_the_matmul_is_not_ported_silently():
    rng = np.random.default_rng(0)
    cell = Mod(
        "GRUCell",
        kernel=rng.standard_normal((N_IN, 3 * HID)).astype(np.float32),
        recurrent_kernel=rng.standard_normal((HID, 3 * HID)).astype(np.float32),
    )
    keras = Mod("GRU", "gru", settings={"reset_after": False}, cell=cell)
    torch = Mod(
        "GRU",
        "gru",
        settings={"reset_after": True},  # what the torch adapter reports for nn.GRU
        weight_ih_l0=np.zeros((3 * HID, N_IN), np.float32),
        weight_hh_l0=np.zeros((3 * HID, HID), np.float32),
    )
    with pytest.raises(ut.PortError, match="reset_after"):
        ut.port(wrap(seq(keras), "keras"), wrap(seq(torch), "torch"))


def denses(backend: str, seed: int, **outputs: int) -> Mod:
    """A model of dense 8 -> n layers, one per keyword (name=n), in that order."""
    layers = {name: dense(8, n, seed + i, backend) for i, (name, n) in enumerate(outputs.items())}
    return Mod("Model", **layers)


def test_a_rename_that_matches_nothing_or_leads_nowhere_is_an_error():
    """A mistyped rename= used to be ignored, and the port matched by structure instead."""
    a, b = denses("flax", 1, x=8, y=8), denses("torch", 11, q=8, p=8)
    before = values(b)
    with pytest.raises(ut.PortError, match=r"rename '\^z\$' matches no source layer path") as e:
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={r"^x$": "p", r"^z$": "q"})
    assert "'x'" in str(e.value) and "nothing was written" in str(e.value)  # the paths there are
    with pytest.raises(
        ut.PortError,
        match=r"rename '\^x\$' maps the source layer 'x' to 'P', which is no destination layer",
    ):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={r"^x$": "P", r"^y$": "q"})
    with pytest.raises(ut.PortError, match="unterminated subpattern"):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={"(": "p"})
    with pytest.raises(ut.PortError, match="matches no source layer path"):  # strict or not
        ut.port(wrap(a, "flax"), wrap(b, "torch"), strict=False, rename={"^w$": "p"})
    assert values(b) == before
    # several patterns in a row: both are named where together they lead nowhere
    with pytest.raises(ut.PortError, match=r"rename '\^x\$', 'p' maps the source layer 'x'"):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename=[(r"^x$", "p"), ("p", "pp")])


def test_a_rename_onto_a_layer_that_does_not_fit_or_is_taken_is_an_error():
    """These used to fall back to matching by structure, with no word of the rename."""
    a, b = denses("flax", 1, x=8, y=4), denses("torch", 11, p=8, q=4)
    before = values(b)
    with pytest.raises(
        ut.PortError, match=r"rename '\^y\$' maps y \(flax Dense: weight \(4, 8\).* onto p \(torch"
    ) as e:
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={"^y$": "p"})
    assert "which does not fit it" in str(e.value)
    with pytest.raises(
        ut.PortError, match=r"maps 2 source layers \('x', 'y'\) onto the one destination layer 'p'"
    ):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), strict=False, rename={"^[xy]$": "p"})
    with pytest.raises(ut.PortError, match=r"is no replacement for it"):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={"^(x)$": r"\2"})
    with pytest.raises(ut.PortError, match=r"rename= must map regular expressions"):
        ut.port(wrap(a, "flax"), wrap(b, "torch"), rename="x=p")  # type: ignore[arg-type]
    assert values(b) == before
    report = ut.port(wrap(a, "flax"), wrap(b, "torch"), rename={"^x$": "p", "^y$": "q"})
    assert report.rules == {"rename": 2}


# -- a type no table knows, copied as stored: which tensors pair, by hand ------------------------
@pytest.mark.parametrize(
    ("src", "dst", "checked", "expected"),
    [
        ({"weight": (66, 32)}, {"embedding": (66, 32)}, False, {"embedding": "weight"}),  # OPT
        ({"cls_token": (1, 1, 32)}, {"cls_token": (1, 1, 32)}, False, {"cls_token": "cls_token"}),
        ({"logit_scale": ()}, {"logit_scale": ()}, False, {"logit_scale": "logit_scale"}),
        ({"a": (3,), "b": (3,)}, {"a": (3,), "b": (3,)}, False, {"a": "a", "b": "b"}),  # by name
        ({"a": (3,), "b": (3,)}, {"x": (3,), "y": (3,)}, False, None),  # neither says
        ({"w": (4, 4)}, {"w": (4, 4)}, False, None),  # a square matrix: stored transposed?
        ({"w": (4, 4)}, {"w": (4, 4)}, True, {"w": "w"}),  # the check will say
        ({"w": (2, 4, 4)}, {"w": (2, 4, 4)}, False, None),  # two axes of one length
        ({"w": (1, 4, 1)}, {"w": (1, 4, 1)}, False, {"w": "w"}),  # ones move nothing
        ({"w": (8, 4)}, {"w": (4, 8)}, False, None),  # transposed: no rule says so
        ({"w": (8, 4), "b": (8,)}, {"w": (8, 4)}, False, None),  # a tensor left over
        ({"num_batches_tracked": (), "w": (3,)}, {"w": (3,)}, False, {"w": "w"}),  # optional
    ],
)
def test_a_type_no_table_knows_is_copied_as_stored_only_where_its_shapes_say_so(
    src, dst, checked, expected
):
    from unitree._port import _as_stored

    assert _as_stored(src, dst, checked) == expected
