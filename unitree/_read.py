"""Reading a model's structure: one pass over every module and leaf, into a :class:`Structure`.

A Structure is a snapshot: every leaf occurrence and module occurrence in
traversal order (depth first, the adapter's own order), each tied leaf one
:class:`Param` with all its paths. The layout of each leaf is decided here,
by the pure functions of ``layouts`` (``plan``, ``flatten``). The rest of the
core reads a tree only through a :class:`View`: a Structure seen from one node.
"""

from __future__ import annotations

import gc
import itertools
import re
import threading
from collections.abc import Hashable
from typing import Any, NamedTuple

from ._adapter import Adapter
from ._errors import UnitreeError, UnsupportedModelError
from ._param import Param, placed, rule_of, set_aliases, set_rule
from ._paths import Path, keystr
from .layouts import (
    CHAIN,
    CHANNELS_FIRST,
    CHANNELS_LAST,
    CONVS,
    FLATTEN,
    GRAPH,
    KEEP,
    MAP,
    NONE,
    NORMS,
    Decision,
    Feed,
    Flow,
    Mirror,
    Plan,
    Rule,
    Unknown,
    Wire,
    after_step,
    decide,
    dense_pend,
    fed,
    flattens,
    has_rules,
    merge,
    mirror_unknown,
    mirrored,
    needs_units,
    opaque,
    plan,
    rules,
)

Entry = tuple[Path, Param]
Occurrence = tuple[Path, str, Param]  # (its module's path, its name there, the Param)


class Structure(NamedTuple):
    """What one read saw. Paths are from the root, typed (``unitree._paths``)."""

    adapter: Adapter
    root: Any  # the adapter's root object
    # every leaf occurrence, aliases included: kept as its module's path and its name, since
    # a read that only lists parameters (the first traversal) never needs their full paths
    occurrences: list[Occurrence]
    modules: list[tuple[Path, Any]]  # every module occurrence below the root
    # each parameter (buffer) once, at its first path, as users see it: the root's
    # named_parameters() (named_buffers()), made while reading, its most common question
    params: list[tuple[str, Param]]
    buffers: list[tuple[str, Param]]
    by_ident: dict[Hashable, Param]  # adapter.identity(leaf object) -> its Param
    mixed: frozenset[Param]  # tied, and fed by a channels-last flatten at some uses only
    seen: list[tuple[Any, Any]]  # (module, its leaves), for the fingerprint
    # leaves whose layout depends on activations the read could not follow (layouts.Unknown)
    unknown: dict[Param, Unknown]

    def fingerprint(self) -> list[int]:
        """What :meth:`Adapter.fingerprint` returns for the model as it was read. Made once:
        it lets go of what the read saw."""
        fp: list[int] = []
        for native, leaves in self.seen:
            fp.append(id(native))
            fp.extend([id(leaf.obj) for leaf in leaves])
        self.seen.clear()
        return fp

    def own_leaves(self, native: Any) -> list[tuple[str, str, Param]] | None:
        """(canonical name, native name, Param) of the module ``native``'s own leaves, read
        live; None if one of them is no leaf this read saw (the model changed since)."""
        adapter = self.adapter
        leaves = adapter.leaves(native)
        names = [leaf.name for leaf in leaves]
        out = []
        for i, name, _ in plan(names, rules(adapter.name, adapter.kind(native), names)):
            p = self.by_ident.get(adapter.identity(leaves[i].obj))
            if p is None:
                return None
            out.append((name, leaves[i].name, p))
        return out


