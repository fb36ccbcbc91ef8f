"""The layout table (unitree/layouts.py) checked against the frameworks' documented formulas.

Every transform and codec is proven on its own: the reference computations
below are written from the frameworks' documentation (PyTorch's nn.LSTM,
nn.GRU, nn.MultiheadAttention, ConvTranspose1d and grouped Conv1d; Keras's
LSTM, GRU and MultiHeadAttention; Flax's cells), in numpy, float64, and never
call unitree. A codec is right when the native formula with the converted
weights gives the torch formula's output, both ways.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from unitree_checks import assert_differ

import unitree as ut
from unitree.layouts import (
    CODECS,
    Depthwise,
    Flattened,
    FlattenedVector,
    Flipped,
    Permute,
    channels_last_kernel,
    rules,
)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_rng() -> None:
    """Each test draws the same values, whatever ran before it."""
    global RNG
    RNG = np.random.default_rng(0)


N_IN, H, T = 3, 4, 5  # input size, hidden size, sequence length
ATOL = 1e-9  # float64 throughout: the same sums in another order


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def split(a: np.ndarray, n: int, axis: int = 0) -> list[np.ndarray]:
    return np.split(a, n, axis=axis)


# -- Permute, Flattened, Depthwise, Flipped ------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5), (3, 2, 5), (3, 4, 2, 5), (2, 3, 4, 2, 5)])
def test_channels_last_kernel_is_torch_layout_and_round_trips(shape):
    a = rand(*shape)
    t = Permute(channels_last_kernel)
    c = t.to_canonical(a)
    *k, n_in, n_out = shape
    assert c.shape == t.shape(shape) == (n_out, n_in, *k)
    for idx in itertools.product(*map(range, shape)):  # a[*k, i, o] == c[o, i, *k]
        *ks, i, o = idx
        assert c[(o, i, *ks)] == a[idx]
    np.testing.assert_array_equal(t.to_native(c, shape), a)


def test_flattened_is_what_torch_linear_after_flatten_holds():
    h, w, c, out = 2, 3, 4, 5
    x = rand(h, w, c)  # a channels-last feature map
    kernel = rand(h * w * c, out)  # a dense layer on its (H, W, C) flatten
    y = x.reshape(-1) @ kernel
    t = Flattened(c)
    weight = t.to_canonical(kernel)
    assert weight.shape == t.shape(kernel.shape) == (out, c * h * w)
    # PyTorch: the (C, H, W) flatten, then weight @ x
    np.testing.assert_allclose(weight @ np.moveaxis(x, -1, 0).reshape(-1), y, atol=ATOL)
    np.testing.assert_array_equal(t.to_native(weight, kernel.shape), kernel)
    # not a plain transpose: the input axis is permuted
    assert_differ(kernel.T @ np.moveaxis(x, -1, 0).reshape(-1), y)


def test_flattened_vector_is_what_a_torch_norm_after_flatten_holds():
    h, w, c = 2, 3, 4
    x = rand(h, w, c)  # a channels-last feature map, flattened, then scaled feature by feature
    scale = rand(h * w * c)
    y = x.reshape(-1) * scale
    t = FlattenedVector(c)
    weight = t.to_canonical(scale)
    # PyTorch: the (C, H, W) flatten, then weight * x; the same numbers in its order
    np.testing.assert_array_equal(
        weight * np.moveaxis(x, -1, 0).reshape(-1),
        np.moveaxis(y.reshape(h, w, c), -1, 0).reshape(-1),
    )
    np.testing.assert_array_equal(t.to_native(weight, scale.shape), scale)
    assert not np.array_equal(weight, scale)


def depthwise_keras(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """TensorFlow's depthwise conv, 1-D, valid: out[t, c*M + m] = sum_j x[t+j, c] kernel[j, c, m]."""
    k, c, m = kernel.shape
    n = x.shape[0] - k + 1
    out = np.zeros((n, c * m))
    for t, ch, mult, j in itertools.product(range(n), range(c), range(m), range(k)):
        out[t, ch * m + mult] += x[t + j, ch] * kernel[j, ch, mult]
    return out


