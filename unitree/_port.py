"""``ut.port``: copy every parameter and buffer of one model into another, across frameworks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple

import numpy as np

from ._adapter import Adapter
from ._canon import Layer, Slot, layers, slot_value, slots
from ._dtypes import numpy_dtype
from ._errors import PortError
from ._param import adapter_of, leaf_of, transform_of
from ._paths import join
from ._read import View
from ._tree import view_of
from ._write import Foreign, write_all
from .layouts import OPTIONAL, SAME_KIND


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


def port(
    src: Any,
    dst: Any,
    strict: bool = True,
    *,
    rename: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    cast: bool = False,
    error_if_nonfinite: bool = False,
) -> PortReport:
    """Copy every parameter and buffer of ``src`` into ``dst``, whatever their frameworks.

    Layers are matched by canonical path first; the layers left over are
    matched by structure: in traversal order, each with the same kind and the
    same canonical leaves and shapes (a Keras functional model against a
    torch Sequential, Gluon's ``Dense(activation=...)`` against ``Linear`` +
    ``ReLU``). ``rename`` maps regular expressions over source layer paths to
    replacements (``{r"^features\\.(\\d+)$": r"conv\\1"}``), applied before the
    path match. Everything is validated before anything is written: shapes,
    dtypes (converted only when lossless, unless ``cast=True``), ties (a tie in
    the source must be one storage in the destination), and layer settings
    that change results without being parameters (norm epsilons, batch-norm
    momentum, conv padding, stride, dilation, groups, attention heads, recurrent
    activations). ``strict=True`` raises
    :class:`unitree.PortError` for any difference, naming every one, and
    writes nothing; ``strict=False`` copies what matches and reports the rest.
    ``error_if_nonfinite=True`` refuses a NaN or an infinity in any source
    value (:class:`unitree.NonFiniteError`), and nothing is written. ``src`` and ``dst``
    are trees, nodes, or native models (wrapped first).

    Returns:
        A :class:`PortReport`: the pairs and the rule that matched each, ties kept and
        split, settings that differ, what ``strict=False`` skipped, notes.

    Raises:
        PortError: under ``strict``, any difference, every one named; with or without it, a
            ``rename=`` pattern that matches no source layer, maps one onto no destination
            layer or onto one that does not fit, or maps two onto one. Nothing is written.
        NonFiniteError: with ``error_if_nonfinite=True``, a NaN or an infinity.
    """
    s_view, d_view = view_of(src), view_of(dst)
    report = PortReport(s_view.adapter.name, d_view.adapter.name)
    s_layers, d_layers = layers(s_view), layers(d_view)
    renamed = _renamer(rename, s_layers, d_layers, (s_view.adapter.name, d_view.adapter.name))
    pairs, problems = _match(s_layers, d_layers, renamed, s_view, d_view)
    if not strict:
        report.skipped, problems = problems, []

    # what each destination tensor takes, checked
    s_slots = slots(s_view, s_layers)
    s_slot = {key: slot for slot in s_slots for key in slot.keys}
    d_slots = slots(d_view, d_layers)
    d_slot = {key: slot for slot in d_slots for key in slot.keys}
    takes: dict[int, list[tuple[Slot, str]]] = {}  # id(dst slot) -> [(src slot, src key)]
    casting = "unsafe" if cast else "safe"
    for s, d, rule in pairs:
        s_shapes, d_shapes = s.shapes(), d.shapes()
        notes = [n for n in (s.codec and s.codec.note, d.codec and d.codec.note) if n]
        for leaf in d_shapes:
            if leaf not in s_shapes:
                notes.append(f"{leaf} kept: not in the {s_view.adapter.name} layer")
                continue
            want = numpy_dtype(d.dtype(leaf))
            have = numpy_dtype(s.dtype(leaf))
            if not np.can_cast(have, want, casting):
                why = " (a lossy cast: pass cast=True to allow it)" if not cast else ""
                problems.append(
                    f"{join(s.path, leaf)}: dtype {have} in the source, {want} in {join(d.path, leaf)}{why}"
                )
            mixed = _mixed(s, d, leaf, s_view, d_view)
            if mixed:
                (problems if strict else notes).append(f"{join(s.path, leaf)}: {mixed}")
            src_slot = s_slot[join(s.path, leaf)]
            takes.setdefault(id(d_slot[join(d.path, leaf)]), []).append(
                (src_slot, join(s.path, leaf))
            )
        notes += [
            f"{leaf} dropped: not in the {d_view.adapter.name} layer"
            for leaf in s_shapes
            if leaf not in d_shapes
        ]
        differences = _settings(s, d, s_view, d_view, report)
        if strict:
            problems += differences
        note = "; ".join(dict.fromkeys(notes))  # both sides' codecs may say the same
        report.pairs.append(Pair(s.path, d.path, d.kind or s.kind, rule, note))

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

    plan: dict[int, tuple[Layer, dict[str, Callable[[], Any]]]] = {}
    cache: dict[int, dict[str, np.ndarray]] = {}
    for d_slot_ in d_slots:
        if id(d_slot_) not in takes:
            continue
        src_slot = takes[id(d_slot_)][0][0]
        want = numpy_dtype(d_slot_.layer.dtype(d_slot_.leaf))

        def value(s: Slot = src_slot, w: np.dtype = want) -> np.ndarray:
            return slot_value(s, cache).astype(w, copy=False)

        tensor = _dlpack(src_slot, d_slot_)
        if tensor is not None:
            report.dlpack += 1
        plan.setdefault(id(d_slot_.layer), (d_slot_.layer, {}))[1][d_slot_.leaf] = (
            value if tensor is None else lambda t=tensor, v=value: Foreign(t, v)
        )
        shape = d_slot_.layer.shapes()[d_slot_.leaf] or ()
        report.tensors += 1
        report.bytes += math.prod(shape) * want.itemsize
    write_all(
        (w for layer, values in plan.values() for w in layer.writes(values)), error_if_nonfinite
    )
    return report


def _mixed(s: Layer, d: Layer, leaf: str, s_view: View, d_view: View) -> str | None:
    """Why a tied leaf fed by a channels-last flatten at some of its uses only cannot be ported
    to a framework where it is not so (no one layout serves all its uses), or None."""
    sp = s.params.get(leaf) if s.codec is None else None
    dp = d.params.get(leaf) if d.codec is None else None
    tied = [v.adapter.name for v, p in ((s_view, sp), (d_view, dp)) if p is not None and v.mixed(p)]
    if len(tied) != 1:  # on neither side, or on both alike (Keras to Flax)
        return None
    return (
        f"tied, and fed by a channels-last flatten at some of its uses only in the {tied[0]} "
        "model: no one layout serves every use in the other framework, whose outputs would differ"
    )


def _match(
    S: list[Layer], D: list[Layer], renamed: Callable[[str], str], s_view: View, d_view: View
) -> tuple[list[tuple[Layer, Layer, str]], list[str]]:
    """(source layer, destination layer, rule) pairs in destination order, and what did not
    match: by path (after renaming) first, then the rest by structure, in order."""
    problems: list[str] = []
    by_path: dict[str, list[Layer]] = {}
    for s in S:
        by_path.setdefault(renamed(s.path), []).append(s)
    matched: dict[int, tuple[Layer, str]] = {}  # id(dst layer) -> (src layer, rule)
    taken: set[int] = set()
    for d in D:
        for s in by_path.get(d.path, []):
            if id(s) not in taken and _fits(s, d):
                matched[id(d)] = (s, "path" if renamed(s.path) == s.path else "rename")
                taken.add(id(s))
                break
    rest_s = [s for s in S if id(s) not in taken]
    rest_d = [d for d in D if id(d) not in matched]
    for s, d in zip(rest_s, rest_d):
        if not _fits(s, d):
            why = _differences(s, d, s_view, d_view)
            problems.append(
                f"by structure, {_describe(s, s_view.adapter.name)} does not fit {_describe(d, d_view.adapter.name)}"
                + (f"; their settings differ: {'; '.join(why)}" if why else "")
            )
            break
        matched[id(d)] = (s, "structure")
        taken.add(id(s))
    for s in S:
        if id(s) not in taken:
            problems.append(
                f"source layer {_describe(s, s_view.adapter.name)}: no destination layer matches it"
            )
    for d in D:
        if id(d) not in matched:
            problems.append(
                f"destination layer {_describe(d, d_view.adapter.name)}: no source layer matches it"
            )
    pairs = [(matched[id(d)][0], d, matched[id(d)][1]) for d in D if id(d) in matched]
    return pairs, problems


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
    try:
        items = list(rename.items() if isinstance(rename, Mapping) else rename)
        patterns = [(p, re.compile(p), r) for p, r in items]
    except (re.error, TypeError, ValueError) as e:
        raise PortError(
            "Cannot port: rename= must map regular expressions to replacements "
            f"({{pattern: replacement}} or [(pattern, replacement), ...]); {e}. Nothing was written."
        ) from None
    used: dict[str, list[str]] = {p: [] for p, _, _ in patterns}

    def renamed(path: str, note: bool = False) -> str:
        source = path
        for text, pattern, replacement in patterns:
            if note and pattern.search(path):
                used[text].append(source)
            try:
                path = pattern.sub(replacement, path)
            except (re.error, IndexError) as e:  # a bad group reference in the replacement
                raise PortError(
                    f"Cannot port: rename {text!r}: {replacement!r} is no replacement for it ({e}). "
                    "Nothing was written."
                ) from None
        return path

    def which(path: str) -> str:
        return ", ".join(repr(p) for p, paths in used.items() if path in paths)

    problems = []
    sources, destinations = [s.path for s in S], [d.path for d in D]
    by_path = {d.path: d for d in D}
    onto: dict[str, list[Layer]] = {}
    for s in S:
        new = renamed(s.path, note=True)
        onto.setdefault(new, []).append(s)
        if new == s.path:
            continue
        d = by_path.get(new)
        if d is None:
            problems.append(
                f"rename {which(s.path)} maps the source layer {s.path!r} to {new!r}, "
                f"which is no destination layer{_closest(new, destinations)}"
            )
        elif not _fits(s, d):
            problems.append(
                f"rename {which(s.path)} maps {_describe(s, backends[0])} onto "
                f"{_describe(d, backends[1])}, which does not fit it"
            )
    for new, group in onto.items():
        moved = [s.path for s in group if renamed(s.path) != s.path]
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


def _closest(path: str, paths: list[str], side: str = "destination") -> str:
    import difflib

    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.3)
    shown = close or paths[:5]
    if not shown:
        return f" (the {side} model has no layers)"
    return f" ({'closest' if close else 'the'} {side} layer paths: {', '.join(map(repr, shown))})"


def _fits(s: Layer, d: Layer) -> bool:
    """Same kind (when both frameworks know it) and the same canonical leaves and shapes."""
    a_kind, b_kind = (SAME_KIND.get(k, k) for k in (s.kind, d.kind))
    if a_kind and b_kind and a_kind != b_kind:
        return False
    a, b = s.shapes(), d.shapes()
    common = set(a) & set(b)
    if not common or (set(a) ^ set(b)) - OPTIONAL:
        return False
    return all(a[leaf] == b[leaf] for leaf in common)


def _describe(layer: Layer, backend: str) -> str:
    shapes = ", ".join(f"{leaf} {shape}" for leaf, shape in layer.shapes().items())
    return f"{layer.path or '(root)'} ({backend} {layer.type_name}: {shapes})"


def _differences(s: Layer, d: Layer, s_view: View, d_view: View) -> list[str]:
    """The settings both frameworks expose for the pair that differ."""
    a = s_view.adapter.settings(s.module)
    b = d_view.adapter.settings(d.module)
    out = []
    for name in a.keys() & b.keys():
        x, y = a[name], b[name]
        same = (
            math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
            if isinstance(x, float) and isinstance(y, float)
            else x == y
        )
        if not same:
            out.append(
                f"{d.path or '(root)'}: {name} is {x!r} in the {s_view.adapter.name} layer {s.path or '(root)'}, {y!r} in the {d_view.adapter.name} one"
            )
    return out


def _settings(s: Layer, d: Layer, s_view: View, d_view: View, report: PortReport) -> list[str]:
    """The pair's settings compared (differences go to the report), and the notes about the
    ones only one framework has."""
    out = _differences(s, d, s_view, d_view)
    a = s_view.adapter.settings(s.module)
    b = d_view.adapter.settings(d.module)
    for (one, view, layer), other in (((a, s_view, s), b), ((b, d_view, d), a)):
        for name, value in one.items():  # one-sided settings that change results (Gluon's flatten)
            if name not in other and name in _ONE_SIDED and value != _ONE_SIDED[name][0]:
                report.notes.append(
                    f"{layer.path or '(root)'}: the {view.adapter.name} layer has {name}={value!r}, "
                    f"{_ONE_SIDED[name][1]}"
                )
    report.settings += out
    return out


# Settings only one framework has: the value the others behave as, and what differs otherwise.
_ONE_SIDED = {
    "flatten": (
        False,
        "it flattens an N-d input itself: the other framework's layer acts on the last axis, so "
        "the outputs agree when that model flattens first (a Flatten layer) or the input is 2-d",
    )
}