class View(NamedTuple):
    """A :class:`Structure` seen from the node at ``base`` (() for the root): the interface
    through which the canonical view, pictures, ports and checkpoints read a tree. Paths it
    gives are relative to ``base``; ``name`` is the node's path as users see it."""

    structure: Structure
    base: Path
    module: Any  # the node's module, live

    @property
    def adapter(self) -> Adapter:
        return self.structure.adapter

    @property
    def name(self) -> str:
        return keystr(self.base)

    def _under(self, items: list[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
        base = self.base
        if not base:
            return items
        n = len(base)
        return [(path[n:], item) for path, item in items if path[:n] == base]

    def leaves(self) -> list[Entry]:
        """Every leaf occurrence under the node, in traversal order, aliases included."""
        base = self.base
        n = len(base)
        return [
            ((*pre[n:], name), p)
            for pre, name, p in self.structure.occurrences
            if not n or pre[:n] == base
        ]

    def modules(self) -> list[tuple[Path, Any]]:
        """Every module occurrence under the node, the node's own first (at ())."""
        return self._under([((), self.structure.root), *self.structure.modules])

    def unique(self) -> list[tuple[list[Path], Param]]:
        """Each leaf once, with every path it has under the node, in traversal order."""
        groups: dict[int, tuple[list[Path], Param]] = {}
        for path, p in self.leaves():
            group = groups.get(id(p))
            if group is None:
                groups[id(p)] = ([path], p)
            else:
                group[0].append(path)
        return list(groups.values())

    def own_leaves(self, native: Any) -> list[tuple[str, str, Param]]:
        """:meth:`Structure.own_leaves`, for a module the read saw in full."""
        found = self.structure.own_leaves(native)
        if found is None:
            raise UnitreeError(
                f"A {self.adapter.type_name(native)} module changed while the tree was read."
            )
        return found

    def mixed(self, p: Param) -> bool:
        """Whether ``p`` is tied and fed by a channels-last flatten at some of its uses only."""
        return p in self.structure.mixed

    def unknown(self, p: Param) -> Unknown | None:
        """Why ``p``'s layout could not be decided, and its candidate rules, or None (decided).

        A dense layer (or a norm) reading the flatten of a channels-last conv output, or
        whose output is reshaped into a feature map a conv reads, through a step the read
        cannot see through (a lambda, a custom call, a Flax module's ``__call__``): its
        rule is the :class:`~unitree.layouts.Unknown`'s ``default`` candidate, which
        checkpoints and ``state_dict`` go on using; a port refuses it under ``strict``.
        """
        return self.structure.unknown.get(p)


def read(adapter: Adapter, root: Any, old: dict[Hashable, Param] | None = None) -> Structure:
    """Read the whole structure of ``root``: one pass over every module and leaf.

    ``old`` is the ``by_ident`` of an earlier read: its Params are kept (re-placed), so
    ``tree[2].weight is tree[4].weight`` keeps meaning one storage across re-reads.

    Raises:
        UnsupportedModelError: a module or leaf name no printed path could reach.
        UnitreeError: the model nests too deeply, or contains itself.
    """
    backend = adapter.name
    same = type(adapter).identity is Adapter.identity  # identity is id(): no call
    with_rules = has_rules(backend)
    channels_last = backend in CHANNELS_LAST
    # a channels-first model is followed only if it holds a conv, in a second walk (_replay)
    native_first = backend in CHANNELS_FIRST
    conv_seen = False
    # the kind table itself where the adapter's kind() only looks it up: a dict's lookup
    kinds = adapter.kinds if type(adapter).kind is Adapter.kind else None
    by_ident: dict[Hashable, Param] = {}
    flat: list[Occurrence] = []
    modules: list[tuple[Path, Any]] = []
    params: list[tuple[str, Param]] = []
    buffers: list[tuple[str, Param]] = []
    seen: list[tuple[Any, Any]] = []
    renewed: dict[Param, tuple[Any, ...]] = {}  # Params of an earlier read, re-placed
    mixed: set[Param] = set()
    aliases: dict[Param, list[str]] = {}  # the paths after the first of each tied leaf
    plans: dict[Any, Plan] = {}
    uses: list[list[Any]] = []  # [Param, its rule at this use] of each use after its first
    # the layout of the activations, followed in this first walk on a channels-last backend
    follow = _Follow(adapter, renewed) if channels_last else None

    # The hot loop of the first traversal: kept flat, it runs once per module and leaf.
    def visit(native: Any, pre: Path, text: str) -> None:  # text: pre as users see it, and a "."
        nonlocal conv_seen
        leaves = adapter.leaves(native)
        seen.append((native, leaves))
        kind: Any = None
        decision: Decision | None = None
        if leaves:
            if with_rules:
                # the same kind with the same leaf names maps the same way: work it out once
                # (a registered type's rules are its own, not its kind's: layouts.Kind.key)
                kind = adapter.kind(native)
                key = (getattr(kind, "key", kind), *[leaf.name for leaf in leaves])
                layer = plans.get(key)
                if layer is None:
                    layer = plans[key] = plan(key[1:], rules(backend, kind, key[1:]))
                if follow is not None and kind in _DECIDED:
                    decision = follow.layer(native, kind, layer, leaves, text)
                    if decision is not None:
                        layer = decision.layer
                elif follow is not None and kind:  # an embedding, a cell: its own features
                    follow.flow = NONE
            else:  # native names and order: the plan depends on the count alone
                layer = plans.get(len(leaves))
                if layer is None:
                    layer = plans[len(leaves)] = [(i, "", None) for i in range(len(leaves))]
            if native_first and not conv_seen:
                if not with_rules:
                    kind = kinds[type(native)] if kinds is not None else adapter.kind(native)
                conv_seen = kind in CONVS
            made: list[tuple[Param, list[Any] | None]] | None = None
            if decision is not None and (decision.unknown or decision.pend):
                made = []  # (Param, its use's record) by position in the plan
            for i, name, rule in layer:
                native_name, obj, is_param, persistent = leaves[i]
                leaf_name = name or native_name
                if not leaf_name or "." in leaf_name or not leaf_name.isprintable():
                    check_name(backend, text, leaf_name, "leaf")
                shown = text + leaf_name
                ident = id(obj) if same else adapter.identity(obj)
                p = by_ident.get(ident)
                if p is None:
                    p = old.get(ident) if old else None
                    args = (adapter, native, native_name, shown, rule, is_param, persistent)
                    if p is None:
                        p = Param(*args)
                    else:  # re-placed once the read is done: another thread may be using it
                        renewed[p] = args
                    by_ident[ident] = p
                    (params if is_param else buffers).append((shown, p))
                    use = None
                else:
                    aliases.setdefault(p, []).append(shown)
                    use = [p, rule]
                    uses.append(use)
                if made is not None:
                    made.append((p, use))
                flat.append((pre, leaf_name, p))
            if made is not None and follow is not None and decision is not None:
                follow.made(decision, leaves, made)
        children = adapter.children(native)
        mode = _PLAIN
        if follow is not None:
            if not isinstance(children, (list, tuple)):
                children = list(children)
            if kind is None and (leaves or not children):
                follow.step(native, text, bool(leaves))  # parameterless, or of no known kind
            if not children:
                return
            if not leaves:
                kind = adapter.kind(native)
            if kind and kind not in _DECIDED:  # attention, a recurrent layer: its own inside
                follow.flow = NONE
                mode = _OWN
            else:
                how = adapter.step(native)
                if how.op == GRAPH and len(how.wires) == len(children):
                    mode, entry, outs = _GRAPH, follow.current(), []
                elif how.op != CHAIN:
                    mode = _OPAQUE  # called by code no one can see: the layout is lost between
        if not mode:  # in order, or no layout to follow: the hot loop, kept plain
            for seg, child in children:
                if type(seg) is str and (not seg or "." in seg or not seg.isprintable()):
                    check_name(backend, text, seg, "module")
                path = (*pre, seg)
                modules.append((path, child))
                visit(child, path, f"{text}{seg}.")
            return
        assert follow is not None
        for k, (seg, child) in enumerate(children):
            if type(seg) is str and (not seg or "." in seg or not seg.isprintable()):
                check_name(backend, text, seg, "module")
            path = (*pre, seg)
            modules.append((path, child))
            if mode == _GRAPH:  # each child reads the outputs its wires name
                follow.flow = follow.wired(how.wires[k], entry, outs, child, f"{text}{seg}.")
            elif mode == _OPAQUE:
                follow.opaque(native, text)
            visit(child, path, f"{text}{seg}.")
            if mode == _GRAPH:
                outs.append(follow.current())
        if mode:
            if mode == _GRAPH:
                follow.flow = follow.wired(how.outputs, entry, outs, None, text)
            elif mode == _OPAQUE:
                follow.opaque(native, text)
            else:
                follow.flow = NONE

    try:
        with gc_pause:
            visit(root, (), "")
            if conv_seen:
                follow = _Follow(adapter, renewed, first=True)
                _replay(follow, root, seen, flat, uses, plans)
    except RecursionError:
        raise UnitreeError(
            f"The {backend} model is nested too deeply to read, or contains itself: a module tree cannot have cycles."
        ) from None
    for p, rule in uses:  # a tied leaf read through a flatten's rule at some uses only
        if flattens(renewed[p][4] if p in renewed else rule_of(p)) != flattens(rule):
            mixed.add(p)
    for p, args in renewed.items():
        placed(p, *args)
    for p, paths in aliases.items():
        set_aliases(p, paths)
    unknown = follow.unknown if follow is not None and follow.unknown else {}
    return Structure(
        adapter, root, flat, modules, params, buffers, by_ident, frozenset(mixed), seen, unknown
    )


# The flow while it is the output of the last dense layer of _Follow's fast path (_Follow.last),
# and that output past the call of a container no one can see through (_Follow.lost_in).
_FED = Flow("out", feeds=(Feed(0, 0, ""),))
_FED_LOST = Flow("unknown", feeds=_FED.feeds, why="a call")

# Kinds whose rules depend on the activations' layout around them (layouts.decide).
_DECIDED = frozenset({*CONVS, "dense", *NORMS})
# How a module calls its children, as far as the layout goes: in order (or no layout to
# follow), by code no one can see, as a graph says, or as a layer of its own kind does.
_PLAIN, _OPAQUE, _GRAPH, _OWN = range(4)


def _where(text: str) -> str:
    """A module's path, as messages name it, from its ``text`` (the path and a ".")."""
    return repr(text[:-1]) if text else "the root"


def _call(adapter: Adapter, native: Any, text: str) -> str:
    return f"the call of {adapter.type_name(native)} at {_where(text)}"


class _Shapes:
    """A layer's native leaf shapes by index, each read when first asked: a decision reads
    few (a dense layer's kernel, and only while a conv's channels are followed)."""

    __slots__ = ("adapter", "got", "leaves")

    def __init__(self, adapter: Adapter, leaves: Any) -> None:
        self.adapter, self.leaves = adapter, leaves
        self.got: dict[int, tuple[int, ...] | None] = {}

    def __getitem__(self, i: int) -> tuple[int, ...] | None:
        got = self.got
        if i not in got:
            got[i] = self.adapter.shape(self.leaves[i].obj)
        return got[i]

    def __len__(self) -> int:
        return len(self.leaves)


# What a later reshape decides of a layer's leaves: (its plan, the positions in it, its Params
# by position, its leaves), under the token of the dense layer whose output it is, that layer's
# own first.
_Pending = tuple[Plan, tuple[int, ...], list[tuple[Param, "list[Any] | None"]], Any]


class _Follow:
    """What a read follows of the activations' layout (a ``layouts.Flow``, through
    ``Adapter.step``), and what it decides: unknown leaves, and the rules of dense layers whose
    output a later reshape and conv decide. ``first``: a channels-first backend (``decide``'s
    ``native_first``: its convs' maps are (C, H, W), its unknowns default to that order)."""

    def __init__(
        self, adapter: Adapter, renewed: dict[Param, tuple[Any, ...]], first: bool = False
    ) -> None:
        self.adapter = adapter
        self.first = first
        self.renewed = renewed  # Params of an earlier read: their rule goes in their new args
        self.flow: Flow = NONE
        self.tokens = itertools.count(1)
        self.pending: dict[int, list[_Pending]] = {}  # by the token of a dense layer's output
        self.unknown: dict[Param, Unknown] = {}
        # id(a dense layer's plan) -> its Decision when no conv's map reaches it (the flow
        # aside, the same for every layer of that plan: plans are made once per read and kept)
        self.fed: dict[int, Decision] = {}
        # the last such dense layer (text, then its pending entry): while ``flow`` is _FED, the
        # flow is its output, made a real feed (``current``) only when more than another
        # dense layer reads it: in a chain of dense layers, each feed dies unread
        self.last_text = ""
        self.last: _Pending | None = None
        self.lost_in: tuple[Any, str] = (None, "")  # _FED_LOST: the container's call it is lost in
        # the path of the last container opaque() named (None: none yet), and how it names it
        self.called: tuple[str | None, str] = (None, "")

    def dense(self, layer: Plan, text: str) -> Decision:
        """A dense layer no conv's map reaches (the common case, kept fast): its output starts
        a feed, as ``decide`` says (``layouts.fed``), and nothing else is decided."""
        d = self.fed.get(id(layer))
        if d is None:
            d = self.fed[id(layer)] = Decision(NONE, layer, pend=dense_pend(layer))
        self.flow, self.last_text = _FED, text
        return d

    def current(self) -> Flow:
        """The flow, the last dense layer's output made a real feed if it is one."""
        flow = self.flow
        if flow is _FED or flow is _FED_LOST:
            token = next(self.tokens)
            if self.last is not None:
                self.pending[token] = [self.last]
            self.flow = fed(token, _where(self.last_text))
            if flow is _FED_LOST:
                self.flow = opaque(self.flow, _call(self.adapter, *self.lost_in))
        return self.flow

    def layer(self, native: Any, kind: Any, layer: Plan, leaves: Any, text: str) -> Decision | None:
        """A conv, dense layer or norm: its rules, given what reaches it (layouts.decide)."""
        flow = self.flow
        if kind == "dense" and not flow.channels and (self.first or layer[0][2] is not None):
            return self.dense(layer, text)
        if kind in NORMS and (flow.state == "none" or flow.state == "map"):
            return None  # nothing to decide, or a norm over a map's channels: kept as it is
        flow = self.current()
        adapter = self.adapter
        first, groups = self.first, 1
        # a conv's settings: where its channels are, and its groups where they matter (its
        # input channels read a feed; a transposed conv's output channels)
        if kind in CONVS and (not first or flow.feeds or kind == "conv_transpose"):
            settings = adapter.settings(native)
            first = first or settings.get("data_format") == "channels_first"
            groups = int(settings.get("groups") or 1) if kind != "depthwise_conv" else 1
        elif kind == "dense" and flow.state == "map":
            how = adapter.step(native)  # a dense layer that flattens its input (Gluon's Dense)
            if how.op == FLATTEN:
                flow, _ = after_step(flow, how, f"the flatten inside {_where(text)}")
        if flow.feeds and needs_units(flow, kind):
            flow = self.units(flow)
        shapes = _Shapes(adapter, leaves)
        token = next(self.tokens)
        d = decide(flow, kind, layer, shapes, _where(text), token, first, groups, self.first)
        self.flow = d.flow
        self.resolve(d.mirrors)
        return d

    def made(self, d: Decision, leaves: Any, made: list[tuple[Param, list[Any] | None]]) -> None:
        """The Params of a decided layer, by position in its plan: record what is unknown, and
        what a reshape of its output decides later (expanded only if one does)."""
        for j, u in d.unknown:
            self.unknown.setdefault(made[j][0], u)
        if not d.pend:
            return
        if self.flow is _FED:  # a dense layer of the fast path: kept until its feed is read
            self.last = (d.layer, d.pend, made, leaves)
            return
        token = self.flow.feeds[0].token  # the feed the layer left (a norm: the one it matched)
        self.pending.setdefault(token, []).append((d.layer, d.pend, made, leaves))

    def units(self, flow: Flow) -> Flow:
        """``flow`` with its feeds' units read (from each dense layer's kernel)."""
        if all(f.units for f in flow.feeds):
            return flow
        feeds = []
        for f in flow.feeds:
            entries = self.pending.get(f.token)
            if not f.units and entries:  # (none: another branch of a graph decided it)
                layer, _, _, leaves = entries[0]  # the dense layer's own
                i, _, rule = layer[0]
                shape = self.adapter.shape(leaves[i].obj)
                t = rule.transform if rule is not None else None
                if shape and (t is not None or self.first):  # (out, in) as it is, or not
                    f = f._replace(units=(t.shape(shape) if t else shape)[0])
            feeds.append(f)
        return flow._replace(feeds=tuple(feeds))

    def resolve(self, mirrors: tuple[Mirror, ...]) -> None:
        """What a conv (or a pooling) reading a dense layer's output as a map decided."""
        for m in mirrors:
            for k, (layer, pend, made, _) in enumerate(self.pending.pop(m.feed.token, ())):
                for j in pend:
                    _, name, rule = layer[j]
                    p, use = made[j]
                    # the dense layer's kernel (in, out); its bias, a norm's vectors: 1-d
                    ndim = 2 if k == 0 and j == 0 else 1
                    self.decided(p, use, rule or Rule(name), ndim, m)

    def decided(self, p: Param, use: list[Any] | None, rule: Rule, ndim: int, m: Mirror) -> None:
        if m.reason:
            self.unknown.setdefault(p, mirror_unknown(rule, ndim, m))
            return
        self.ruled(p, use, mirrored(rule, ndim, m.channels))

    def ruled(self, p: Param, use: list[Any] | None, new: Rule | None) -> None:
        """``p`` (at the use ``use``, a later use of a tied leaf, or its first) takes ``new``."""
        if use is not None:  # a later use of a tied leaf: its own rule there
            use[1] = new
        elif p in self.renewed:
            args = self.renewed[p]
            self.renewed[p] = (*args[:4], new, *args[5:])
        else:  # made by this read: no one else holds it yet
            set_rule(p, new)

    def opaque(self, native: Any, text: str) -> None:
        """Between the children of ``native``, whose call no one can see through."""
        flow = self.flow
        if flow is _FED:  # kept lazy, as _FED is: most such feeds die at the next dense layer
            self.flow, self.lost_in = _FED_LOST, (native, text)
        elif flow.state != "none" and not flow.why:
            if self.called[0] != text:  # said once per container, between its children
                self.called = (text, _call(self.adapter, native, text))
            self.flow = opaque(flow, self.called[1])

    def step(self, native: Any, text: str, leaves: bool = False) -> None:
        """A module that is no layer ``decide`` takes: what the adapter says it does. One
        with leaves is asked even when nothing is followed: it may start a map (``MAP``)."""
        flow = self.flow
        lost = flow is not _FED and (flow.state == "none" or bool(flow.why))  # nothing to see
        if lost and not leaves:
            return
        adapter = self.adapter
        how = adapter.step(native)
        if (lost and how.op != MAP) or (how.op == KEEP and not how.data_format):
            return  # nothing to follow, or the layout stays (an activation, a dropout)
        flow = self.current()
        if needs_units(flow, step=how):
            flow = self.units(flow)
        what = how.why or f"the {adapter.type_name(native)} layer"
        self.flow, mirrors = after_step(flow, how, f"{what} at {_where(text)}")
        self.resolve(mirrors)

    def wired(
        self, wires: tuple[Wire, ...], entry: Flow, outs: list[Flow], child: Any, text: str
    ) -> Flow:
        """What reaches a graph's child (or the graph's outputs: ``child`` None)."""
        flows = []
        for wire in wires:
            parts = [entry if s < 0 else outs[s] if s < len(outs) else None for s in wire.sources]
            if None in parts:  # an input the traversal has not reached: no order to follow
                flows.append(opaque(merge([f for f in parts if f]), "a graph out of order"))
                continue
            flow = merge([self.units(f) for f in parts if f is not None], why=wire.through)
            flows.append(opaque(flow, wire.through) if wire.through else flow)
        if len(flows) < 2:
            return flows[0] if flows else NONE
        step = self.adapter.step(child) if child is not None else None
        return merge([self.units(f) for f in flows], step, f"the merge at {_where(text)}")


def _replay(
    follow: _Follow,
    root: Any,
    seen: list[tuple[Any, Any]],
    flat: list[Occurrence],
    uses: list[list[Any]],
    plans: dict[Any, Plan],
) -> None:
    """The follower's walk of a channels-first model that holds a conv: ``read``'s second
    walk, in the order of its first (a model without a conv has no layout to follow, and its
    read pays nothing for it). Each module's leaves are ``seen``'s, their Params ``flat``'s in
    plan order, a tied leaf's later uses ``uses``'s records; what ``follow`` decides of a rule
    is set on the Param (or on that use's record), as the first walk would have made it."""
    adapter = follow.adapter
    backend = adapter.name
    kinds = adapter.kinds if type(adapter).kind is Adapter.kind else None
    leaves_of = {id(m): leaves for m, leaves in seen}
    at = [0, 0]  # the next entry of flat, of uses
    firsts: set[Param] = set()

    def params(n: int) -> list[tuple[Param, list[Any] | None]]:
        """The next ``n`` occurrences of the first walk: (Param, its use's record or None)."""
        start = at[0]
        at[0] += n
        if not uses:  # nothing tied: every occurrence is its Param's first
            return [(p, None) for _, _, p in flat[start : start + n]]
        out: list[tuple[Param, list[Any] | None]] = []
        for _, _, p in flat[start : start + n]:
            if p in firsts:
                out.append((p, uses[at[1]]))
                at[1] += 1
            else:
                firsts.add(p)
                out.append((p, None))
        return out

    def walk(native: Any, text: str) -> None:
        leaves = leaves_of[id(native)]
        kind: Any = None
        if leaves:
            kind = kinds[type(native)] if kinds is not None else adapter.kind(native)
            # a norm over a map's channels, or where nothing is followed, is left as it is
            kept = kind in NORMS and follow.flow.state in ("none", "map")
            if kind in _DECIDED and not kept:
                made = params(len(leaves))
                names = [leaf.name for leaf in leaves]
                key = (getattr(kind, "key", kind), *names)
                layer = plans.get(key)
                if layer is None:
                    layer = plans[key] = plan(names, rules(backend, kind, names))
                d = follow.layer(native, kind, layer, leaves, text)
                if d is not None:
                    for (p, use), (_, _, old), (_, _, new) in zip(made, layer, d.layer):
                        if new is not old:  # a rule the layout decided: the first walk's is old
                            follow.ruled(p, use, new)
                    if d.unknown or d.pend:
                        follow.made(d, leaves, made)
            else:
                if uses:  # the occurrences counted, for the ties' records
                    params(len(leaves))
                else:
                    at[0] += len(leaves)
                if kind and not kept:  # an embedding, a cell: its own features
                    follow.flow = NONE
        children = adapter.children(native)
        if kind is None and (leaves or not children):
            follow.step(native, text, bool(leaves))  # parameterless, or of no known kind
        if not children:
            return
        if not leaves:
            kind = adapter.kind(native)
        mode = _PLAIN
        if kind and kind not in _DECIDED:  # attention, a recurrent layer: its own inside
            follow.flow = NONE
            mode = _OWN
        else:
            how = adapter.step(native)
            if how.op == GRAPH and len(how.wires) == len(children):
                mode, entry, outs = _GRAPH, follow.current(), []
            elif how.op != CHAIN:
                mode = _OPAQUE
        for k, (seg, child) in enumerate(children):
            if mode == _GRAPH:
                follow.flow = follow.wired(how.wires[k], entry, outs, child, f"{text}{seg}.")
            elif mode == _OPAQUE:
                follow.opaque(native, text)
            walk(child, f"{text}{seg}.")
            if mode == _GRAPH:
                outs.append(follow.current())
        if mode == _GRAPH:
            follow.flow = follow.wired(how.outputs, entry, outs, None, text)
        elif mode == _OPAQUE:
            follow.opaque(native, text)
        elif mode == _OWN:
            follow.flow = NONE

    walk(root, "")


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_name(backend: str, pre: str, segment: str, what: str) -> None:
    """Refuse a name no printed path could reach again: empty, holding the '.' that joins
    segments, or a control character (which would also reach a terminal as it is)."""
    if segment and "." not in segment and not _CONTROL.search(segment):
        return  # printable after all: a non-ASCII space, say
    raise UnsupportedModelError(
        f"The {backend} model has a {what} named {segment!r} under {pre[:-1] or 'the root'!r}: "
        "paths join their segments with '.', so a name that is empty or holds a '.' or a "
        "control character could not be looked up again. Rename it (a dict key, say), as "
        "torch's add_module requires."
    )


class _GCPause:
    """Pauses the cyclic GC while a model's structure is read, across threads.

    A read allocates tens of thousands of small objects, all reachable; each
    collection it triggers would walk the whole model graph (and the
    framework's heap) again, for nothing: it often doubled the time of a wrap.
    The switch is process-wide, so readers in several threads share one pause:
    the first one in turns the collector off, the last one out turns it back on,
    and only if it was on when the first one came in (a user's own
    ``gc.disable()`` stays in force).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._readers == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._readers += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0 and self._resume:
                self._resume = False
                gc.enable()


gc_pause = _GCPause()
