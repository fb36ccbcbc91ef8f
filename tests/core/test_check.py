"""The comparison of two outputs (``unitree._check``), framework-free: the tolerance formula,
layouts, structures and non-finite values, against numbers worked out by hand."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from unitree._check import (
    DIFFERS,
    NOT_COMPARABLE,
    OK,
    Comparison,
    Row,
    compare_values,
    describe_mismatch,
    tolerance,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("dtype", "eps"),
    [
        (np.float32, 2.0**-23),
        (np.float16, 2.0**-10),
        (ml_dtypes.bfloat16, 2.0**-7),
        (np.float64, 2.0**-52),
    ],
)
def test_the_default_tolerance_is_sqrt_eps_absolute_plus_sqrt_eps_times_the_largest_value(
    dtype, eps
):
    ref = np.array([[0.5, -4.0], [2.0, 1.0]], dtype=dtype)
    assert tolerance(ref, ref) == pytest.approx(math.sqrt(eps) * (1 + 4.0), rel=1e-12)


def test_the_coarser_dtype_decides_and_explicit_values_win():
    ref = np.array([2.0], np.float32)
    half = np.array([2.0], np.float16)
    assert tolerance(ref, half) == pytest.approx(2.0**-5 * 3, rel=1e-12)  # sqrt(2^-10) = 2^-5
    assert tolerance(ref, ref, rtol=0.1, atol=0.0) == pytest.approx(0.2)
    assert tolerance(ref, ref, rtol=0.0, atol=0.3) == pytest.approx(0.3)
    ints = np.array([3, 4])
    assert tolerance(ints, ints) == 0.0  # integers: exact
    assert tolerance(np.array([np.inf, -1.0]), np.array([np.inf, -1.0])) == pytest.approx(
        math.sqrt(2.0**-52) * 2
    )  # the largest finite value scales it


def test_equal_shapes_are_compared_as_they_are():
    a = RNG.standard_normal((2, 3)).astype(np.float32)
    b = a.copy()
    b[1, 2] += 0.25
    diff, tol, status, note = compare_values(a, b)
    assert diff == pytest.approx(0.25, rel=1e-6) and status == DIFFERS and note == ""
    assert tol == pytest.approx(math.sqrt(2.0**-23) * (1 + np.abs(a).max()))


def test_channels_last_against_channels_first_is_compared_after_moving_the_axis():
    first = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)  # (N, C, H, W)
    last = first.transpose(0, 2, 3, 1)  # (N, H, W, C)
    assert compare_values(first, last)[2:] == (OK, "channels-last moved to channels-first")
    assert compare_values(last, first)[2:] == (OK, "channels-first moved to channels-last")
    wrong = first.reshape(2, 5, 7, 3)  # the same shape as channels-last, another order
    diff, _, status, _ = compare_values(first, wrong)
    assert status == DIFFERS and diff > 0.5


def test_other_shapes_are_not_comparable_never_a_pass():
    a = np.zeros((2, 6), np.float32)
    for other in (np.zeros((2, 3, 2), np.float32), np.zeros((6, 2), np.float32), np.zeros(12)):
        diff, tol, status, note = compare_values(a, other)
        assert (diff, tol, status) == (None, None, NOT_COMPARABLE) and "shapes" in note
    assert compare_values((a, a), a)[2:] == (NOT_COMPARABLE, "2 arrays against 1")
    assert compare_values(a, "text")[2] == NOT_COMPARABLE


def test_structures_are_compared_array_by_array_and_the_worst_is_reported():
    a = {"logits": np.ones((2, 3), np.float32), "hidden": (np.zeros((2, 4), np.float32),)}
    b = {"logits": np.ones((2, 3), np.float32), "hidden": (np.full((2, 4), 0.1, np.float32),)}
    diff, tol, status, _ = compare_values(a, b)
    assert status == DIFFERS and diff == pytest.approx(0.1, rel=1e-6)
    assert tol == pytest.approx(math.sqrt(2.0**-23))  # the hidden state's: its reference is 0
    assert compare_values((None, a["logits"]), (None, b["logits"]))[2] == OK


def test_non_finite_values():
    a = np.array([1.0, np.nan, np.inf], np.float32)
    assert compare_values(a, a.copy())[:3:2] == (0.0, OK)  # NaN against NaN, inf against inf
    for bad in ([1.0, 0.0, np.inf], [1.0, np.nan, -np.inf], [np.nan, np.nan, np.inf]):
        diff, _, status, _ = compare_values(a, np.array(bad, np.float32))
        assert diff == math.inf and status == DIFFERS


def test_integers_are_compared_exactly():
    a = np.array([1, 2, 3])
    assert compare_values(a, a.copy())[2] == OK
    assert compare_values(a, np.array([1, 2, 4]))[:3] == (1.0, 0.0, DIFFERS)


def test_the_table_and_the_message():
    rows = (
        Row("0", "layers.0", 0.0, 1e-4, OK, "channels-last moved to channels-first"),
        Row("2", "layers.1", 0.5, 1e-4, DIFFERS),
        Row("4", "layers.2", None, None, NOT_COMPARABLE, "not called in the destination"),
    )
    c = Comparison(rows, Row("", "", 0.7, 2e-4, DIFFERS))
    assert not c.ok and not c.layers_ok and c.first_difference is rows[1]
    text = str(c)
    assert text.splitlines()[0].split() == [
        "source",
        "destination",
        "max",
        "|diff|",
        "tolerance",
        "result",
    ]
    assert "the first layer that differs: 2 -> layers.1" in text
    message = describe_mismatch(c)
    assert "0.7" in message and "2 -> layers.1" in message and "0.5" in message
    quiet = Comparison(rows[::2], Row("", "", 0.7, 2e-4, DIFFERS))
    message = describe_mismatch(quiet)
    assert (
        "No matched layer's output differs" in message
        and "not called in the destination" in message
    )


def test_a_layer_with_several_outputs_against_one_compares_the_first():
    out = RNG.standard_normal((2, 5, 4)).astype(np.float32)  # an LSTM's sequence
    h, c = np.zeros((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32)
    diff, _, status, note = compare_values((out, (h, c)), out.copy(), first=True)
    assert (diff, status, note) == (0.0, OK, "the first of 3 outputs")
    assert compare_values((out + 1, (h, c)), out, first=True)[2] == DIFFERS
    assert compare_values((out, (h, c)), out)[2] == NOT_COMPARABLE  # a model's outputs: never
    assert compare_values((out, h), (out, h, c), first=True)[2] == NOT_COMPARABLE  # 2 against 3
