"""Reading a model's structure: one pass over every module and leaf, into a :class:`Structure`.

A Structure is a snapshot: every leaf occurrence and module occurrence in
traversal order (depth first, the adapter's own order), each tied leaf one
:class:`Param` with all its paths. The layout of each leaf is decided here,
by the pure functions of ``layouts`` (``plan``, ``flatten``). The rest of the
core reads a tree only through a :class:`View`: a Structure seen from one node.
"""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Hashable
from typing import Any, NamedTuple

from ._adapter import Adapter
from ._errors import UnitreeError, UnsupportedModelError
from ._param import Param, placed, rule_of, set_aliases
from ._paths import Path, keystr
from .layouts import CHANNELS_LAST, CONVS, Plan, flatten, flattens, has_rules, plan, rules

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
    channels = 0  # of the last conv output, while a flatten of it may feed a dense layer

    # The hot loop of the first traversal: kept flat, it runs once per module and leaf.
    def visit(native: Any, pre: Path, text: str) -> None:  # text: pre as users see it, and a "."
        nonlocal channels
        leaves = adapter.leaves(native)
        seen.append((native, leaves))
        if leaves:
            if with_rules:
                # the same kind with the same leaf names maps the same way: work it out once
                kind = adapter.kind(native)
                key = (kind, *[leaf.name for leaf in leaves])
                layer = plans.get(key)
                if layer is None:
                    layer = plans[key] = plan(key[1:], rules(backend, kind, key[1:]))
                if channels_last and (channels or kind in CONVS):
                    shapes = [adapter.shape(leaf.obj) for leaf in leaves]
                    first = kind in CONVS and adapter.settings(native).get("data_format")
                    channels, layer = flatten(
                        channels, kind, layer, shapes, first == "channels_first"
                    )
            else:  # native names and order: the plan depends on the count alone
                layer = plans.get(len(leaves))
                if layer is None:
                    layer = plans[len(leaves)] = [(i, "", None) for i in range(len(leaves))]
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
                else:
                    aliases.setdefault(p, []).append(shown)
                    first_rule = renewed[p][4] if p in renewed else rule_of(p)
                    if flattens(first_rule) != flattens(rule):
                        mixed.add(p)
                flat.append((pre, leaf_name, p))
        for seg, child in adapter.children(native):
            if type(seg) is str and (not seg or "." in seg or not seg.isprintable()):
                check_name(backend, text, seg, "module")
            path = (*pre, seg)
            modules.append((path, child))
            visit(child, path, f"{text}{seg}.")

    try:
        with gc_pause:
            visit(root, (), "")
    except RecursionError:
        raise UnitreeError(
            f"The {backend} model is nested too deeply to read, or contains itself: a module tree cannot have cycles."
        ) from None
    for p, args in renewed.items():
        placed(p, *args)
    for p, paths in aliases.items():
        set_aliases(p, paths)
    return Structure(
        adapter, root, flat, modules, params, buffers, by_ident, frozenset(mixed), seen
    )


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