def grouped_torch(x: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """PyTorch's Conv1d with groups, valid: (C_in, L) input, weight (out, in/groups, k)."""
    n_out, per_group, k = weight.shape
    outs_per_group = n_out // groups
    n = x.shape[1] - k + 1
    out = np.zeros((n_out, n))
    for o, t in itertools.product(range(n_out), range(n)):
        g = o // outs_per_group
        window = x[g * per_group : (g + 1) * per_group, t : t + k]
        out[o, t] = np.sum(window * weight[o])
    return out


@pytest.mark.parametrize("shape", [(3, 2, 3), (2, 3, 2, 3)])
def test_depthwise_is_torch_grouped_weight(shape):
    kernel = rand(*shape)
    t = Depthwise()
    w = t.to_canonical(kernel)
    *k, c, m = shape
    assert w.shape == t.shape(shape) == (c * m, 1, *k)
    for idx in itertools.product(*map(range, shape)):  # kernel[*k, c, m] == W[c*M + m, 0, *k]
        *ks, ch, mult = idx
        assert w[(ch * m + mult, 0, *ks)] == kernel[idx]
    np.testing.assert_array_equal(t.to_native(w, shape), kernel)


def test_depthwise_conv_equals_grouped_conv():
    k, c, m, length = 3, 2, 3, 7
    kernel, x = rand(k, c, m), rand(length, c)
    w = Depthwise().to_canonical(kernel)
    got, want = grouped_torch(x.T, w, groups=c), depthwise_keras(x, kernel).T
    np.testing.assert_allclose(got, want, atol=ATOL)


def transposed_torch(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch's ConvTranspose1d, padding 0: (C_in, L) input, weight (in, out, k);
    y[o, i*s + j] += x[c, i] * weight[c, o, j]."""
    n_in, n_out, k = weight.shape
    length = x.shape[1]
    y = np.zeros((n_out, (length - 1) * stride + k))
    for c, o, i, j in itertools.product(range(n_in), range(n_out), range(length), range(k)):
        y[o, i * stride + j] += x[c, i] * weight[c, o, j]
    return y


def transposed_unflipped(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Flax's formulation: the input dilated by the stride, padded by k - 1 on both sides, and
    correlated with the (k, in, out) kernel as it is."""
    k, n_in, n_out = kernel.shape
    length = x.shape[1]
    dilated = np.zeros((n_in, (length - 1) * stride + 1))
    dilated[:, ::stride] = x
    padded = np.pad(dilated, ((0, 0), (k - 1, k - 1)))
    n = padded.shape[1] - k + 1
    y = np.zeros((n_out, n))
    for t in range(n):
        y[:, t] = np.einsum("ck,kco->o", padded[:, t : t + k], kernel)
    return y


@pytest.mark.parametrize("stride", [1, 2])
def test_flipped_is_torch_transposed_conv(stride):
    n_in, n_out, k, length = 2, 3, 3, 4
    weight, x = rand(n_in, n_out, k), rand(n_in, length)
    t = Flipped()
    native_shape = (k, n_in, n_out)
    assert t.shape(native_shape) == weight.shape
    kernel = t.to_native(weight, native_shape)
    assert kernel.shape == native_shape
    np.testing.assert_array_equal(t.to_canonical(kernel), weight)
    want = transposed_torch(x, weight, stride)
    np.testing.assert_allclose(transposed_unflipped(x, kernel, stride), want, atol=ATOL)
    # the flip is needed: the kernel merely transposed gives other results
    plain = weight.transpose(2, 0, 1)
    assert_differ(transposed_unflipped(x, plain, stride), want)


# -- recurrent cells, in PyTorch's formulation --------------------------------------------------


def torch_lstm(c: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """nn.LSTM: gates i, f, g, o; c' = f*c + i*g; h' = o*tanh(c'). The h of every step."""
    h, cell, out = np.zeros(H), np.zeros(H), []
    for x in xs:
        z = c["weight_ih_l0"] @ x + c.get("bias_ih_l0", 0) + c["weight_hh_l0"] @ h
        z = z + c.get("bias_hh_l0", 0)
        i, f, g, o = split(z, 4)
        cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(cell)
        out.append(h)
    return np.array(out)


def torch_gru(c: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """nn.GRU: r, z, n; n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); h' = (1-z)*n + z*h."""
    h, out = np.zeros(H), []
    for x in xs:
        gi = c["weight_ih_l0"] @ x + c.get("bias_ih_l0", 0)
        gh = c["weight_hh_l0"] @ h + c.get("bias_hh_l0", 0)
        (ir, iz, i_n), (hr, hz, hn) = split(gi, 3), split(gh, 3)
        r, z = sigmoid(ir + hr), sigmoid(iz + hz)
        n = np.tanh(i_n + r * hn)
        h = (1 - z) * n + z * h
        out.append(h)
    return np.array(out)


def lstm_step(i: np.ndarray, f: np.ndarray, g: np.ndarray, o: np.ndarray, cell: np.ndarray):
    cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(cell), cell


def keras_lstm(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """keras.layers.LSTM: z = x @ kernel + h @ recurrent_kernel + bias; blocks i, f, c, o."""
    h, cell, out = np.zeros(H), np.zeros(H), []
    for x in xs:
        z = x @ n["kernel"] + h @ n["recurrent_kernel"] + n.get("bias", 0)
        h, cell = lstm_step(*split(z, 4), cell)
        out.append(h)
    return np.array(out)


def dense_out(n: dict[str, np.ndarray], name: str, x: np.ndarray) -> np.ndarray:
    """A Flax dense sub-layer as the tree shows it: weight (out, in) or kernel (in, out)."""
    y = n[f"{name}.weight"] @ x if f"{name}.weight" in n else x @ n[f"{name}.kernel"]
    return y + n.get(f"{name}.bias", 0)


def linen_lstm(n: dict[str, np.ndarray], xs: np.ndarray, f_in: str = "if") -> np.ndarray:
    """linen.LSTMCell (nnx.LSTMCell: the input forget dense is ``if_``): one dense per gate,
    ii, if, ig, io without bias on the input, hi, hf, hg, ho with bias on the state."""
    h, cell, out = np.zeros(H), np.zeros(H), []
    for x in xs:
        gates = [
            dense_out(n, i, x) + dense_out(n, hh, h)
            for i, hh in (("ii", "hi"), (f_in, "hf"), ("ig", "hg"), ("io", "ho"))
        ]
        h, cell = lstm_step(*gates, cell)
        out.append(h)
    return np.array(out)


def nnx_optimized_lstm(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """nnx.OptimizedLSTMCell: y = dense_i(x) + dense_h(h) (bias on dense_h); split i, f, g, o."""
    h, cell, out = np.zeros(H), np.zeros(H), []
    for x in xs:
        y = dense_out(n, "dense_i", x) + dense_out(n, "dense_h", h)
        h, cell = lstm_step(*split(y, 4), cell)
        out.append(h)
    return np.array(out)


def keras_gru(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """keras.layers.GRU(reset_after=True): blocks z, r, h; bias (2, 3H): input, recurrent rows;
    hh = tanh(x_h + r * (h @ rk_h + b_rec_h)); h' = z*h + (1-z)*hh."""
    h, out = np.zeros(H), []
    b_in, b_rec = n["bias"]
    for x in xs:
        xz, xr, xh = split(x @ n["kernel"] + b_in, 3)
        rz, rr, rh = split(h @ n["recurrent_kernel"] + b_rec, 3)
        z, r = sigmoid(xz + rz), sigmoid(xr + rr)
        hh = np.tanh(xh + r * rh)
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.array(out)


def keras_gru_reset_before(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """keras.layers.GRU(reset_after=False): bias (3H,); hh = tanh(x_h + (r*h) @ rk_h)."""
    h, out = np.zeros(H), []
    for x in xs:
        xz, xr, xh = split(x @ n["kernel"] + n["bias"], 3)
        rkz, rkr, rkh = split(n["recurrent_kernel"], 3, axis=1)
        z, r = sigmoid(xz + h @ rkz), sigmoid(xr + h @ rkr)
        hh = np.tanh(xh + (r * h) @ rkh)
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.array(out)


def linen_gru(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """linen.GRUCell: ir, iz, in with bias; hr, hz without; hn with bias;
    n = tanh(in(x) + r * hn(h)); h' = (1-z)*n + z*h."""
    h, out = np.zeros(H), []
    for x in xs:
        r = sigmoid(dense_out(n, "ir", x) + dense_out(n, "hr", h))
        z = sigmoid(dense_out(n, "iz", x) + dense_out(n, "hz", h))
        cand = np.tanh(dense_out(n, "in", x) + r * dense_out(n, "hn", h))
        h = (1 - z) * cand + z * h
        out.append(h)
    return np.array(out)


def nnx_gru(n: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """nnx.GRUCell: dense_i (bias), dense_h (no bias), each split r, z, n; n = tanh(xi_n + r*hh_n)."""
    h, out = np.zeros(H), []
    for x in xs:
        xr, xz, xn = split(dense_out(n, "dense_i", x), 3)
        hr, hz, hn = split(dense_out(n, "dense_h", h), 3)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        h = (1 - z) * np.tanh(xn + r * hn) + z * h
        out.append(h)
    return np.array(out)


def torch_weights(gates: int, bias: bool = True) -> dict[str, np.ndarray]:
    c = {"weight_ih_l0": rand(gates * H, N_IN), "weight_hh_l0": rand(gates * H, H)}
    if bias:
        c |= {"bias_ih_l0": rand(gates * H), "bias_hh_l0": rand(gates * H)}
    return c


def per_gate(inputs: str, states: str, biased: str, spelling: str) -> dict[str, np.ndarray]:
    """Native leaves of a cell made of one dense per gate: ``spelling`` "weight" (canonical,
    (out, in), as the tree shows inner dense layers) or "kernel" (raw, (in, out))."""

    def leaf(name: str, n_in: int) -> dict[str, np.ndarray]:
        w = rand(H, n_in)
        out = {f"{name}.weight": w} if spelling == "weight" else {f"{name}.kernel": w.T}
        return out | ({f"{name}.bias": rand(H)} if name in biased.split() else {})

    out: dict[str, np.ndarray] = {}
    for name in inputs.split():
        out |= leaf(name, N_IN)
    for name in states.split():
        out |= leaf(name, H)
    return out


def fused(gates: int, spelling: str, bias_on: str) -> dict[str, np.ndarray]:
    """NNX's fused cells: dense_i (N_IN -> gates*H), dense_h (H -> gates*H)."""
    out: dict[str, np.ndarray] = {}
    for name, n_in in (("dense_i", N_IN), ("dense_h", H)):
        w = rand(gates * H, n_in)
        out |= {f"{name}.weight": w} if spelling == "weight" else {f"{name}.kernel": w.T}
    return out | {f"{bias_on}.bias": rand(gates * H)}


# name: (codec key, native formula, torch formula, native leaves given the dense spelling)
CELLS = {
    "keras_lstm": (
        ("keras", "lstm"),
        keras_lstm,
        torch_lstm,
        lambda s: {
            "kernel": rand(N_IN, 4 * H),
            "recurrent_kernel": rand(H, 4 * H),
            "bias": rand(4 * H),
        },
    ),
    "keras_lstm_no_bias": (
        ("keras", "lstm"),
        keras_lstm,
        torch_lstm,
        lambda s: {"kernel": rand(N_IN, 4 * H), "recurrent_kernel": rand(H, 4 * H)},
    ),
    "linen_lstm": (
        ("flax", "lstm"),
        linen_lstm,
        torch_lstm,
        lambda s: per_gate("ii if ig io", "hi hf hg ho", "hi hf hg ho", s),
    ),
    "nnx_lstm": (
        ("flax", "lstm"),
        lambda n, xs: linen_lstm(n, xs, f_in="if_"),
        torch_lstm,
        lambda s: per_gate("ii if_ ig io", "hi hf hg ho", "hi hf hg ho", s),
    ),
    "nnx_optimized_lstm": (
        ("flax", "lstm"),
        nnx_optimized_lstm,
        torch_lstm,
        lambda s: fused(4, s, bias_on="dense_h"),
    ),
    "keras_gru": (
        ("keras", "gru"),
        keras_gru,
        torch_gru,
        lambda s: {
            "kernel": rand(N_IN, 3 * H),
            "recurrent_kernel": rand(H, 3 * H),
            "bias": rand(2, 3 * H),
        },
    ),
    "linen_gru": (
        ("flax", "gru"),
        linen_gru,
        torch_gru,
        lambda s: per_gate("ir iz in", "hr hz hn", "ir iz in hn", s),
    ),
    "nnx_gru": (
        ("flax", "gru"),
        nnx_gru,
        torch_gru,
        lambda s: fused(3, s, bias_on="dense_i"),
    ),
}


def _cases() -> list:
    """Each cell, with its inner dense layers shown canonical (.weight) or raw (.kernel), and
    under ``cell.`` (Keras's LSTM layer, Flax's RNN) or not."""
    out = []
    for name in CELLS:
        for spelling in ("weight", "kernel") if not name.startswith("keras") else ("-",):
            for prefix in ("", "cell."):
                out.append(pytest.param(name, spelling, prefix, id=f"{name}-{spelling}-{prefix}"))
    return out


def prefixed(d: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in d.items()}


def unprefixed(d: dict, prefix: str) -> dict:
    assert all(k.startswith(prefix) for k in d)
    return {k[len(prefix) :]: v for k, v in d.items()}


@pytest.mark.parametrize("name, spelling, prefix", _cases())
def test_native_cell_to_canonical_computes_as_torch(name, spelling, prefix):
    key, native_fn, torch_fn, make = CELLS[name]
    codec, native, xs = CODECS[key], make(spelling), rand(T, N_IN)
    canonical = codec.to_canonical(prefixed(native, prefix))
    gates = 4 if "lstm" in name else 3
    shapes = {k: v.shape for k, v in canonical.items()}
    assert list(canonical)[:2] == ["weight_ih_l0", "weight_hh_l0"]
    assert shapes["weight_ih_l0"] == (gates * H, N_IN) and shapes["weight_hh_l0"] == (gates * H, H)
    assert codec.shapes({prefix + k: v.shape for k, v in native.items()}) == shapes
    np.testing.assert_allclose(torch_fn(canonical, xs), native_fn(native, xs), atol=ATOL)


@pytest.mark.parametrize("name, spelling, prefix", _cases())
def test_torch_cell_to_native_computes_the_same(name, spelling, prefix):
    key, native_fn, torch_fn, make = CELLS[name]
    codec, like, xs = CODECS[key], make(spelling), rand(T, N_IN)
    shapes = {prefix + k: v.shape for k, v in like.items()}
    canonical = torch_weights(4 if "lstm" in name else 3, bias="no_bias" not in name)
    if name == "nnx_gru":  # no recurrent bias to hold PyTorch's b_hn: exact only when it is zero
        canonical["bias_hh_l0"][2 * H :] = 0
    native = codec.to_native(canonical, shapes)
    assert {k: v.shape for k, v in native.items()} == shapes
    native = unprefixed(native, prefix)
    np.testing.assert_allclose(native_fn(native, xs), torch_fn(canonical, xs), atol=ATOL)
    # and back: the same function (a folded bias comes back as bias_ih + bias_hh, bias_hh 0)
    again = codec.to_canonical(prefixed(native, prefix))
    np.testing.assert_allclose(torch_fn(again, xs), torch_fn(canonical, xs), atol=ATOL)


def test_nnx_gru_refuses_a_recurrent_candidate_bias():
    codec = CODECS[("flax", "gru")]
    shapes = {k: v.shape for k, v in fused(3, "weight", bias_on="dense_i").items()}
    canonical = torch_weights(3)  # bias_hh_l0[2H:] (b_hn) is not zero
    # it matters: with b_hn folded into the input bias, r * b_hn is lost
    folded = dict(canonical, bias_ih_l0=canonical["bias_ih_l0"] + canonical["bias_hh_l0"])
    folded["bias_hh_l0"] = np.zeros(3 * H)
    xs = rand(T, N_IN)
    assert_differ(torch_gru(folded, xs), torch_gru(canonical, xs))
    with pytest.raises(ut.StateDictError, match="bias_hh_l0"):
        codec.to_native(canonical, shapes)


def test_keras_gru_reset_before_is_refused():
    """reset_after=False (bias (3H,)) resets h before the recurrent matmul: no torch GRU does."""
    native = {"kernel": rand(N_IN, 3 * H), "recurrent_kernel": rand(H, 3 * H), "bias": rand(3 * H)}
    xs = rand(T, N_IN)

    def torch_order(a: np.ndarray) -> np.ndarray:  # Keras's z, r, h blocks as r, z, n
        z, r, h = split(a, 3)
        return np.concatenate([r, z, h])

    # the closest torch GRU (same blocks, the bias on the input side) computes otherwise
    closest = {
        "weight_ih_l0": torch_order(native["kernel"].T),
        "weight_hh_l0": torch_order(native["recurrent_kernel"].T),
        "bias_ih_l0": torch_order(native["bias"]),
        "bias_hh_l0": np.zeros(3 * H),
    }
    assert_differ(torch_gru(closest, xs), keras_gru_reset_before(native, xs))
    with pytest.raises(ut.StateDictError, match="reset_after"):
        CODECS[("keras", "gru")].to_canonical(native)


# -- attention --------------------------------------------------------------------------------

E, HEADS, D = 6, 2, 3  # embedding, heads, head size


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def torch_attention(c: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """nn.MultiheadAttention on (T, E): in_proj_weight rows q; k; v, heads are column blocks of
    the projections, scaled dot product per head, the heads concatenated, then out_proj."""
    w, b = c["in_proj_weight"], c.get("in_proj_bias", np.zeros(3 * E))
    q, k, v = (x @ wi.T + bi for wi, bi in zip(split(w, 3), split(b, 3)))
    heads = []
    for h in range(HEADS):
        cols = slice(h * D, (h + 1) * D)
        scores = softmax(q[:, cols] @ k[:, cols].T / np.sqrt(D))
        heads.append(scores @ v[:, cols])
    return np.concatenate(heads, axis=1) @ c["out_proj.weight"].T + c.get("out_proj.bias", 0)


def projected_attention(n: dict[str, np.ndarray], x: np.ndarray, out: str) -> np.ndarray:
    """Keras's MultiHeadAttention / Flax's MultiHeadDotProductAttention on (T, E): kernels
    (E, heads, D), biases (heads, D), the output kernel (heads, D, E)."""

    def proj(name: str) -> np.ndarray:
        return np.einsum("te,ehd->thd", x, n[f"{name}.kernel"]) + n.get(f"{name}.bias", 0)

    q, k, v = proj("query"), proj("key"), proj("value")
    scores = softmax(np.einsum("thd,shd->hts", q, k) / np.sqrt(D))
    heads = np.einsum("hts,shd->thd", scores, v)
    return np.einsum("thd,hde->te", heads, n[f"{out}.kernel"]) + n.get(f"{out}.bias", 0)


def attention_native(out: str, bias: bool) -> dict[str, np.ndarray]:
    n = {f"{p}.kernel": rand(E, HEADS, D) for p in ("query", "key", "value")}
    n[f"{out}.kernel"] = rand(HEADS, D, E)
    if bias:
        n |= {f"{p}.bias": rand(HEADS, D) for p in ("query", "key", "value")}
        n[f"{out}.bias"] = rand(E)
    return n


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend, out", [("keras", "attention_output"), ("flax", "out")])
def test_attention_codec_both_ways(backend, out, bias):
    codec, x = CODECS[(backend, "attention")], rand(T, E)
    native = attention_native(out, bias)
    canonical = codec.to_canonical(native)
    want = {"in_proj_weight": (3 * E, E), "out_proj.weight": (E, E)}
    if bias:
        want |= {"in_proj_bias": (3 * E,), "out_proj.bias": (E,)}
    shapes = {k: v.shape for k, v in canonical.items()}
    assert shapes == want and codec.shapes({k: v.shape for k, v in native.items()}) == want
    got, want = torch_attention(canonical, x), projected_attention(native, x, out)
    np.testing.assert_allclose(got, want, atol=ATOL)
    # random torch weights -> native: the per-projection formula gives torch's output
    c = {"in_proj_weight": rand(3 * E, E), "out_proj.weight": rand(E, E)}
    if bias:
        c |= {"in_proj_bias": rand(3 * E), "out_proj.bias": rand(E)}
    back = codec.to_native(c, {k: v.shape for k, v in native.items()})
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in native.items()}
    np.testing.assert_allclose(projected_attention(back, x, out), torch_attention(c, x), atol=ATOL)


def test_torch_attention_is_one_layer_as_it_is():
    c = {"in_proj_weight": rand(3 * E, E), "out_proj.weight": rand(E, E)}
    codec = CODECS[("torch", "attention")]
    assert codec.to_canonical(c) == c and codec.to_native(c, {}) == c


# -- Gluon's fused recurrent leaves ---------------------------------------------------------------


def torch_rnn_order(layers: int, bidirectional: bool) -> list[str]:
    """nn.LSTM's parameters, as PyTorch lists them."""
    out = []
    for layer in range(layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            out += [
                f"weight_ih_l{layer}{suffix}",
                f"weight_hh_l{layer}{suffix}",
                f"bias_ih_l{layer}{suffix}",
                f"bias_hh_l{layer}{suffix}",
            ]
    return out


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gluon_recurrent_renames_in_torch_order(kind):
    def gluon(layers, directions):
        return [
            f"{d}{layer}_{w}_{kind_}"
            for layer in range(layers)
            for d in directions
            for w in ("i2h", "h2h")
            for kind_ in ("weight", "bias")
        ]

    table = rules("gluon", kind, gluon(2, "lr"))
    assert table["l0_i2h_weight"].canonical == "weight_ih_l0"
    assert table["r1_h2h_bias"].canonical == "bias_hh_l1_reverse"
    assert table["l1_h2h_weight"].canonical == "weight_hh_l1"
    assert table["r0_i2h_bias"].canonical == "bias_ih_l0_reverse"
    assert all(rule.transform is None for rule in table.values())  # same layout, same gate order
    # a 2-layer bidirectional layer's leaves, in the table's order, are torch's order
    assert [rule.canonical for rule in table.values()] == torch_rnn_order(2, bidirectional=True)
    unidirectional = rules("gluon", kind, gluon(2, "l"))
    assert [r.canonical for r in unidirectional.values()] == torch_rnn_order(2, bidirectional=False)
    # as many layers as the model has: the 17th and later are renamed too (a table of 16 was not)
    deep = rules("gluon", kind, gluon(20, "lr"))
    assert [rule.canonical for rule in deep.values()] == torch_rnn_order(20, bidirectional=True)
    projected = rules("gluon", kind, ["l17_h2r_weight", "r17_h2r_weight"])
    assert [r.canonical for r in projected.values()] == ["weight_hr_l17", "weight_hr_l17_reverse"]
    assert rules("gluon", kind, ["l0_i2h_kernel"]) == {}  # not Gluon's: no rule, native name kept


# -- the decisions of a read, as pure functions: plan (leaf order and names) and flatten --------
@pytest.mark.parametrize(
    ("backend", "kind", "names", "want"),
    [
        # flax/keras dense: weight before bias whatever the native order, both renamed
        ("flax", "dense", ("bias", "kernel"), [(1, "weight"), (0, "bias")]),
        ("keras", "dense", ("kernel", "bias"), [(0, "weight"), (1, "bias")]),
        # a leaf no rule names keeps its name and comes after the known ones, in native order
        (
            "flax",
            "batch_norm",
            ("extra", "var", "scale"),
            [(2, "weight"), (1, "running_var"), (0, "extra")],
        ),
        # no rules: native names and order
        ("torch", "dense", ("weight", "bias"), [(0, "weight"), (1, "bias")]),
        ("flax", None, ("b", "a"), [(0, "b"), (1, "a")]),
    ],
)
def test_plan_orders_and_names_a_layers_leaves(backend, kind, names, want):
    from unitree.layouts import plan

    got = plan(names, rules(backend, kind, names))
    assert [(i, name) for i, name, _ in got] == want


# -- the layout between layers (channels-last backends): layouts.decide and after_step --------
# A model is a list: ("conv", kernel[, "channels_first"]), ("conv_transpose", kernel),
# ("dense", kernel), ("norm", size) with Keras's native shapes, or a Step. follow() runs the
# pure functions a read runs, in order, and marks each leaf of each layer: "-" (PyTorch's order
# already), "Flattened(16)", "FlattenedVector(16)", "Unflattened(8)", or "?" and the default
# candidate where the layout is unknown.
CONV = ("conv", (3, 3, 4, 16))  # 16 channels out of a 3x3 map: its flatten has 144 features
CONV_CF = ("conv", (3, 3, 4, 16), "channels_first")
DENSE = ("dense", (144, 10))
TO_MAP = ("dense", (64, 7 * 7 * 8))  # a dense layer whose output is reshaped to 7x7x8
CONV_8 = ("conv", (3, 3, 8, 4))  # a conv reading 8 channels


def _mark(rule):
    t = None if rule is None else rule.transform
    if t is None or type(t).__name__ == "Permute":
        return "-"
    return f"{type(t).__name__}({t.channels})"


def follow(*items):
    from unitree.layouts import NONE, Step, after_step, decide, mirrored, needs_units, plan

    flow, pending, out, units = NONE, {}, {}, {}

    def filled(flow):  # as a read does: a dense output's size, read once something needs it
        return flow._replace(feeds=tuple(f._replace(units=units[f.token]) for f in flow.feeds))

    for pos, item in enumerate(items):
        if isinstance(item, Step):
            flow, mirrors = after_step(
                filled(flow) if needs_units(flow, step=item) else flow, item, f"step {pos}"
            )
        else:
            kind, shape, *extra = item
            if kind == "norm":
                kind, names, shapes = "layer_norm", ("gamma", "beta"), [(shape,), (shape,)]
            else:
                bias = shape[-2 if kind == "conv_transpose" else -1]
                names, shapes = ("kernel", "bias"), [shape, (bias,)]
            if needs_units(flow, kind):
                flow = filled(flow)
            layer = plan(names, rules("keras", kind, names))
            d = decide(
                flow, kind, layer, shapes, repr(str(pos)), pos + 1, "channels_first" in extra
            )
            flow, mirrors = d.flow, d.mirrors
            if kind == "dense":
                units[pos + 1] = shape[1]
            out[pos] = {name: _mark(rule) for _, name, rule in d.layer}
            for j, u in d.unknown:
                _, name, rule = d.layer[j]
                assert u.candidates[u.default] is rule  # the default is the rule in use
                assert str(pos) in u.reason  # names the layer
                out[pos][name] = "?" + u.default
            if d.pend:
                pending.setdefault(d.flow.feeds[0].token, []).extend(
                    (pos, d.layer[j][1], d.layer[j][2], len(shapes[d.layer[j][0]])) for j in d.pend
                )
        for m in mirrors:
            for pos, name, rule, ndim in pending.pop(m.feed.token, []):
                mark = _mark(mirrored(rule, ndim, m.channels))
                out[pos][name] = "?channels_first" if m.reason else mark
    return out


def _steps():
    from unitree.layouts import CONCAT, FLATTEN, KEEP, MAP, PERMUTE, POOL, RESHAPE, UNKNOWN, Step

    return Step, CONCAT, FLATTEN, KEEP, MAP, PERMUTE, POOL, RESHAPE, UNKNOWN


S, CONCAT, FLATTEN, KEEP, MAP, PERMUTE, POOL, RESHAPE, UNKNOWN = _steps()
FLAT16, PLAIN = {"weight": "Flattened(16)", "bias": "-"}, {"weight": "-", "bias": "-"}
ASK_CL = {"weight": "?channels_last", "bias": "-"}
FLAT8 = {"weight": "Flattened(8)", "bias": "-"}
CL, CF = "channels_last", "channels_first"

LAYOUT_CASES = {
    # Keras's Flatten of a conv output: (H, W, C), channels fastest
    "flatten": ((CONV, S(FLATTEN), DENSE), {2: FLAT16}),
    # Permute((3, 1, 2)) first: flattened as PyTorch flattens, nothing to permute
    "permute_then_flatten": ((CONV, S(PERMUTE, (3, 1, 2)), S(FLATTEN), DENSE), {3: PLAIN}),
    # a channels_first conv's own order is PyTorch's ...
    "channels_first_conv": ((CONV_CF, S(FLATTEN), DENSE), {2: PLAIN}),
    # ... but Flatten(data_format="channels_first") moves its channels last first (Keras's
    # Flatten.call), so that the model flattens as its channels-last twin does
    "flatten_channels_first_of_channels_first_conv": (
        (CONV_CF, S(FLATTEN, data_format=CF), DENSE),
        {2: FLAT16},
    ),
    # on a channels-last map that moves H last: (W, C, H), neither order
    "flatten_channels_first_of_channels_last_conv": (
        (CONV, S(FLATTEN, data_format=CF), DENSE),
        {2: ASK_CL},
    ),
    # a 1-d map (L, C): moving L last gives (C, L), PyTorch's order
    "flatten_channels_first_1d": (
        (("conv", (3, 4, 16)), S(FLATTEN, data_format=CF), ("dense", (80, 10))),
        {2: PLAIN},
    ),
    # a global pooling: one axis left, no flatten of a map
    "global_pooling": ((CONV, S(POOL), ("dense", (16, 10))), {2: PLAIN}),
    # pooling over the spatial axes, dropout: the layout stays
    "pooling_and_dropout": (
        (CONV, S(KEEP, data_format=CL), S(KEEP), S(FLATTEN), DENSE),
        {4: FLAT16},
    ),
    "pooling_that_takes_another_axis_for_channels": (
        (CONV, S(KEEP, data_format=CF), S(FLATTEN), DENSE),
        {3: ASK_CL},
    ),
    # a Lambda (or a custom call): unknown, the default the channels-last flatten
    "lambda": ((CONV, S(UNKNOWN, why="a Lambda layer"), S(FLATTEN), DENSE), {3: ASK_CL}),
    # ... unless the dense layer reads the channels alone (a pooling inside the lambda)
    "lambda_then_channels": ((CONV, S(UNKNOWN), ("dense", (16, 10))), {2: PLAIN}),
    # ... or something that is no multiple of the channels
    "lambda_then_other": ((CONV, S(UNKNOWN), ("dense", (20, 10))), {2: PLAIN}),
    # a norm over the flattened features: its vectors in that order too
    "norm_on_the_flatten": (
        (CONV, S(FLATTEN), ("norm", 144), DENSE),
        {2: {"weight": "FlattenedVector(16)", "bias": "FlattenedVector(16)"}, 3: FLAT16},
    ),
    "norm_on_the_channels": ((CONV, ("norm", 16), S(FLATTEN), DENSE), {1: PLAIN, 3: FLAT16}),
    "norm_after_a_lambda": (
        (CONV, S(UNKNOWN), ("norm", 144), DENSE),
        {2: {"weight": "?channels_last", "bias": "?channels_last"}, 3: ASK_CL},
    ),
    # a reshape to one axis is a flatten; merging the spatial axes in order keeps the order
    "reshape_to_one_axis": ((CONV, S(RESHAPE, (-1,)), DENSE), {2: FLAT16}),
    "reshape_merging_spatial_axes": ((CONV, S(RESHAPE, (9, 16)), S(FLATTEN), DENSE), {3: FLAT16}),
    "reshape_mixing_the_channels": (
        (CONV, S(RESHAPE, (16, 9)), S(FLATTEN), DENSE),
        {3: ASK_CL},
    ),
    "permute_of_the_spatial_axes": (
        (CONV, S(PERMUTE, (2, 1, 3)), S(FLATTEN), DENSE),
        {3: ASK_CL},
    ),
    "no_conv_before": ((S(FLATTEN), DENSE), {1: PLAIN}),
    # a conv the tables do not know (Keras's SeparableConv2D) starts a map of its own
    "a_new_map": ((S(MAP, (8, 2, 3)), S(FLATTEN), ("dense", (72, 10))), {2: FLAT8}),
    "a_new_map_after_a_conv": (
        (CONV, S(MAP, (8, 2, 16)), S(FLATTEN), ("dense", (72, 10))),
        {3: FLAT8},
    ),
    "a_new_map_after_a_lambda": (
        (CONV, S(UNKNOWN), S(MAP, (8, 2, 16)), S(FLATTEN), ("dense", (72, 10))),
        {4: FLAT8},
    ),
    # the mirror: a dense layer whose output a reshape makes a (H, W, C) map a conv reads
    "dense_reshape_conv": (
        (TO_MAP, S(RESHAPE, (7, 7, 8)), CONV_8),
        {0: {"weight": "Unflattened(8)", "bias": "FlattenedVector(8)"}},
    ),
    "dense_reshape_with_a_free_axis": (
        (TO_MAP, S(RESHAPE, (-1, 7, 8)), CONV_8),
        {0: {"weight": "Unflattened(8)", "bias": "FlattenedVector(8)"}},
    ),
    # reshaped (C, H, W) then permuted to (H, W, C): PyTorch's order
    "dense_reshape_chw_permute_conv": (
        (TO_MAP, S(RESHAPE, (8, 7, 7)), S(PERMUTE, (2, 3, 1)), CONV_8),
        {0: PLAIN},
    ),
    "dense_reshape_chw_channels_first_conv": (
        (TO_MAP, S(RESHAPE, (8, 7, 7)), ("conv", (3, 3, 8, 4), "channels_first")),
        {0: PLAIN},
    ),
    # a norm on the dense output, an upsampling, a transposed conv: DCGAN's generator
    "dense_norm_reshape_upsample_conv_transpose": (
        (
            TO_MAP,
            ("norm", 392),
            S(RESHAPE, (7, 7, 8)),
            S(KEEP, data_format=CL),
            ("conv_transpose", (3, 3, 4, 8)),
        ),
        {
            0: {"weight": "Unflattened(8)", "bias": "FlattenedVector(8)"},
            1: {"weight": "FlattenedVector(8)", "bias": "FlattenedVector(8)"},
        },
    ),
    # a global pooling reads the channels last too
    "dense_reshape_pool": (
        (TO_MAP, S(RESHAPE, (7, 7, 8)), S(POOL), ("dense", (8, 10))),
        {0: {"weight": "Unflattened(8)", "bias": "FlattenedVector(8)"}},
    ),
    "dense_reshape_conv1d": (
        (TO_MAP, S(RESHAPE, (7, 56)), ("conv", (3, 56, 4))),
        {0: {"weight": "Unflattened(56)", "bias": "FlattenedVector(56)"}},
    ),
    "dense_lambda_conv": (
        (TO_MAP, S(UNKNOWN), CONV_8),
        {0: {"weight": "?channels_first", "bias": "?channels_first"}},
    ),
    "dense_reshape_swapped_spatial_axes": (
        (TO_MAP, S(RESHAPE, (7, 7, 8)), S(PERMUTE, (2, 1, 3)), CONV_8),
        {0: {"weight": "?channels_first", "bias": "?channels_first"}},
    ),
    # a reshape of more than the dense output (it ran on a sequence): not followed
    "dense_reshape_of_more": (
        (TO_MAP, S(RESHAPE, (14, 7, 8)), CONV_8),
        {0: {"weight": "?channels_first", "bias": "?channels_first"}},
    ),
    # as many features as the conv's channels: no spatial axes, nothing to permute
    "dense_to_the_channels": ((("dense", (64, 8)), S(UNKNOWN), CONV_8), {0: PLAIN}),
    # read by a dense layer, which sees the same order in both frameworks
    "dense_reshape_dense": ((TO_MAP, S(RESHAPE, (49, 8)), ("dense", (8, 3))), {0: PLAIN}),
}


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_layout_between_layers_from_a_table(case):
    model, want = LAYOUT_CASES[case]
    got = follow(*model)
    assert {pos: got[pos] for pos in want} == want


def test_the_decision_of_a_read_ends_at_any_other_kind_with_leaves():
    from unitree.layouts import NONE, Flow, decide

    flow = Flow("flat", 16, (1, 2, 0), origin="'0'")
    assert decide(flow, "embedding", [], [], "'1'", 1).flow is NONE
    assert decide(flow, "lstm", [], [], "'1'", 1).flow is NONE


def test_where_layouts_meet_in_a_graph():
    from unitree.layouts import Flow, merge

    a = Flow("map", 16, (1, 2, 0), origin="'0'")
    b = Flow("map", 16, (1, 2, 0), origin="'3'")
    assert merge([a, b]) == a  # a residual Add: one layout
    assert merge([a, b], S(CONCAT, (-1,))).channels == 32  # concatenated channels
    assert merge([a, b], S(CONCAT, (1,))).state == "unknown"  # along a spatial axis
    assert merge([a, Flow()]).state == "unknown"  # a map and something else
    assert merge([Flow(), Flow()]).state == "none"
    c = Flow("map", 12, (1, 2, 0), origin="'5'")
    assert merge([a, c]).channels == 4  # divides what either flatten's size is a multiple of


def test_unflattened_is_what_torch_linear_before_unflatten_holds():
    from unitree.layouts import Unflattened

    h, w, c, n = 2, 3, 4, 5
    x = rand(n)
    kernel = rand(n, h * w * c)  # a dense layer whose output is reshaped to (H, W, C)
    y = (x @ kernel).reshape(h, w, c)
    t = Unflattened(c)
    weight = t.to_canonical(kernel)
    assert weight.shape == t.shape(kernel.shape) == (h * w * c, n)
    # PyTorch: weight @ x, then Unflatten to (C, H, W): the same map, channels first
    np.testing.assert_allclose((weight @ x).reshape(c, h, w), np.moveaxis(y, -1, 0), atol=ATOL)
    np.testing.assert_array_equal(t.to_native(weight, kernel.shape), kernel)
    assert_differ((kernel.T @ x).reshape(c, h, w), np.moveaxis(y, -1, 0))  # not a transpose


# -- the same decisions through a read, on the framework-free fake ------------------------------
def _reader_models():
    from unitree_fake import Mod, conv, dense

    from unitree.layouts import GRAPH, RESHAPE, Step, Wire

    def decoder(seed=0):
        """Dense(6 -> 48), Reshape((4, 4, 3)), Conv(3 -> 2): channels-last, as Keras holds it."""
        return Mod(
            "Sequential",
            **{
                "0": dense(6, 48, seed),
                "1": Mod("Reshape", step=Step(RESHAPE, (4, 4, 3))),
                "2": conv(3, 2, (3, 3), seed + 1),
            },
        )

    def graph(wire_from):
        """A graph: conv (4 channels of a 3x3 map) -> flatten, and a dense reading what
        ``wire_from`` names (1: the flatten, -1: the model's own input)."""
        wires = ((Wire((-1,)),), (Wire((0,)),), (Wire((wire_from,)),))
        step = Step(GRAPH, wires=wires, outputs=(Wire((2,)),))
        layers = {"0": conv(2, 4, (2, 2), 0), "1": Mod("Flatten", "flatten"), "2": dense(36, 5, 1)}
        return Mod("Model", step=step, **layers)

    return decoder, graph


def test_a_read_decides_a_dense_output_reshaped_for_a_conv():
    from unitree_fake import FakeAdapter

    from unitree._param import rule_of
    from unitree._tree import view_of

    decoder, _ = _reader_models()
    model = decoder()
    tree = ut.ParamTree(FakeAdapter("keras"), model)
    view = view_of(tree)
    assert not any(view.unknown(p) for _, p in view.leaves())
    kernel = model.children["0"].leaves["kernel"][0]  # (6, 48): outputs in (H, W, C) order
    # PyTorch's Linear before Unflatten(1, (3, 4, 4)): output c*16 + hw is Keras's hw*3 + c
    want = np.empty((48, 6), np.float32)
    for c, hw in itertools.product(range(3), range(16)):
        want[c * 16 + hw] = kernel[:, hw * 3 + c]
    np.testing.assert_array_equal(tree["0.weight"].numpy(), want)
    bias = model.children["0"].leaves["bias"][0]
    np.testing.assert_array_equal(tree["0.bias"].numpy(), bias.reshape(16, 3).T.reshape(-1))
    # a re-read (the model changed elsewhere) keeps the same Param, and its rule
    p = tree["0.weight"]
    model.children["3"] = type(model)("relu")
    assert tree["0.weight"] is p and type(rule_of(p).transform).__name__ == "Unflattened"
    np.testing.assert_array_equal(p.numpy(), want)
    # the same model's state_dict reads back exactly
    other = decoder(seed=5)
    ut.ParamTree(FakeAdapter("keras"), other).load_state_dict(tree.state_dict())
    np.testing.assert_array_equal(other.children["0"].leaves["kernel"][0], kernel)


@pytest.mark.parametrize(("wire_from", "mark"), [(1, "Flattened"), (-1, "Permute")])
def test_a_read_follows_a_graph(wire_from, mark):
    """The dense layer reads the flatten of the conv (permuted), or the model's own input,
    which no conv made (as is), though its size is a multiple of the conv's channels."""
    from unitree_fake import FakeAdapter

    from unitree._param import rule_of
    from unitree._tree import view_of

    _, graph = _reader_models()
    tree = ut.ParamTree(FakeAdapter("keras"), graph(wire_from))
    view = view_of(tree)
    assert not any(view.unknown(p) for _, p in view.leaves())
    assert type(rule_of(tree["2.weight"]).transform).__name__ == mark


# -- the layout between layers on a channels-first backend (PyTorch, Gluon): native_first -------
# The same pure functions, with PyTorch's native shapes: ("conv", weight (out, in, *k)),
# ("dense", weight (out, in)), ("norm", size) or ("bn", size), or a Step. What a torch model
# holds is canonical ("-"), unless the model itself reorders a map before its flatten (a
# permute, which only a custom module does: an UNKNOWN step), where the default candidate is
# its own channels-first order, so that checkpoints and state_dict stay what they were.
CONV_T = ("conv", (16, 4, 3, 3))  # 16 channels out of a 3x3 map: its flatten has 144 features
DENSE_T = ("dense", (10, 144))
TO_MAP_T = ("dense", (7 * 7 * 8, 64))  # a Linear whose output is unflattened to a 7x7 map of 8
CONV_8_T = ("conv", (4, 8, 3, 3))  # a conv reading 8 channels
CONV_16_T = ("conv", (16, 16, 1, 1))  # a 1x1 conv, 16 channels in and out


def follow_first(*items):
    """``follow`` on a channels-first backend, marking each leaf as ``follow`` does, and an
    unknown one "?" with its default and the mark of its channels_last candidate."""
    from unitree.layouts import NONE, Rule, Step, after_step, decide, mirrored, needs_units, plan

    flow, pending, out, units = NONE, {}, {}, {}

    def filled(flow):
        return flow._replace(feeds=tuple(f._replace(units=units[f.token]) for f in flow.feeds))

    for pos, item in enumerate(items):
        if isinstance(item, Step):
            flow, mirrors = after_step(
                filled(flow) if needs_units(flow, step=item) else flow, item, f"step {pos}"
            )
        else:
            kind, shape = item
            if kind in ("norm", "bn"):
                kind = "layer_norm" if kind == "norm" else "batch_norm"
                shapes = [(shape,), (shape,)]
            else:
                shapes = [shape, (shape[0],)]
            if needs_units(flow, kind):
                flow = filled(flow)
            layer = plan(("weight", "bias"), None)  # PyTorch's leaves: no rule, canonical
            d = decide(flow, kind, layer, shapes, repr(str(pos)), pos + 1, True, 1, True)
            flow, mirrors = d.flow, d.mirrors
            if kind == "dense":
                units[pos + 1] = shape[0]
            out[pos] = {name: _mark(rule) for _, name, rule in d.layer}
            for j, u in d.unknown:
                _, name, rule = d.layer[j]
                assert u.candidates[u.default] is rule  # the default is the rule in use
                assert u.default == "channels_first" and rule is None  # the native layout
                assert str(pos) in u.reason  # names the layer
                out[pos][name] = f"?{u.default}, else {_mark(u.candidates['channels_last'])}"
            if d.pend:
                pending.setdefault(d.flow.feeds[0].token, []).extend(
                    (pos, d.layer[j][1], len(shapes[d.layer[j][0]])) for j in d.pend
                )
        for m in mirrors:
            for pos, name, ndim in pending.pop(m.feed.token, []):
                mark = _mark(mirrored(Rule(name), ndim, m.channels))
                out[pos][name] = f"?channels_first, else {mark}" if m.reason else mark
    return out


ASK_FIRST = {"weight": "?channels_first, else FlattenedWeight(16)", "bias": "-"}
ASK_FIRST_VECTORS = {
    "weight": "?channels_first, else FlattenedVector(16)",
    "bias": "?channels_first, else FlattenedVector(16)",
}
ASK_MIRROR = {
    "weight": "?channels_first, else UnflattenedWeight(8)",
    "bias": "?channels_first, else FlattenedVector(8)",
}


def _unflatten(*axes):
    from unitree.layouts import UNFLATTEN, Step

    return Step(UNFLATTEN, axes)


FIRST_CASES = {
    # nn.Flatten of a conv output: (C, H, W), PyTorch's own order, nothing to permute
    "flatten": ((CONV_T, S(FLATTEN), DENSE_T), {2: PLAIN}),
    # a custom Permute module (UNKNOWN) before the flatten: the default is the native order,
    # the candidate permutes the weight's input axis as it stands, (out, in)
    "custom_module_then_flatten": ((CONV_T, S(UNKNOWN), S(FLATTEN), DENSE_T), {3: ASK_FIRST}),
    # the same, with a permute the read can see (no torch module is one): decided
    "permute_then_flatten": (
        (CONV_T, S(PERMUTE, (2, 3, 1)), S(FLATTEN), DENSE_T),
        {3: {"weight": "FlattenedWeight(16)", "bias": "-"}},
    ),
    # poolings (adaptive ones too), padding, dropout, activations: the channels stay first
    "pooling_and_dropout": (
        (CONV_T, S(KEEP, data_format=CF), S(KEEP), S(FLATTEN), DENSE_T),
        {4: PLAIN},
    ),
    "adaptive_pooling_to_one_position": (
        (CONV_T, S(KEEP, data_format=CF), S(FLATTEN), ("dense", (10, 16))),
        {3: PLAIN},
    ),
    # nn.Flatten(2): the spatial axes merged in order, (C, H*W); then a flatten: (C, H, W)
    "flatten_of_the_spatial_axes": ((CONV_T, S(FLATTEN, (2, -1)), S(FLATTEN), DENSE_T), {3: PLAIN}),
    # nn.Flatten(1, 2): the channels merged with H, (C*H, W): the read follows no map whose
    # channels are merged (fail closed, though a full flatten of it is PyTorch's order again)
    "flatten_merging_the_channels": (
        (CONV_T, S(FLATTEN, (1, 2)), S(FLATTEN), DENSE_T),
        {3: ASK_FIRST},
    ),
    # nn.Unflatten of the flatten back to (C, H, W), a conv, a flatten: still PyTorch's order
    "flatten_unflatten_conv": (
        (CONV_T, S(FLATTEN), _unflatten(1, 16, 3, 3), CONV_16_T, S(FLATTEN), DENSE_T),
        {5: PLAIN},
    ),
    # an unknown step, then a Linear on the channels alone, or on no multiple of them
    "custom_module_then_channels": ((CONV_T, S(UNKNOWN), ("dense", (10, 16))), {2: PLAIN}),
    "custom_module_then_other": ((CONV_T, S(UNKNOWN), ("dense", (10, 20))), {2: PLAIN}),
    # a BatchNorm1d over the flatten: its vectors in the flatten's order
    "norm_on_the_flatten": ((CONV_T, S(FLATTEN), ("bn", 144), DENSE_T), {2: PLAIN, 3: PLAIN}),
    "norm_after_a_custom_module": (
        (CONV_T, S(UNKNOWN), ("bn", 144), DENSE_T),
        {2: ASK_FIRST_VECTORS, 3: ASK_FIRST},
    ),
    "norm_on_the_channels": ((CONV_T, ("bn", 16), S(FLATTEN), DENSE_T), {1: PLAIN, 3: PLAIN}),
    # the mirror: a Linear unflattened to (C, H, W) for a conv: PyTorch's order
    "linear_unflatten_conv": ((TO_MAP_T, _unflatten(1, 8, 7, 7), CONV_8_T), {0: PLAIN}),
    # ... to (L, C) for a Conv1d that reads the first axis, L = 8, as its channels
    "linear_unflatten_conv1d": (
        (("dense", (56, 64)), _unflatten(1, 8, 7), ("conv", (4, 8, 3))),
        {0: PLAIN},
    ),
    # ... to (H, W, C), then a custom permute to (C, H, W): unknown, (H, W, C) the candidate
    "linear_unflatten_custom_module_conv": (
        (TO_MAP_T, _unflatten(1, 7, 7, 8), S(UNKNOWN), CONV_8_T),
        {0: ASK_MIRROR},
    ),
    # ... with a permute the read can see: decided, the weight's output axis permuted
    "linear_unflatten_permute_conv": (
        (TO_MAP_T, _unflatten(1, 7, 7, 8), S(PERMUTE, (3, 1, 2)), CONV_8_T),
        {0: {"weight": "UnflattenedWeight(8)", "bias": "FlattenedVector(8)"}},
    ),
    # a BatchNorm1d over the channels of the unflattened output (first), a LayerNorm over its
    # last axis (no channels): the order stays PyTorch's
    "linear_unflatten_batch_norm_conv1d": (
        (("dense", (56, 64)), _unflatten(1, 8, 7), ("bn", 8), ("conv", (4, 8, 3))),
        {0: PLAIN},
    ),
    "linear_unflatten_layer_norm_conv1d": (
        (("dense", (56, 64)), _unflatten(1, 8, 7), ("norm", 7), ("conv", (4, 8, 3))),
        {0: PLAIN},
    ),
    # a layer norm over more than the last axis of the unflattened output: not followed
    "linear_unflatten_wide_norm_conv1d": (
        (("dense", (56, 64)), _unflatten(1, 8, 7), ("norm", 56), ("conv", (4, 8, 3))),
        {0: ASK_MIRROR},
    ),
    # a Linear fed by a Linear: nothing to decide
    "linear_linear": ((("dense", (8, 4)), ("dense", (3, 8))), {0: PLAIN, 1: PLAIN}),
}


@pytest.mark.parametrize("case", FIRST_CASES)
def test_layout_between_layers_on_a_channels_first_backend(case):
    model, want = FIRST_CASES[case]
    got = follow_first(*model)
    assert {pos: got[pos] for pos in want} == want


def test_flattened_weight_is_what_torch_linear_after_a_permute_and_flatten_holds():
    """A torch model that permutes its (C, H, W) map to (H, W, C) and flattens it: its Linear
    weight, read through FlattenedWeight, is the one of the twin that flattens (C, H, W)."""
    from unitree.layouts import FlattenedWeight

    c, h, w, out = 4, 2, 3, 5
    x = rand(c, h, w)  # PyTorch's map
    native = rand(out, h * w * c)  # a Linear on the (H, W, C) flatten
    y = native @ np.moveaxis(x, 0, -1).reshape(-1)
    t = FlattenedWeight(c)
    weight = t.to_canonical(native)
    assert weight.shape == t.shape(native.shape) == native.shape
    np.testing.assert_allclose(weight @ x.reshape(-1), y, atol=ATOL)  # PyTorch's own flatten
    np.testing.assert_array_equal(t.to_native(weight, native.shape), native)
    assert_differ(native @ x.reshape(-1), y)  # not the native weight as it is
    # the same permutation as Flattened's of the (in, out) kernel of a channels-last twin
    np.testing.assert_array_equal(weight, Flattened(c).to_canonical(native.T))


def test_unflattened_weight_is_what_torch_linear_before_unflatten_holds():
    """A torch Linear unflattened to (H, W, C) (then permuted for its conv): read through
    UnflattenedWeight, the weight of the twin that unflattens to (C, H, W)."""
    from unitree.layouts import FlattenedVector, Unflattened, UnflattenedWeight

    c, h, w, n = 4, 2, 3, 5
    x = rand(n)
    native, bias = rand(h * w * c, n), rand(h * w * c)
    y = (native @ x + bias).reshape(h, w, c)
    t = UnflattenedWeight(c)
    weight = t.to_canonical(native)
    b = FlattenedVector(c).to_canonical(bias)
    assert weight.shape == t.shape(native.shape) == native.shape
    np.testing.assert_allclose((weight @ x + b).reshape(c, h, w), np.moveaxis(y, -1, 0), atol=ATOL)
    np.testing.assert_array_equal(t.to_native(weight, native.shape), native)
    assert_differ((native @ x).reshape(c, h, w), np.moveaxis(y, -1, 0) - b.reshape(c, h, w))
    np.testing.assert_array_equal(weight, Unflattened(c).to_canonical(native.T))


# -- through a read, on the framework-free fake playing PyTorch ---------------------------------
def _torch_cnn(between=None, seed=0, root="Sequential"):
    """Conv(2 -> 4, 2x2) on a 3x3 map, [between], Flatten, Linear(16 -> 3), as PyTorch holds
    them, on the fake playing PyTorch."""
    from unitree_fake import Mod, conv, dense

    from unitree.layouts import FLATTEN, Step

    layers = {"0": conv(2, 4, (2, 2), seed, "torch")}
    if between is not None:
        layers["1"] = between
    layers["2"] = Mod("Flatten", step=Step(FLATTEN))
    layers["3"] = dense(16, 3, seed + 1, "torch")
    return Mod(root, **layers)


def _permute(*dims):
    """A module whose step is a permute the read can see (Keras's Permute dims)."""
    from unitree_fake import Mod

    from unitree.layouts import PERMUTE, Step

    return Mod("Permute", step=Step(PERMUTE, dims))


def test_a_channels_first_read_follows_a_model_that_holds_a_conv():
    from unitree_fake import FakeAdapter, Mod

    from unitree._param import rule_of
    from unitree._tree import view_of

    # nn.Flatten in a Sequential: decided, PyTorch's order, nothing unknown
    view = view_of(ut.ParamTree(FakeAdapter("torch"), _torch_cnn()))
    assert not any(view.unknown(p) for _, p in view.leaves())
    # a custom module between: unknown, its default the native layout (no rule at all)
    model = _torch_cnn(Mod("Permute"))
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    view = view_of(tree)
    unknown = {".".join(map(str, path)): view.unknown(p) for path, p in view.leaves()}
    u = unknown.pop("3.weight")
    assert not any(unknown.values())
    assert u.default == "channels_first" and rule_of(tree["3.weight"]) is None
    assert "'3'" in u.reason and "'0'" in u.reason and "Permute" in u.reason
    assert type(u.candidates["channels_last"].transform).__name__ == "FlattenedWeight"
    np.testing.assert_array_equal(tree["3.weight"].numpy(), model.children["3"].leaves["weight"][0])
    # a root whose call no one reads: the same
    tree = ut.ParamTree(FakeAdapter("torch"), _torch_cnn(root="Net"))
    u = view_of(tree).unknown(tree["3.weight"])
    assert u is not None and u.default == "channels_first" and "the call of Net" in u.reason


def test_a_channels_first_read_decides_a_permute_it_can_see():
    """A permute the read can see (no torch module is one; a fake step here): decided, the
    canonical weight is the twin's that flattens (C, H, W), and a state_dict reads back."""
    from unitree_fake import FakeAdapter

    from unitree._tree import view_of

    model = _torch_cnn(_permute(2, 3, 1))
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    assert not any(view_of(tree).unknown(p) for _, p in view_of(tree).leaves())
    native = model.children["3"].leaves["weight"][0]  # (3, 16): inputs in (H, W, C) order
    want = native.reshape(3, 4, 4).transpose(0, 2, 1).reshape(3, 16)  # input c*4 + hw
    np.testing.assert_array_equal(tree["3.weight"].numpy(), want)
    # a re-read (the model changed elsewhere) keeps the same Param, and its rule
    p = tree["3.weight"]
    model.children["4"] = type(model)("relu")
    assert tree["3.weight"] is p
    np.testing.assert_array_equal(p.numpy(), want)
    other = _torch_cnn(_permute(2, 3, 1), seed=7)
    ut.ParamTree(FakeAdapter("torch"), other).load_state_dict(tree.state_dict())
    np.testing.assert_array_equal(other.children["3"].leaves["weight"][0], native)


def test_a_channels_first_read_of_a_tied_linear_decides_each_use():
    """One Linear at two places, one reading a permuted flatten (a fake step) and one not: its
    uses disagree, and the read says so (View.mixed), as on a channels-last backend."""
    from unitree_fake import FakeAdapter, Mod

    from unitree._tree import view_of

    model = _torch_cnn(_permute(2, 3, 1))
    model.children["4"] = Mod("Sequential", **{"0": Mod("relu"), "1": model.children["3"]})
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    view = view_of(tree)
    assert {id(p) for _, p in view.leaves() if view.mixed(p)} == {id(tree["3.weight"])}


def test_a_channels_first_model_without_a_conv_is_not_followed():
    """Nothing to decide without a map: no unknown, even through calls no one can read."""
    from unitree_fake import FakeAdapter, Mod, dense

    from unitree._tree import view_of

    layers = {"0": dense(4, 8, 0, "torch"), "1": Mod("Custom"), "2": dense(8, 2, 1, "torch")}
    model = Mod("Net", **layers)
    view = view_of(ut.ParamTree(FakeAdapter("torch"), model))
    assert not any(view.unknown(p) for _, p in view.leaves())
