"""``ut.port``: copy every parameter and buffer of one model into another, across frameworks."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import numpy as np

from ._adapter import Adapter
from ._canon import Layer, Slot, layers, slot_value, slots
from ._check import Comparison, compare_models, describe_mismatch
from ._dtypes import numpy_dtype
from ._errors import PortError
from ._param import adapter_of, leaf_of, transform_of
from ._paths import join
from ._read import View
from ._settings import compare as compare_settings
from ._settings import one_sided_notes
from ._tree import view_of
from ._write import Foreign, Journal, write_all
from .layouts import CONVS, OPTIONAL, SAME_KIND


class Pair(NamedTuple):
    """One source layer matched to one destination layer, and the rule that matched them."""

    src: str
    dst: str
    kind: str | None
    rule: str  # "path", "rename" or "structure"
    note: str = ""


class PortReport:
    """What ``ut.port`` matched, copied, and found different.

    ``pairs``: every (source layer, destination layer) with the rule that
    matched it; ``ties_kept`` / ``ties_split``: source tie groups that are (not)
    one storage in the destination; ``settings``: layer settings that differ
    (epsilons, momentum, padding...): under ``strict=True`` they are errors;
    ``skipped``: what ``strict=False`` left out; ``notes``: conversions worth
    knowing (a folded bias, a dropped counter).
    """

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst
        self.pairs: list[Pair] = []
        self.tensors = 0
        self.bytes = 0
        self.dlpack = 0  # tensors that crossed frameworks through DLPack
        self.ties_kept: list[tuple[str, ...]] = []
        self.ties_split: list[tuple[str, ...]] = []
        self.settings: list[str] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []
        self.check: Comparison | None = None  # the outputs compared, with check=

    @property
    def rules(self) -> dict[str, int]:
        """How many pairs each rule matched: {"path": 5, "structure": 2}."""
        out: dict[str, int] = {}
        for pair in self.pairs:
            out[pair.rule] = out.get(pair.rule, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [
            f"port {self.src} -> {self.dst}: {self.tensors} tensors ({self.dlpack} through DLPack), "
            f"{self.bytes:,} bytes, "
            f"{len(self.pairs)} layers ({', '.join(f'{n} by {r}' for r, n in self.rules.items()) or 'none'})"
        ]
        width = max((len(p.src or "(root)") for p in self.pairs), default=0)
        right = max((len(p.dst or "(root)") for p in self.pairs), default=0)
        for p in self.pairs:
            arrow = f"{p.src or '(root)':<{width}} -> {p.dst or '(root)':<{right}}"
            lines.append(
                f"  {arrow}  [{p.kind or '-'}, by {p.rule}]" + (f"  {p.note}" if p.note else "")
            )
        for title, items in (
            ("ties kept", [" = ".join(t) for t in self.ties_kept]),
            (
                "ties split (one storage in the source, separate in the destination)",
                [" = ".join(t) for t in self.ties_split],
            ),
            ("settings that differ", self.settings),
            ("skipped", self.skipped),
            ("notes", self.notes),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items]
        return "\n".join(lines)

    __repr__ = __str__


class Check(NamedTuple):
    """Example inputs that prove a port (``ut.port(..., check=Check(...))``; a bare array or a
    tuple of arrays is ``Check(inputs)``).

    ``inputs``: the source model's positional inputs (an array, or a tuple of arrays).
    ``dst_inputs``: the destination's, or a function making them from the source's (default:
    the same arrays: pass ``lambda x: x.transpose(0, 2, 3, 1)`` for a channels-first source
    and a channels-last destination). ``dst_outputs``: a function mapping the destination's
    outputs into the source's layout (default: as they are). ``rtol``, ``atol``: the
    tolerance (default: from the dtypes, see :func:`unitree.compare`). ``kwargs``: keyword
    inputs of both models' calls, as numpy arrays or values (a Hugging Face model's
    ``attention_mask``; twins of one library name them alike).
    """

    inputs: Any
    dst_inputs: Any = None
    dst_outputs: Callable[[Any], Any] | None = None
    rtol: float | None = None
    atol: float | None = None
    kwargs: Mapping[str, Any] | None = None


def port(
    src: Any,
    dst: Any,
    strict: bool = True,
    *,
    rename: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    cast: bool = False,
    error_if_nonfinite: bool = False,
    check: Any = None,
    layouts: Mapping[str, str] | None = None,
) -> PortReport:
    """Copy every parameter and persistent buffer of ``src`` into ``dst``, whatever their
    frameworks, so that ``dst`` computes what ``src`` computes, or refuse and write nothing.

    **Matching.** Layers are matched by path first, a position in a sequential container
    read as the rank among its parameterized children (torch's ``Sequential(Linear, ReLU,
    Linear)`` is Keras's ``Sequential([Dense(activation="relu"), Dense])``); the layers left
    over by structure: the alignment of both whole sequences, in traversal order, of layers
    with the same kind and the same canonical leaves and shapes, names deciding among
    siblings of one kind and shape (torch's k, v, q projections against Flax's q, k, v).
    Where nothing decides (two candidates whose names differ), the port refuses and names
    them. A layer type the tables do not know (``ut.register_layer`` gives one a kind) fits
    the same type; otherwise only the layer at the same named path (never a position alone),
    its tensors copied as stored where each has the same shape on both sides and no other
    order of its axes gives that shape (a square matrix is refused unless ``check=``); the
    report notes such pairs, whose computation nothing compared. ``rename`` maps regular expressions over source layer paths to replacements
    (``{r"^features\\.(\\d+)$": r"conv\\1"}``), applied before the path match; a tuple of
    replacements splits one source layer along the first axis of its canonical leaves (its
    output rows) into those destination layers, in order (a fused qkv projection into three);
    a renamed path that names a part of the other model's attention codec (a Keras
    ``MultiHeadAttention``'s ``query``...) pairs with that part, the codec read as its parts.

    **Validation**, before anything is written: shapes; dtypes (converted only when
    lossless, unless ``cast=True``); ties (a tie in the source must be one storage in the
    destination; a source layer whose every tensor is tied to a ported one, a language
    model's head tied to its embedding, needs no destination); layer settings that change
    results without being parameters, compared by meaning (padding resolved for the layer,
    stride, dilation, groups, epsilons, heads, activations...), a setting one side cannot
    report counting as a difference; and the layout of activations between layers (the
    flatten of a channels-last conv output into a dense layer, and its mirror), read from
    the model's own parameterless layers, unknown where a step is opaque (a lambda, a
    custom call). Non-persistent buffers (a causal mask, rotary ``inv_freq``) are not
    carried, as a checkpoint leaves them out.

    ``strict=True`` raises :class:`unitree.PortError` for any difference or anything it
    cannot decide, naming every one, and writes nothing; ``strict=False`` copies what
    matches and reports the rest.

    **The check.** ``check``: example inputs for the source (an array, a tuple of arrays,
    or a :class:`Check` with the destination's inputs and tolerances). After writing, both
    models run natively on them and their outputs are compared (:func:`unitree.compare`);
    a mismatch puts back every value written and raises :class:`unitree.PortError` naming
    the first matched layer whose output differs and the largest difference. With a check,
    what would otherwise be refused as undecidable is tried instead and proven by the
    outputs: layers paired in their order where names do not decide, settings one side
    cannot report, and unknown layouts (each candidate in turn; the report says which one
    reproduced the outputs). ``layouts`` decides unknown layouts explicitly:
    ``{layer path: "channels_last" or "channels_first"}`` for the way the input of that
    dense layer was flattened (or its output unflattened), in whichever model has the layer
    at that path and cannot say; ``"source:path"`` or ``"destination:path"`` names one
    model's layer where both have that path.

    ``error_if_nonfinite=True`` refuses a NaN or an infinity in any source value
    (:class:`unitree.NonFiniteError`), and nothing is written. ``src`` and ``dst`` are
    trees, nodes, or native models (wrapped first).

    Returns:
        A :class:`PortReport`: the pairs and the rule that matched each, ties kept and
        split, settings that differ, what ``strict=False`` skipped, notes, and the check's
        :class:`unitree.Comparison` (``report.check``).

    Raises:
        PortError: under ``strict``, any difference or undecidable pairing, setting or
            layout, every one named; with or without it, a ``rename=`` pattern that matches
            no source layer, maps one onto no destination layer or onto one that does not
            fit, or maps two onto one; a check whose outputs differ. Nothing is written (a
            failed check puts back what it wrote).
        NonFiniteError: with ``error_if_nonfinite=True``, a NaN or an infinity.
    """
    s_view, d_view = view_of(src), view_of(dst)
    report = PortReport(s_view.adapter.name, d_view.adapter.name)
    if check is not None and not isinstance(check, Check):
        check = Check(check)
    checked = check is not None
    s_layers = _carried(layers(s_view), s_view.adapter.name, report)
    d_layers = _carried(layers(d_view), d_view.adapter.name, report)
    s_layers, d_layers = _split_codecs(rename, s_layers, d_layers)
    renamed = _renamer(rename, s_layers, d_layers, (s_view.adapter.name, d_view.adapter.name))
    cuts: dict[tuple[int, int], tuple[int, int]] = {}
    pairs, problems, left_s, left_d = _match(
        s_layers, d_layers, renamed, s_view, d_view, checked, cuts
    )
    left_s = _tied_through(left_s, s_layers, pairs, report)
    left_d = _tied_through(left_d, d_layers, pairs, report)
    near = _nearest(left_s, left_d)
    for s in left_s:
        d = near.get(id(s))
        problems.append(
            f"source layer {_describe(s, s_view.adapter.name)}: no destination layer matches it"
            + (
                f"; the nearest, {_describe(d, d_view.adapter.name)}, does not fit: {_why_not(s, d)}"
                if d
                else ""
            )
        )
    problems += [
        f"destination layer {_describe(d, d_view.adapter.name)}: no source layer matches it"
        for d in left_d
    ]
    if not strict:
        report.skipped, problems = problems, []

    # what each destination tensor takes, checked
    s_slots = slots(s_view, s_layers)
    s_slot = {key: slot for slot in s_slots for key in slot.keys}
    d_slots = slots(d_view, d_layers)
    d_slot = {key: slot for slot in d_slots for key in slot.keys}
    takes: dict[int, list[tuple[Slot, str]]] = {}  # id(dst slot) -> [(src slot, src key)]
    unknown: list[_Unknown] = []  # destination leaves whose layout is to be decided
    used: set[str] = set()  # the keys of layouts= that named a layer of unknown layout
    parts: dict[int, slice] = {}  # id(dst slot) -> the rows of its source it takes (a split)
    casting = "unsafe" if cast else "safe"
    for s, d, rule in pairs:
        s_shapes, d_shapes = s.shapes(), d.shapes()
        notes = [n for n in (s.codec and s.codec.note, d.codec and d.codec.note) if n]
        cut = cuts.get((id(s), id(d)))
        leafmap = (
            {leaf: leaf for leaf in d_shapes} if cut else _leaves(s, d, checked, named=True) or {}
        )
        for leaf in d_shapes:
            if leaf not in leafmap:
                notes.append(f"{leaf} kept: not in the {s_view.adapter.name} layer")
                continue
            source = leafmap[leaf]
            want = numpy_dtype(d.dtype(leaf))
            have = numpy_dtype(s.dtype(source))
            if not np.can_cast(have, want, casting):
                why = " (a lossy cast: pass cast=True to allow it)" if not cast else ""
                problems.append(
                    f"{join(s.path, source)}: dtype {have} in the source, {want} in {join(d.path, leaf)}{why}"
                )
            mixed = _mixed(s, d, source, leaf, s_view, d_view)
            if mixed:
                (problems if strict else notes).append(f"{join(s.path, source)}: {mixed}")
            found = _layout(
                s,
                d,
                (source, leaf),
                s_view,
                d_view,
                layouts or {},
                id(d_slot[join(d.path, leaf)]),
                used,
            )
            if not checked and any(len(u.converts) > 1 for u in found):
                (problems if strict else notes).append(_undecided(s, d, (source, leaf), found))
            else:
                unknown += found
            src_slot = s_slot[join(s.path, source)]
            takes.setdefault(id(d_slot[join(d.path, leaf)]), []).append(
                (src_slot, join(s.path, source))
            )
            if cut:
                parts[id(d_slot[join(d.path, leaf)])] = slice(*cut)
        notes += [
            f"{leaf} dropped: not in the {d_view.adapter.name} layer"
            for leaf in s_shapes
            if leaf not in leafmap.values()
        ]
        if None in (s.kind, d.kind) and (s.adapter.name, s.type_name) != (
            d.adapter.name,
            d.type_name,
        ):
            stranger = s if s.kind is None else d
            notes.append(
                f"copied as stored, paired by name: {stranger.type_name} is a type unitree's tables do "
                "not know, so neither its layout rules nor its settings are known (check= proves the "
                "port; ut.register_layer gives the type a kind)"
            )
            # no kind: neither side's kind was compared
            report.pairs.append(Pair(s.path, d.path, None, rule, "; ".join(dict.fromkeys(notes))))
            continue
        differences, unreported = _settings(s, d, s_view, d_view, report)
        if strict:
            problems += differences
        if unreported:
            if strict and not checked:
                problems += unreported
            else:
                notes += unreported
        if rule == "order":
            notes.append("paired by order: the names do not decide (proven by the check)")
            rule = "structure"
        note = "; ".join(dict.fromkeys(notes))  # both sides' codecs may say the same
        report.pairs.append(Pair(s.path, d.path, d.kind or s.kind, rule, note))

    unused = sorted(set(layouts or {}) - used)
    if unused:
        raise PortError(
            f"Cannot port: layouts= names {', '.join(map(repr, unused))}, which is no layer whose layout the models "
            "leave unknown (a layer path of either model, or 'source:' / 'destination:' and "
            "one): a layout the model shows cannot be overridden. Nothing was written."
        )

    # ties: a source storage must stay one storage; a destination storage must get one value
    dst_of: dict[int, set[int]] = {}
    for d_slot_ in d_slots:
        for src_slot, _ in takes.get(id(d_slot_), []):
            dst_of.setdefault(id(src_slot), set()).add(id(d_slot_))
    for slot in s_slots:
        if len(slot.keys) > 1 and id(slot) in dst_of:
            (report.ties_kept if len(dst_of[id(slot)]) == 1 else report.ties_split).append(
                tuple(slot.keys)
            )
    if report.ties_split and strict:
        problems += [
            f"tied in the source, separate in the destination: {' = '.join(t)} (pass strict=False to copy it into each)"
            for t in report.ties_split
        ]
    for d_slot_ in d_slots:
        sources = {id(s) for s, _ in takes.get(id(d_slot_), [])}
        if len(sources) > 1:
            keys = [k for _, k in takes[id(d_slot_)]]
            first = slot_value(takes[id(d_slot_)][0][0], {})
            if not all(np.array_equal(first, slot_value(s, {})) for s, _ in takes[id(d_slot_)][1:]):
                problems.append(
                    f"{' = '.join(d_slot_.keys)} are one storage in the destination but {', '.join(keys)} hold different values in the source"
                )

    if problems:
        raise PortError(
            f"Cannot port the {s_view.adapter.name} model into the {d_view.adapter.name} model; nothing was written:\n  "
            + "\n  ".join(problems)
        )

    cache: dict[int, dict[str, np.ndarray]] = {}
    matched = [(s.path, s.module, d.path, d.module) for s, d, _ in pairs]
    choices = _choices(unknown)
    # a check may undo writes that succeeded: then every one is journaled
    journal = Journal(every=check is not None or error_if_nonfinite)
    try:
        passed = []  # (candidates, conversions, comparison) whose outputs match
        for chosen, choice in choices:
            report.tensors = report.bytes = report.dlpack = 0
            write_all(
                _writes(d_slots, takes, cache, choice, report, parts), error_if_nonfinite, journal
            )
            if check is None:
                break
            report.check = compare_models(
                s_view,
                d_view,
                matched,
                *check[:5],
                src_kwargs=check.kwargs,
                dst_kwargs=check.kwargs,
            )
            if report.check.ok:
                passed.append((chosen, choice, report.check))
        if check is not None:

            def values(choice: dict[int, Callable[[np.ndarray], np.ndarray]]) -> list[Any]:
                """What a choice writes into the leaves whose layout was unknown."""
                out = []
                for slot in sorted({u.slot for u in unknown}):
                    value = slot_value(takes[slot][0][0], cache)
                    out.append(choice[slot](value) if slot in choice else value)
                return out

            _proven(passed, values, report, unknown, s_view.adapter.name, d_view.adapter.name)
            chosen, choice, report.check = passed[0]
            if choice is not choices[-1][1]:  # written last: another candidate's values
                report.tensors = report.bytes = report.dlpack = 0
                writes = _writes(d_slots, takes, cache, choice, report, parts)
                write_all(writes, error_if_nonfinite, journal)
            report.notes += [
                f"{u.key} ({u.side}): {chosen[_group(u)]}, the layout whose outputs match "
                f"(unknown from the model: {u.why})"
                for u in unknown
                if len(u.converts) > 1
            ]
    except BaseException:
        journal.undo()
        raise
    finally:
        journal.close()
    return report


def _proven(
    passed: list[tuple[dict[str, str], Any, Comparison]],
    values: Callable[[Any], list[np.ndarray]],
    report: PortReport,
    unknown: list[_Unknown],
    src: str,
    dst: str,
) -> None:
    """Raise unless exactly one of the candidates tried reproduced the outputs: none is a
    port that computes something else; several means the example inputs cannot tell them
    apart (constant inputs, a ReLU that zeroes everything), and picking one would be a guess,
    unless they write the same values (both models' layouts unknown: the same guess on both
    sides cancels out)."""
    if len(passed) > 1:
        first = values(passed[0][1])
        passed[1:] = [p for p in passed[1:] if not all(map(np.array_equal, first, values(p[1])))]
    if len(passed) == 1:
        return
    if not passed:
        assert report.check is not None
        raise PortError(
            f"The port of the {src} model into the {dst} model computes something else; every "
            f"value written was put back:\n  {describe_mismatch(report.check)}"
            + (f"\n  (tried each layout of {', '.join(u.key for u in unknown)})" if unknown else "")
        )
    shown = "; ".join(", ".join(f"{k}: {v}" for k, v in chosen.items()) for chosen, _, _ in passed)
    raise PortError(
        f"The port of the {src} model into the {dst} model cannot be proven by these inputs: "
        f"each of these layouts reproduces the outputs ({shown}); every value written was put "
        "back. Pass inputs that tell them apart (random values, not constants), or say which "
        "it is with layouts=."
    )


def _writes(
    d_slots: list[Slot],
    takes: dict[int, list[tuple[Slot, str]]],
    cache: dict[int, dict[str, np.ndarray]],
    choice: dict[int, Any],
    report: PortReport,
    parts: dict[int, slice] | None = None,
) -> Iterable[tuple[Any, Callable[[], Any]]]:
    """(Param, thunk) for every destination tensor that takes a source value; ``choice``:
    {id(destination slot): a function converting its canonical value} for unknown layouts."""
    plan: dict[int, tuple[Layer, dict[str, Callable[[], Any]]]] = {}
    for d_slot_ in d_slots:
        if id(d_slot_) not in takes:
            continue
        src_slot = takes[id(d_slot_)][0][0]
        want = numpy_dtype(d_slot_.layer.dtype(d_slot_.leaf))
        convert = choice.get(id(d_slot_))
        part = (parts or {}).get(id(d_slot_))

        def value(
            s: Slot = src_slot, w: np.dtype = want, f: Any = convert, part: Any = part
        ) -> np.ndarray:
            v = slot_value(s, cache)
            v = v if part is None else v[part]
            return (v if f is None else f(v)).astype(w, copy=False)

        tensor = None if convert or part else _dlpack(src_slot, d_slot_)
        if tensor is not None:
            report.dlpack += 1
        plan.setdefault(id(d_slot_.layer), (d_slot_.layer, {}))[1][d_slot_.leaf] = (
            value if tensor is None else lambda t=tensor, v=value: Foreign(t, v)
        )
        shape = d_slot_.layer.shapes()[d_slot_.leaf] or ()
        report.tensors += 1
        report.bytes += math.prod(shape) * want.itemsize
    return (w for layer, values in plan.values() for w in layer.writes(values))


def _carried(listed: list[Layer], backend: str, report: PortReport) -> list[Layer]:
    """The layers a port carries: parameters and persistent buffers only, as a checkpoint
    holds. A non-persistent buffer (a causal mask, rotary ``inv_freq``, ``position_ids``)
    is derived by its model, and the other framework may compute it instead: a note."""
    out, left = [], []
    for layer in listed:
        if layer.codec is None:
            for leaf in [leaf for leaf in layer.params if not layer.persistent(leaf)]:
                left.append(join(layer.path, leaf))
                del layer.params[leaf]
        if layer.params:
            out.append(layer)
    if left:
        report.notes.append(
            f"not carried: the non-persistent buffers of the {backend} model, which it derives "
            f"and a checkpoint leaves out ({', '.join(left)})"
        )
    return out


def _tied_through(
    left: list[Layer],
    listed: list[Layer],
    pairs: list[tuple[Layer, Layer, str]],
    report: PortReport,
) -> list[Layer]:
    """The unmatched layers ``left`` (of one side, all of whose layers are ``listed``) but
    those whose every tensor is tied to a tensor of a matched layer of that side (a language
    model's head tied to its embedding, against a model that calls ``embed.attend``): the
    tie carries them, and a note says through which."""
    matched = {id(layer) for pair in pairs for layer in pair[:2]}
    owner: dict[int, str] = {}
    for layer in listed:
        if id(layer) in matched and layer.codec is None:
            for leaf, p in layer.params.items():
                owner.setdefault(id(p), join(layer.path, leaf))
    out = []
    for layer in left:
        through = [owner.get(id(p)) for p in layer.params.values()]
        if layer.codec is not None or not all(through):
            out.append(layer)
            continue
        ties = ", ".join(
            f"{join(layer.path, leaf)} = {o}" for leaf, o in zip(layer.params, through)
        )
        report.notes.append(
            f"{layer.path}: every tensor is tied to a ported one ({ties}): the tie carries it"
        )
    return out


def _mixed(s: Layer, d: Layer, s_leaf: str, d_leaf: str, s_view: View, d_view: View) -> str | None:
    """Why a tied leaf fed by a channels-last flatten at some of its uses only cannot be ported
    to a framework where it is not so (no one layout serves all its uses), or None."""
    sp = s.params.get(s_leaf) if s.codec is None else None
    dp = d.params.get(d_leaf) if d.codec is None else None
    tied = [v.adapter.name for v, p in ((s_view, sp), (d_view, dp)) if p is not None and v.mixed(p)]
    if len(tied) != 1:  # on neither side, or on both alike (Keras to Flax)
        return None
    return (
        f"tied, and fed by a channels-last flatten at some of its uses only in the {tied[0]} "
        "model: no one layout serves every use in the other framework, whose outputs would differ"
    )


def _match(
    S: list[Layer],
    D: list[Layer],
    renamed: Callable[[str], str],
    s_view: View,
    d_view: View,
    checked: bool,
    cuts: dict[tuple[int, int], tuple[int, int]] | None = None,
) -> tuple[list[tuple[Layer, Layer, str]], list[str], list[Layer], list[Layer]]:
    """(source layer, destination layer, rule) pairs in destination order, the undecidable
    candidates (as problems), and the source and destination layers left unmatched.

    By path first: a renamed source path equal to a destination path, or the same path with
    each position in a sequential container read as the rank among the container's
    parameterized children (torch counts its ReLU modules, Keras and Gluon fold activations
    into Dense: across frameworks the k-th parameterized layer matches the k-th). Then the
    rest by structure (:func:`_align`). ``checked``: the port's outputs will be checked, so
    candidates that only their traversal order decides are paired in that order.
    """
    s_keys, d_keys = _ranked(S), _ranked(D)
    by_key: dict[Any, list[Layer]] = {}
    matched: dict[int, tuple[Layer, str]] = {}  # id(dst layer) -> (src layer, rule)
    taken: set[int] = set()
    by_path = {d.path: d for d in D}
    for s in S:
        new = renamed(s.path)
        if isinstance(new, tuple):  # one source layer, several destination layers: its rows
            ds = [by_path[p] for p in new]
            spans = _spans(s, ds)
            assert spans is not None  # _renamer checked it
            for d, span in zip(ds, spans):
                matched[id(d)] = (s, "rename")
                if cuts is not None:
                    cuts[(id(s), id(d))] = span
            taken.add(id(s))
            continue
        by_key.setdefault(("rename", new) if new != s.path else s_keys[id(s)], []).append(s)
    for d in D:
        if id(d) in matched:
            continue
        for key, rule in ((("rename", d.path), "rename"), (d_keys[id(d)], "path")):
            s = next((s for s in by_key.get(key, []) if id(s) not in taken), None)
            # a path with names (``encoder.layer.0``), not positions alone: a twin's
            named = rule == "rename" or not d.at or not all(map(_is_position, d.at))
            if s is not None and _fits(s, d, checked, named):
                matched[id(d)] = (s, rule)
                taken.add(id(s))
                break
    rest_s = [s for s in S if id(s) not in taken]
    rest_d = [d for d in D if id(d) not in matched]
    aligned, undecided = _align(rest_s, rest_d, checked)
    for s, d, rule in aligned:
        matched[id(d)] = (s, rule)
        taken.add(id(s))
    problems = []
    for group_s, group_d in undecided:
        taken.update(id(s) for s in group_s)
        matched.update((id(d), (d, "")) for d in group_d)  # refused below, not unmatched
        problems.append(
            f"cannot decide which of {', '.join(_describe(s, s_view.adapter.name) for s in group_s)} "
            f"pairs with which of {', '.join(_describe(d, d_view.adapter.name) for d in group_d)}: "
            "the same kind and shapes, and their names do not say (pass rename= to pair them, "
            "or check= inputs to pair them in order and prove it by the outputs)"
        )
    pairs = [(s, d, rule) for d in D for s, rule in [matched.get(id(d), (d, ""))] if rule]
    left_s = [s for s in S if id(s) not in taken]
    left_d = [d for d in D if id(d) not in matched]
    return pairs, problems, left_s, left_d


def _is_position(segment: Any) -> bool:
    return type(segment) is int or (isinstance(segment, str) and segment.isdigit())


def _ranked(layers_: list[Layer]) -> dict[int, tuple[Any, ...]]:
    """{id(layer): its path with each position replaced by its rank among the positional
    children of its container that hold parameters, and their number}: the k-th of n
    parameterized layers of a sequential container is ("#", k, n), whatever parameterless
    layers came before it; containers with another number of them (one nests a Sequential
    the other spells flat) match by structure instead."""
    holders: dict[tuple[Any, ...], set[int]] = {}  # container path -> positions with leaves
    for layer in layers_:
        at = layer.at
        for n, segment in enumerate(at):
            if _is_position(segment):
                holders.setdefault(at[:n], set()).add(int(segment))
    rank = {
        container: {p: k for k, p in enumerate(sorted(positions))}
        for container, positions in holders.items()
    }
    out = {}
    for layer in layers_:
        at = layer.at
        out[id(layer)] = tuple(
            ("#", rank[at[:n]][int(segment)], len(rank[at[:n]]))
            if _is_position(segment)
            else segment
            for n, segment in enumerate(at)
        )
    return out


def _name(layer: Layer) -> str | None:
    """The layer's own name, or None for a position (or the root)."""
    last = layer.at[-1] if layer.at else None
    return None if last is None or _is_position(last) else str(last)


def _align(
    S: list[Layer], D: list[Layer], checked: bool
) -> tuple[list[tuple[Layer, Layer, str]], list[tuple[list[Layer], list[Layer]]]]:
    """Pair the layers left over by path, keeping the traversal order of both sides: the
    alignment of the whole sequences with the most pairs that fit (then the most with the same
    name), not a walk that stops at the first misfit. Returns the pairs and the groups of
    candidates nothing decides between.

    Among layers of the same kind and shapes (the q, k and v projections of an attention
    module), the order decides only where both sides are sequential (they differ only by
    positions: their order is the forward order); otherwise names decide: the same name
    pairs, whatever the registration order (torch's BART registers k, v, q; Flax's q, k,
    v). Where names differ, the registration order is all that is left, which no framework
    promises to be the order of the calls: such a group is undecided, unless ``checked``.
    A layer left over beside same-kind, same-shape layers that did pair makes them
    undecided too (which of them stays out?).
    """
    n, m = len(S), len(D)
    if not n or not m:
        return [], []
    fit = [[_fits(s, d, checked) for d in D] for s in S]
    same = [[_name(s) is not None and _name(s) == _name(d) for d in D] for s in S]
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            score = max(below[j], row[j + 1])
            if fit[i][j]:
                score = max(score, below[j + 1] + 1000 + same[i][j])
            row[j] = score
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if fit[i][j] and best[i][j] == best[i + 1][j + 1] + 1000 + same[i][j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1

    def kind(layer: Layer) -> tuple[Any, ...]:  # candidates for each other: kind and shapes
        k = SAME_KIND.get(layer.kind or "", layer.kind)
        return (k, layer.type_name if k is None else "", _signature(layer))

    groups: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for i, j in pairs:
        groups.setdefault(kind(S[i]), []).append((i, j))
    paired_s = {i for i, _ in pairs}
    paired_d = {j for _, j in pairs}
    out: list[tuple[Layer, Layer, str]] = []
    undecided: list[tuple[list[Layer], list[Layer]]] = []
    for key, group in groups.items():
        gs, gd = [S[i] for i, _ in group], [D[j] for _, j in group]
        left = [S[i] for i in range(n) if i not in paired_s and kind(S[i]) == key]
        left += [D[j] for j in range(m) if j not in paired_d and kind(D[j]) == key]
        if left and not checked:  # which of them stays out?
            undecided.append((gs + [x for x in left if x in S], gd + [x for x in left if x in D]))
            continue
        if len(group) == 1 or (_sequential(gs) and _sequential(gd)):
            out += [(s, d, "structure") for s, d in zip(gs, gd)]  # the forward order decides
            continue
        names_s, names_d = _names(gs), _names(gd)
        by_name = dict(zip(names_d, gd))
        rest_s = [s for s, name in zip(gs, names_s) if name not in by_name]
        rest_d = [d for d, name in zip(gd, names_d) if name not in set(names_s)]
        out += [(s, by_name[x], "structure") for s, x in zip(gs, names_s) if x in by_name]
        if len(rest_s) > 1 and not checked:
            undecided.append((rest_s, rest_d))
        else:
            out += [
                (s, d, "order" if len(rest_s) > 1 else "structure") for s, d in zip(rest_s, rest_d)
            ]
    return out, undecided


def _sequential(group: list[Layer]) -> bool:
    """Whether the layers differ only by positions (in sequential containers): their
    traversal order is then the forward order. Attribute names give only the order of
    registration, which no framework promises to be the order of the calls."""
    names = {tuple(x for x in layer.at if not _is_position(x)) for layer in group}
    return len(names) == 1


def _names(group: list[Layer]) -> list[Any]:
    """Each layer's name: the shortest tail of its path's names that no other layer of the
    group shares (``k_proj``; ``encoder.fc`` beside ``decoder.fc``), None where none is."""
    named = [tuple(str(x) for x in layer.at if not _is_position(x)) for layer in group]
    for n in range(1, max(map(len, named), default=0) + 1):
        tails = [x[-n:] if x else None for x in named]
        if len(set(tails)) == len(tails):
            return tails
    return [None] * len(group)


def _signature(layer: Layer) -> tuple[Any, ...]:
    return tuple(layer.shapes().items())


def _dlpack(src: Slot, dst: Slot) -> Any:
    """The source tensor itself, for a leaf whose layout and dtype need no change on either
    side: it then crosses frameworks through DLPack, with no copy through the host on a GPU."""
    if src.layer.codec or dst.layer.codec:
        return None
    p, q = src.layer.params[src.leaf], dst.layer.params[dst.leaf]
    if (
        transform_of(p)
        or transform_of(q)
        or p.dtype != q.dtype
        or type(adapter_of(q)).write_dlpack is Adapter.write_dlpack
    ):
        return None
    return adapter_of(p).dlpack(leaf_of(p))


def _renamer(
    rename: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    S: list[Layer],
    D: list[Layer],
    backends: tuple[str, str],
) -> Callable[[str], str]:
    """The function that maps a source layer path through ``rename``'s (pattern, replacement)
    pairs, in order (``re.sub``). The user said which layer goes where, so any way the port
    could not do exactly that raises a ``PortError`` naming the pattern, strict or not: a
    pattern that matches no source layer path, one that maps a source layer onto a path no
    destination layer has, or onto a layer that does not fit it, or two source layers onto
    one destination layer."""
    if not rename:
        return lambda path: path
    patterns = _patterns(rename)
    used: dict[str, list[str]] = {p: [] for p, _, _ in patterns}

    def renamed(path: str, note: bool = False) -> Any:
        hit = (lambda text: used[text].append(path)) if note else None
        paths = _renamed(patterns, path, hit)
        return paths[0] if len(paths) == 1 else tuple(paths)

    def which(path: str) -> str:
        return ", ".join(repr(p) for p, paths in used.items() if path in paths)

    problems = []
    sources, destinations = [s.path for s in S], [d.path for d in D]
    by_path = {d.path: d for d in D}
    onto: dict[str, list[Layer]] = {}
    for s in S:
        new = renamed(s.path, note=True)
        if isinstance(new, tuple):
            missing = [x for x in new if x not in by_path]
            if missing:
                problems.append(
                    f"rename {which(s.path)} splits the source layer {s.path!r} into "
                    f"{', '.join(map(repr, missing))}, which are no destination layers"
                )
            elif _spans(s, [by_path[x] for x in new]) is None:
                problems.append(
                    f"rename {which(s.path)} splits {_describe(s, backends[0])} into "
                    + ", ".join(_describe(by_path[x], backends[1]) for x in new)
                    + ", whose leaves are no rows of it (the same kind and leaves, every axis "
                    "but the first the same, the first adding up)"
                )
            for x in new:
                onto.setdefault(x, []).append(s)
            continue
        onto.setdefault(new, []).append(s)
        if new == s.path:
            continue
        d = by_path.get(new)
        if d is None:
            problems.append(
                f"rename {which(s.path)} maps the source layer {s.path!r} to {new!r}, "
                f"which is no destination layer{_closest(new, destinations)}"
            )
        elif not _fits(s, d, named=True):
            problems.append(
                f"rename {which(s.path)} maps {_describe(s, backends[0])} onto "
                f"{_describe(d, backends[1])}, which does not fit it"
            )
    for new, group in onto.items():
        moved = [s.path for s in group if renamed(s.path) != s.path]
        group = list({id(s): s for s in group}.values())
        if len(group) > 1 and moved:
            problems.append(
                f"rename {', '.join(dict.fromkeys(which(m) for m in moved))} maps "
                f"{len(group)} source layers ({', '.join(repr(s.path) for s in group)}) onto "
                f"the one destination layer {new!r}"
            )
    for text, paths in used.items():
        if not paths:
            problems.insert(
                0,
                f"rename {text!r} matches no source layer path{_closest(text, sources, 'source')}",
            )
    if problems:
        raise PortError(
            "Cannot port: rename= does not say what it means; nothing was written:\n  "
            + "\n  ".join(problems)
        )
    return renamed


def _patterns(rename: Any) -> list[tuple[str, re.Pattern[str], Any]]:
    """``rename=`` as (pattern text, compiled pattern, replacement), in order.

    Raises:
        PortError: it is no mapping or list of (pattern, replacement) pairs of regular
            expressions.
    """
    try:
        items = list(rename.items() if isinstance(rename, Mapping) else rename)
        return [(p, re.compile(p), r) for p, r in items]
    except (re.error, TypeError, ValueError) as e:
        raise PortError(
            "Cannot port: rename= must map regular expressions to replacements "
            f"({{pattern: replacement}} or [(pattern, replacement), ...]); {e}. Nothing was written."
        ) from None


def _renamed(
    patterns: list[tuple[str, re.Pattern[str], Any]],
    path: str,
    hit: Callable[[str], None] | None = None,
) -> list[str]:
    """``path`` through each (text, pattern, replacement) in turn (``re.sub``); a tuple of
    replacements makes one path several (a layer split along its rows, in that order).
    ``hit(text)`` is told each pattern that matched.

    Raises:
        PortError: a replacement ``re.sub`` cannot make (a bad group reference).
    """
    paths = [path]
    for text, pattern, replacement in patterns:
        if hit is not None and any(pattern.search(x) for x in paths):
            hit(text)
        several = isinstance(replacement, (tuple, list))
        try:
            out: list[str] = []
            for x in paths:
                if several and pattern.search(x):
                    out += [pattern.sub(r, x) for r in replacement]
                else:
                    out.append(x if several else pattern.sub(replacement, x))
            paths = out
        except (re.error, IndexError, TypeError) as e:
            raise PortError(
                f"Cannot port: rename {text!r}: {replacement!r} is no replacement for it ({e}). "
                "Nothing was written."
            ) from None
    return paths


def _spans(s: Layer, ds: list[Layer]) -> list[tuple[int, int]] | None:
    """The rows (along the first axis of every canonical leaf: a dense layer's output
    features, a conv's output channels) of ``s`` that each of ``ds`` holds, in order, or None
    where they are no such split: the same kind, the same leaves, every axis but the first
    the same, the first adding up to the source's."""
    if not ds or any(SAME_KIND.get(d.kind, d.kind) != SAME_KIND.get(s.kind, s.kind) for d in ds):
        return None
    if s.kind is None:
        return None
    a = s.shapes()
    spans, start = [], 0
    for d in ds:
        b = d.shapes()
        if set(b) != set(a) or any(not b[k] or b[k][1:] != a[k][1:] for k in b):
            return None
        rows = {b[k][0] for k in b}
        if len(rows) != 1:
            return None
        n = rows.pop()
        spans.append((start, start + n))
        start += n
    if any(a[k][0] != start for k in a):
        return None
    return spans


def _parts(layer: Layer) -> list[Layer]:
    """A codec's layer as the plain layers of its sublayers (each its own leaves, canonical),
    in traversal order: what a port pairs when rename= names them and not the whole."""
    out: dict[str, Layer] = {}
    adapter = layer.adapter
    for rel, p in layer.params.items():
        owner, _, leaf = rel.rpartition(".")
        part = out.get(owner)
        if part is None:
            module, at = layer.module, layer.at
            for key in owner.split(".") if owner else ():
                seg = adapter.segment(module, key)
                module = adapter.child(module, seg)
                at = (*at, seg)
            part = out[owner] = Layer(adapter, at, module, None)
        part.params[leaf] = p
    return list(out.values())


def _split_codecs(rename: Any, S: list[Layer], D: list[Layer]) -> tuple[list[Layer], list[Layer]]:
    """Codec layers (an attention layer computed as PyTorch's fused in_proj_weight) replaced
    by their parts where rename= pairs the parts: a renamed source path (or a renamed part of
    a source codec) that is the path of a part of a destination codec."""
    if not rename:
        return S, D
    try:
        patterns = _patterns(rename)
    except PortError:
        return S, D  # _renamer says what is wrong

    def renamed(path: str) -> set[str]:
        try:
            return set(_renamed(patterns, path))
        except PortError:
            return set()  # _renamer says what is wrong

    d_parts = {id(d): _parts(d) for d in D if d.codec is not None}
    s_parts = {id(s): _parts(s) for s in S if s.codec is not None}
    d_paths = {d.path for d in D} | {x.path for ps in d_parts.values() for x in ps}
    targets: set[str] = set()
    for s in S:
        targets |= renamed(s.path)
        for x in s_parts.get(id(s), ()):
            targets |= renamed(x.path)

    def split(listed: list[Layer], parts: dict[int, list[Layer]], wanted: Any) -> list[Layer]:
        out: list[Layer] = []
        for layer in listed:
            ps = parts.get(id(layer))
            out += ps if ps and wanted(layer, ps) else [layer]
        return out

    D2 = split(D, d_parts, lambda d, ps: any(x.path in targets for x in ps))
    S2 = split(
        S,
        s_parts,
        lambda s, ps: (
            not (renamed(s.path) & d_paths) and any(renamed(x.path) & d_paths for x in ps)
        ),
    )
    return S2, D2


def _closest(path: str, paths: list[str], side: str = "destination") -> str:
    import difflib

    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.3)
    shown = close or paths[:5]
    if not shown:
        return f" (the {side} model has no layers)"
    return f" ({'closest' if close else 'the'} {side} layer paths: {', '.join(map(repr, shown))})"


def _fits(s: Layer, d: Layer, checked: bool = False, named: bool = False) -> bool:
    return _leaves(s, d, checked, named) is not None


def _leaves(
    s: Layer, d: Layer, checked: bool = False, named: bool = False
) -> dict[str, str] | None:
    """{destination leaf: source leaf} if ``s`` fits ``d``, else None.

    Layers of one kind fit with the same canonical leaves and shapes. A layer type the tables
    do not know (no kind: ``ut.register_layer`` gives one) keeps its native leaves, and its
    function is not known: it fits the same type of the same framework, any layer of no kind
    when ``checked`` (the outputs will prove the port), and otherwise only a layer at the same
    named path (``named``: paired by name, as a checkpoint load pairs it, never by position
    or order), its tensors copied as stored (:func:`_as_stored`)."""
    a_kind, b_kind = (SAME_KIND.get(k, k) for k in (s.kind, d.kind))
    same_type = s.adapter.name == d.adapter.name and s.type_name == d.type_name
    a, b = s.shapes(), d.shapes()
    if a_kind == b_kind and (a_kind is not None or same_type):
        common = set(a) & set(b)
        if not common or (set(a) ^ set(b)) - OPTIONAL:
            return None
        return (
            {leaf: leaf for leaf in b if leaf in common}
            if all(a[leaf] == b[leaf] for leaf in common)
            else None
        )
    if s.codec or d.codec:
        return None
    if a_kind is None and b_kind is None and checked:  # the outputs will prove the pairing
        return _as_stored(a, b, checked)
    if None not in (a_kind, b_kind) or not named:
        return None
    return _as_stored(a, b, checked)


def _as_stored(
    a: Mapping[str, tuple[int, ...] | None],
    b: Mapping[str, tuple[int, ...] | None],
    checked: bool,
) -> dict[str, str] | None:
    """{destination leaf: source leaf} for a layer whose type one side's tables do not know,
    copied as stored, or None. Leaves pair by equal name, the rest by a shape only one of them
    has (torch's ``weight`` is Flax's ``embedding``). Each pair must have one shape that no
    other order of its axes gives (no two axes of the same length above 1), so that as stored
    is the only layout both shapes allow; a square matrix could be stored transposed, and
    only ``checked`` outputs can say."""
    a = {k: v for k, v in a.items() if k not in OPTIONAL}
    b = {k: v for k, v in b.items() if k not in OPTIONAL}
    if len(a) != len(b) or not a:
        return None
    out = {leaf: leaf for leaf in b if leaf in a}
    rest_a = [leaf for leaf in a if leaf not in out]
    for leaf in [leaf for leaf in b if leaf not in out]:
        same = [x for x in rest_a if a[x] == b[leaf]]
        if len(same) != 1 or sum(b[y] == b[leaf] for y in b if y not in out) != 1:
            return None
        out[leaf] = same[0]
        rest_a.remove(same[0])
    for leaf, source in out.items():
        shape = b[leaf]
        if shape is None or a[source] != shape:
            return None
        long = [n for n in shape if n > 1]
        if len(set(long)) != len(long) and not checked:
            return None
    return out


def _nearest(S: list[Layer], D: list[Layer]) -> dict[int, Layer]:
    """{id(source layer): the unmatched destination layer it was nearest to fitting}: the one
    at the same path (positions as ranks), or the only one left."""
    if len(S) == 1 and len(D) == 1:
        return {id(S[0]): D[0]}
    s_keys, d_keys = _ranked(S), _ranked(D)
    by_key = {d_keys[id(d)]: d for d in D}
    return {id(s): by_key[s_keys[id(s)]] for s in S if s_keys[id(s)] in by_key}


def _why_not(s: Layer, d: Layer) -> str:
    a_kind, b_kind = (SAME_KIND.get(k, k) for k in (s.kind, d.kind))
    if a_kind != b_kind or a_kind is None:
        kinds = [
            f"a {kind} layer"
            if kind
            else f"a {layer.type_name}, a type unitree's tables do not know"
            for kind, layer in ((a_kind, s), (b_kind, d))
        ]
        if None not in (a_kind, b_kind):
            return f"{kinds[0]} against {kinds[1]}"
        if s.codec or d.codec or _as_stored(s.shapes(), d.shapes(), False) is None:
            why = (
                "its tensors cannot be copied as stored: their leaves or shapes differ, or a "
                "shape whose axes could be stored in another order (a square matrix) leaves "
                "the layout unknown"
            )
        else:
            why = "a type it does not know pairs only with the layer at the same named path"
        return (
            f"{kinds[0]} against {kinds[1]}: {why} (ut.register_layer gives a type a kind and "
            "rules; rename= pairs it by name; check= proves a port)"
        )
    a, b = s.shapes(), d.shapes()
    if set(a) ^ set(b):
        return f"the leaves differ ({', '.join(a)} against {', '.join(b)})"
    if any(a[leaf] != b[leaf] for leaf in a):
        return "the shapes differ"
    return "it fits, but pairing them would break the order of the other layers' pairs"


def _describe(layer: Layer, backend: str) -> str:
    shapes = ", ".join(f"{leaf} {shape}" for leaf, shape in layer.shapes().items())
    return f"{layer.path or '(root)'} ({backend} {layer.type_name}: {shapes})"


def _settings(
    s: Layer, d: Layer, s_view: View, d_view: View, report: PortReport
) -> tuple[list[str], list[str]]:
    """The pair's settings compared by meaning (``unitree._settings``): those that differ (they
    also go to the report) and those one side cannot report; notes on one-sided ones."""
    a = s_view.adapter.settings(s.module)
    b = d_view.adapter.settings(d.module)
    kind = d.kind or s.kind
    weight = d.shapes().get("weight")
    kernel = tuple(weight[2:]) if kind in CONVS and weight else None
    sides = (
        f"{s_view.adapter.name} layer {s.path or '(root)'} ({s.type_name})",
        f"{d_view.adapter.name} layer {d.path or '(root)'} ({d.type_name})",
    )
    where = f"{d.path or '(root)'}: "
    differences, unknown = compare_settings(kind, a, b, kernel, sides)
    report.notes += [where + note for note in one_sided_notes(a, b, sides)]
    report.settings += [where + x for x in differences]
    return [where + x for x in differences], [where + x for x in unknown]


class _Unknown(NamedTuple):
    """A destination tensor whose value depends on a layout unitree could not read from either
    model (``View.unknown``): one conversion of its canonical value per candidate."""

    key: str  # the destination leaf, as messages name it
    side: str  # "source" or "destination": whose layout is unknown
    why: str
    converts: dict[str, Callable[[np.ndarray], np.ndarray] | None]  # candidate -> conversion
    slot: int  # id of the destination slot


def _layout(
    s: Layer,
    d: Layer,
    leaves: tuple[str, str],
    s_view: View,
    d_view: View,
    layouts: Mapping[str, str],
    slot: int,
    used: set[str],
) -> list[_Unknown]:
    """The leaf's layouts that no model says (a flatten through an opaque step): one
    :class:`_Unknown` per side, with the candidates to try (the one ``layouts`` names, if
    it names the layer). Two models of one framework are no exception: the same opaque
    step may flatten in one order in one model and in the other in the other."""
    found = []
    for side, layer, view, leaf in (
        ("source", s, s_view, leaves[0]),
        ("destination", d, d_view, leaves[1]),
    ):
        p = layer.params.get(leaf) if layer.codec is None else None
        unknown = view.unknown(p) if p is not None else None
        if unknown is not None:
            found.append((side, layer, p, unknown, leaf))
    out = []
    for side, layer, p, unknown, leaf in found:
        key = f"{side}:{layer.path}"
        key = key if key in layouts else layer.path
        chosen = layouts.get(key)
        if chosen is not None:
            used.add(key)
        if chosen is not None and chosen not in unknown.candidates:
            raise PortError(
                f"Cannot port: layouts= says {layer.path!r} is {chosen!r}; its candidates are "
                f"{', '.join(map(repr, unknown.candidates))}. Nothing was written."
            )
        default = unknown.candidates[unknown.default]
        converts = {  # the default first: what a checkpoint of the model assumes
            name: _reruled(p, default, unknown.candidates[name], side == "source")
            for name in dict.fromkeys([unknown.default, *unknown.candidates])
            if chosen is None or name == chosen
        }
        out.append(_Unknown(join(layer.path, leaf), side, unknown.reason, converts, slot))
    return out


def _undecided(s: Layer, d: Layer, leaves: tuple[str, str], unknown: list[_Unknown]) -> str:
    u = next(u for u in unknown if len(u.converts) > 1)
    return (
        f"{join(s.path, leaves[0])} -> {join(d.path, leaves[1])}: the layout of the activations at the "
        f"{u.side} layer is unknown ({u.why}); pass check= inputs (the port tries each layout and keeps "
        f"the one whose outputs match) or layouts={{{u.key.rpartition('.')[0]!r}: "
        f"{' or '.join(map(repr, u.converts))}}}"
    )


def _reruled(
    p: Any, default: Any, rule: Any, source: bool
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The conversion of a canonical value read (source) or written (destination) through the
    ``default`` rule into one through ``rule``; None where they are the same rule."""
    if rule is default:
        return None
    shape = adapter_of(p).shape(leaf_of(p))

    def native(a: np.ndarray, r: Any) -> np.ndarray:
        return a if r is None or r.transform is None else r.transform.to_native(a, shape)

    def canonical(a: np.ndarray, r: Any) -> np.ndarray:
        return a if r is None or r.transform is None else r.transform.to_canonical(a)

    if source:  # what the default read gives, back to native, then read through ``rule``
        return lambda a: canonical(native(a, default), rule)
    return lambda a: canonical(native(a, rule), default)  # written through ``default``


def _choices(
    unknown: list[_Unknown],
) -> list[tuple[dict[str, str], dict[int, Callable[[np.ndarray], np.ndarray]]]]:
    """The layouts to try, in order, the defaults first: every combination of one candidate
    per layer whose layout is unknown (up to 64 combinations; beyond, one candidate for all
    of a side's layers): ({layer: candidate}, {id(destination slot): the conversion of the
    value it takes})."""
    groups: dict[str, list[str]] = {}  # "side layer" -> its candidates
    for u in unknown:
        groups.setdefault(_group(u), list(u.converts))
    if math.prod(len(c) for c in groups.values()) > 64:
        sides: dict[str, list[str]] = {}
        for key, names in groups.items():
            sides.setdefault(key.split(" ", 1)[0], names)
        picks = [
            {key: pick[key.split(" ", 1)[0]] for key in groups}
            for pick in (dict(zip(sides, c)) for c in itertools.product(*sides.values()))
        ]
    else:
        picks = [dict(zip(groups, c)) for c in itertools.product(*groups.values())]
    out = []
    for pick in picks:
        steps: dict[int, list[Callable[[np.ndarray], np.ndarray]]] = {}
        for u in sorted(unknown, key=lambda u: u.side != "source"):  # the source's first
            f = u.converts.get(pick[_group(u)])
            if f is not None:
                steps.setdefault(u.slot, []).append(f)
        out.append((pick, {slot: _chain(fs) for slot, fs in steps.items()}))
    return out


def _group(u: _Unknown) -> str:
    return f"{u.side} {u.key.rpartition('.')[0] or '(root)'}"


def _chain(steps: list[Callable[[np.ndarray], np.ndarray]]) -> Callable[[np.ndarray], np.ndarray]:
    def run(a: np.ndarray) -> np.ndarray:
        for f in steps:
            a = f(a)
        return a

    return run


def compare(
    src: Any,
    dst: Any,
    inputs: Any,
    *,
    dst_inputs: Any = None,
    dst_outputs: Callable[[Any], Any] | None = None,
    rename: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Comparison:
    """Run two models natively on example inputs and compare their outputs layer by layer:
    for debugging a port (one's own, or one ``ut.port`` refused). Nothing is written.

    The layers are paired as :func:`port` pairs them (with ``rename``; where names do not
    decide, in their order). ``inputs``: the source's positional inputs (an array or a tuple
    of arrays); ``dst_inputs``: the destination's, or a function making them from the
    source's (default: the same); ``dst_outputs``: a function mapping the destination's
    outputs into the source's layout. Per layer, outputs of the same shape are compared as
    they are, a channels-last output against a channels-first one after moving the channels
    axis, and anything else is "not comparable" (never a pass). ``rtol``/``atol`` default to
    the dtype's resolution (see ``unitree._check.tolerance``). ``kwargs``: keyword inputs of
    both models' calls (a Hugging Face model's ``attention_mask``).

    Returns:
        A :class:`unitree.Comparison`: a row per matched layer, in the source's order (its
        largest difference, tolerance and status), the outputs' row, ``ok`` and
        ``first_difference``; ``print`` shows the table.

    Raises:
        UnsupportedError: a framework whose models unitree cannot run.
        PortError: a ``rename=`` that does not say what it means.
        ValueTypeError: ``inputs`` given as a mapping (keyword inputs go in ``kwargs``).
    """
    s_view, d_view = view_of(src), view_of(dst)
    s_layers, d_layers = layers(s_view), layers(d_view)
    names = (s_view.adapter.name, d_view.adapter.name)
    renamed = _renamer(rename, s_layers, d_layers, names)
    pairs = _match(s_layers, d_layers, renamed, s_view, d_view, True)[0]
    matched = [(s.path, s.module, d.path, d.module) for s, d, _ in pairs]
    return compare_models(
        s_view,
        d_view,
        matched,
        inputs,
        dst_inputs,
        dst_outputs,
        rtol,
        atol,
        src_kwargs=kwargs,
        dst_kwargs=kwargs,
    )
