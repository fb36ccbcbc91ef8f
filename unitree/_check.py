"""Two models run on one input and compared layer by layer: what ``ut.compare`` shows and what
proves a port (``ut.port(..., check=...)``).

Both models run natively, in inference mode (``Adapter.run``), and each matched pair of
layers is compared on its captured outputs: directly where the shapes are equal, after
moving the channels axis where they differ by it (channels-first ``(N, C, *spatial)``
against channels-last ``(N, *spatial, C)``), and never otherwise ("not comparable", which
is no pass). Framework-free: the adapters run the models and hand back numpy arrays.

The tolerance fits the dtype (:func:`tolerance`): ``atol + rtol * max|reference|``, the
reference being the source's output, with ``atol = rtol = sqrt(eps)`` of the coarser of the
two outputs' dtypes unless given: about 3.5e-4 for float32, 3.1e-2 for float16, 8.8e-2
for bfloat16, 1.5e-8 for float64, exact for integers and booleans. sqrt(eps) is the usual
tolerance for two computations of one function in one precision by different sequences of
operations (different summation orders, different convolution algorithms), and far below
the differences a wrong port gives (a swapped layer, a wrong transpose, a missing bias are
of the order of the values themselves). Scaled by the largest reference magnitude, not
elementwise, because rounding errors scale with the magnitudes summed, not with each
output. On GPUs that compute float32 with TensorFloat-32 (PyTorch's convolutions, JAX's
default matmul precision), pass a looser ``rtol`` (1e-2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from ._errors import ValueTypeError
from ._paths import keystr
from ._read import View

__all__ = [
    "DIFFERS",
    "NOT_COMPARABLE",
    "OK",
    "Comparison",
    "Row",
    "compare_models",
    "compare_values",
    "describe_mismatch",
    "tolerance",
]

OK = "ok"
DIFFERS = "differs"
NOT_COMPARABLE = "not comparable"

Inputs = Union[Any, tuple[Any, ...]]  # one array, or a tuple of them: the positional arguments
# (src layer path, src module, dst layer path, dst module): a matched pair, modules as the
# View lists them (Layer.module)
LayerPair = tuple[str, Any, str, Any]


@dataclass(frozen=True)
class Row:
    """One compared pair of outputs: a matched pair of layers, or the two models' outputs."""

    src: str  # the source layer's path ("" for the model itself)
    dst: str  # the destination layer's path
    difference: float | None  # the largest |src - dst| over the outputs; None: not compared
    tolerance: float | None  # what the difference was held to (:func:`tolerance`)
    status: str  # OK, DIFFERS or NOT_COMPARABLE
    note: str = ""  # how it was compared ("channels moved"), or why it could not be

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_models` found: one :class:`Row` per matched layer, in the source's
    traversal order, and one for the models' outputs."""

    rows: tuple[Row, ...]
    output: Row

    @property
    def ok(self) -> bool:
        """The outputs agree within the tolerance: the port computes the source's function on
        these inputs. Layer rows explain; they do not decide (see :attr:`layers_ok`)."""
        return self.output.ok

    @property
    def layers_ok(self) -> bool:
        """No matched layer's output differs (a layer not comparable is no difference)."""
        return all(row.status != DIFFERS for row in self.rows)

    @property
    def output_difference(self) -> float | None:
        return self.output.difference

    @property
    def first_difference(self) -> Row | None:
        """The first matched layer, in the source's traversal order, whose output differs."""
        return next((row for row in self.rows if row.status == DIFFERS), None)

    def __str__(self) -> str:
        head = ("source", "destination", "max |diff|", "tolerance", "result")
        lines = [_cells(row) for row in self.rows]
        lines.append(_cells(self.output, "(output)"))
        widths = [max(len(x) for x in column) for column in zip(head, *lines)]
        text = [
            "  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, *lines)
        ]
        verdict = "the outputs agree" if self.ok else "the outputs differ"
        first = self.first_difference
        if first is not None:
            verdict += f"; the first layer that differs: {_pair(first)}"
        return "\n".join([*text, verdict + "."])


def _cells(row: Row, label: str = "") -> tuple[str, str, str, str, str]:
    return (
        label or row.src or "(model)",
        label or row.dst or "(model)",
        _num(row.difference),
        _num(row.tolerance),
        row.status + (f" ({row.note})" if row.note else ""),
    )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _pair(row: Row) -> str:
    return f"{row.src or '(model)'} -> {row.dst or '(model)'}"


# -- tolerance --------------------------------------------------------------------------------
def resolution(dtype: np.dtype) -> float:
    """Machine epsilon of a floating (or complex) dtype, ml_dtypes' included; 0 for the others
    (integers, booleans: compared exactly)."""
    if dtype.kind in "fcV":
        import ml_dtypes  # a dependency, imported when first needed: import unitree stays fast

        try:
            return float(ml_dtypes.finfo(dtype).eps)
        except (ValueError, TypeError):  # a structured or opaque type: no resolution known
            return 0.0
    return 0.0


def tolerance(
    reference: np.ndarray,
    other: np.ndarray,
    rtol: float | None = None,
    atol: float | None = None,
) -> float:
    """The largest allowed |reference - other|: ``atol + rtol * max|reference|`` (finite values),
    each of ``atol`` and ``rtol`` defaulting to sqrt(eps) of the coarser of the two dtypes
    (the module docstring says why)."""
    eps = max(resolution(reference.dtype), resolution(other.dtype))
    default = math.sqrt(eps)
    rtol = default if rtol is None else rtol
    atol = default if atol is None else atol
    finite = np.abs(reference[np.isfinite(reference)]) if reference.size else reference
    scale = float(np.max(finite)) if finite.size else 0.0
    return atol + rtol * scale


def _max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64 (complex128), a NaN against a NaN or an infinity against the same
    one counting as equal, a NaN against anything else as infinitely far."""
    wide = np.complex128 if a.dtype.kind == "c" or b.dtype.kind == "c" else np.float64
    x, y = a.astype(wide), b.astype(wide)
    if not x.size:
        return 0.0
    with np.errstate(invalid="ignore"):
        d = np.abs(x - y)
    same = (np.isnan(x) & np.isnan(y)) | (np.isinf(x) & (x == y))
    d[same] = 0.0
    d[np.isnan(d)] = np.inf
    return float(np.max(d))


# -- comparing two outputs --------------------------------------------------------------------
def _leaves(value: Any) -> list[Any]:
    """The arrays of an output in order (tuples, lists and mappings flattened, as
    ``as_numpy`` leaves them); anything else is a leaf as it is."""
    if isinstance(value, Mapping):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _layouts(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[Callable[[Any], Any], str]]:
    """The ways to see a destination array of shape ``dst`` in the source's layout ``src``:
    as it is where the shapes are equal, and with its channels axis moved where it is
    channels-last against channels-first (or the reverse); none otherwise."""
    out: list[tuple[Callable[[Any], Any], str]] = []
    if src == dst:
        out.append((lambda y: y, ""))
    if len(src) >= 3 and len(dst) == len(src):
        if (dst[0], dst[-1], *dst[1:-1]) == src:
            out.append((lambda y: np.moveaxis(y, -1, 1), "channels-last moved to channels-first"))
        if (dst[0], *dst[2:], dst[1]) == src:
            out.append((lambda y: np.moveaxis(y, 1, -1), "channels-first moved to channels-last"))
    return out


def compare_values(
    src: Any,
    dst: Any,
    rtol: float | None = None,
    atol: float | None = None,
    first: bool = False,
) -> tuple[float | None, float | None, str, str]:
    """Compare two outputs (arrays, or tuples / dicts of them, as ``Adapter.run`` gives them),
    array by array in order: (largest difference, its tolerance, status, note). The
    difference and tolerance are the worst array's (largest difference over tolerance).

    ``first``: where one side is one array and the other several, compare the one with the
    other's first (a layer's: torch's LSTM returns ``(output, (h, c))``, Keras's the output;
    torch's attention ``(output, weights)``, Flax's the output; the main output comes first
    in every framework's convention). Otherwise, and always for a model's outputs (which
    ``dst_outputs=`` maps), a different number of arrays is not comparable; so is something
    that is no array, and shapes that differ other than by the channels axis.
    """
    xs, ys = _leaves(src), _leaves(dst)
    prefix = ""
    if len(xs) != len(ys):
        if not (first and min(len(xs), len(ys)) == 1):
            return None, None, NOT_COMPARABLE, f"{len(xs)} arrays against {len(ys)}"
        prefix = f"the first of {max(len(xs), len(ys))} outputs"
        xs, ys = xs[:1], ys[:1]
    worst: tuple[float, float, str] | None = None  # (difference, tolerance, note)
    for x, y in zip(xs, ys):
        if x is None and y is None:
            continue
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            what = (type(x).__name__, type(y).__name__)
            return None, None, NOT_COMPARABLE, f"{what[0]} against {what[1]}, not arrays"
        candidates = _layouts(x.shape, y.shape)
        if not candidates:
            return None, None, NOT_COMPARABLE, f"shapes {x.shape} and {y.shape}"
        tol = tolerance(x, y, rtol, atol)
        # the layout in which they agree best: a pass in any one means the same function
        diff, note = min(
            ((_max_difference(x, move(y)), note) for move, note in candidates),
            key=lambda item: item[0],
        )
        if worst is None or _ratio(diff, tol) > _ratio(worst[0], worst[1]):
            worst = (diff, tol, note)
    if worst is None:
        return None, None, NOT_COMPARABLE, "no arrays"
    diff, tol, note = worst
    return diff, tol, OK if diff <= tol else DIFFERS, ", ".join(filter(None, [prefix, note]))


def _ratio(diff: float, tol: float) -> float:
    if tol > 0:
        return diff / tol
    return 0.0 if diff == 0 else math.inf


def _calls(
    src: list[Any] | None, dst: list[Any] | None, rtol: float | None, atol: float | None
) -> tuple[float | None, float | None, str, str]:
    """One layer pair's captured outputs, call by call in call order."""
    if not src or not dst:
        side = "source" if not src else "destination"
        return None, None, NOT_COMPARABLE, f"not called in the {side}"
    if len(src) != len(dst):
        return (
            None,
            None,
            NOT_COMPARABLE,
            f"called {len(src)} times in the source, {len(dst)} in the destination",
        )
    results = [compare_values(x, y, rtol, atol, first=True) for x, y in zip(src, dst)]
    for result in results:
        if result[2] == NOT_COMPARABLE:
            return result
    diff, tol, status, note = max(results, key=lambda r: _ratio(r[0], r[1]))  # type: ignore[arg-type]
    if len(results) > 1:
        note = ", ".join(filter(None, [f"{len(results)} calls", note]))
    return diff, tol, status, note


# -- two models ---------------------------------------------------------------------------------
def _arguments(inputs: Any) -> tuple[Any, ...]:
    """Positional inputs: an array, or a tuple or list of them.

    Raises:
        ValueTypeError: a mapping (keyword inputs go in ``kwargs``).
    """
    if isinstance(inputs, Mapping):
        raise ValueTypeError(
            f"Example inputs are the model's positional arguments (an array, or a tuple of "
            f"arrays), not a mapping ({', '.join(map(str, inputs))}): pass keyword inputs as "
            "ut.Check(inputs, kwargs={...}), or ut.compare(..., kwargs={...})."
        )
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def compare_models(
    src_view: View,
    dst_view: View,
    pairs: Sequence[LayerPair],
    inputs: Inputs,
    dst_inputs: Inputs | Callable[..., Inputs] | None = None,
    dst_outputs: Callable[[Any], Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    src_kwargs: Mapping[str, Any] | None = None,
    dst_kwargs: Mapping[str, Any] | None = None,
) -> Comparison:
    """Run both models natively on example inputs and compare them layer by layer.

    Args:
        src_view, dst_view: the two models (``_tree.view_of``); each is run whole, from the
            node's module, by its adapter's ``run``.
        pairs: the matched layers, (src path, src module, dst path, dst module) with the
            modules as the views list them (``_canon.Layer.module``).
        inputs: the source's positional inputs: one array, or a tuple (or list) of them.
        dst_inputs: the destination's: None for the same arrays; arrays; or a function
            called with the source's inputs (``dst_inputs(*inputs)``) that returns them (a
            layout change: ``lambda x: x.transpose(0, 2, 3, 1)``).
        dst_outputs: a function from the destination's output (numpy, as ``Adapter.run``
            gives it) to the source's layout and structure; None: compared as it is.
        rtol, atol: the tolerance (:func:`tolerance`); None: from the outputs' dtype.
        src_kwargs, dst_kwargs: keyword arguments of each model's call (``train=False`` for
            a linen model whose mode is an argument).

    Returns:
        A :class:`Comparison`: its rows in the source's traversal order.

    Raises:
        UnsupportedError: an adapter cannot run its model.
    """
    src_args = _arguments(inputs)
    if dst_inputs is None:
        dst_args = src_args
    elif callable(dst_inputs):
        dst_args = _arguments(dst_inputs(*src_args))
    else:
        dst_args = _arguments(dst_inputs)
    src_out, src_caught = src_view.adapter.run(
        src_view.module, src_args, [p[1] for p in pairs], src_kwargs
    )
    dst_out, dst_caught = dst_view.adapter.run(
        dst_view.module, dst_args, [p[3] for p in pairs], dst_kwargs
    )
    if dst_outputs is not None:
        dst_out = dst_outputs(dst_out)
    order = {keystr(path): i for i, (path, _) in enumerate(src_view.modules())}
    ranked = sorted(pairs, key=lambda p: order.get(p[0], len(order)))  # stable: ties keep order
    rows = tuple(
        Row(src_path, dst_path, *_calls(src_caught.get(id(s)), dst_caught.get(id(d)), rtol, atol))
        for src_path, s, dst_path, d in ranked
    )
    output = Row("", "", *compare_values(src_out, dst_out, rtol, atol))
    return Comparison(rows, output)


def describe_mismatch(comparison: Comparison) -> str:
    """What a failed output check says (the text of a port's ``PortError``): the largest
    difference of the outputs and its tolerance, and the first matched layer whose output
    differs, or why none could be named."""
    out = comparison.output
    if out.status == NOT_COMPARABLE:
        text = (
            f"The two models' outputs could not be compared ({out.note}): pass a function that "
            "maps the destination's outputs to the source's (dst_outputs=)."
        )
    else:
        text = (
            f"The destination's outputs differ from the source's on the example inputs: largest "
            f"difference {_num(out.difference)}, tolerance {_num(out.tolerance)}"
            + (f" ({out.note})" if out.note else "")
            + "."
        )
    first = comparison.first_difference
    if first is not None:
        return (
            f"{text} The first matched layer whose output differs is {_pair(first)}: "
            f"{_num(first.difference)} against a tolerance of {_num(first.tolerance)}"
            + (f" ({first.note})" if first.note else "")
            + "."
        )
    unknown = [row for row in comparison.rows if row.status == NOT_COMPARABLE]
    text += " No matched layer's output differs"
    if unknown:
        shown = "; ".join(f"{_pair(row)}: {row.note}" for row in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        text += f" where it could be compared ({len(unknown)} could not: {shown}{more})"
    return (
        text + ": the difference comes from a step between layers (a flatten, a permute, an "
        "activation, a reshape) or from a layer that was not matched."
    )
