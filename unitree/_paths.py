"""Paths inside the core: tuples of typed segments, as jax's key paths; dotted strings only
where users see them (``keystr``).

A segment is what the framework's container keys a child or a leaf by: an ``int`` for a
position in a sequential container (a Keras model's layers, NNX's ``Sequential``, a linen
list field), a ``str`` for a name (an attribute, a dict key, torch's ``_modules`` keys,
which are strings even in a ``Sequential``). A user's dotted path is turned into segments
by the live model, part by part (``Adapter.segment``), so "0" names position 0 where the
container is sequential and the key "0" where it is a dict.
"""

from __future__ import annotations

from typing import Union

Segment = Union[str, int]
Path = tuple[Segment, ...]


def keystr(path: Path) -> str:
    """The dotted string users see: ``keystr(("layers", 0, "weight")) == "layers.0.weight"``."""
    return ".".join([s if type(s) is str else str(s) for s in path])


def parts(text: str) -> list[str]:
    """A user's dotted path split into its parts; "" (the node itself) has none."""
    return text.split(".") if text else []


def join(base: str, path: str) -> str:
    """Two dotted strings as one: ``join("0", "weight") == "0.weight"``; either may be ""."""
    return f"{base}.{path}" if base and path else base or path


def position(text: str) -> int | None:
    """The position a part of a user's path names ("0", "12"), or None: ASCII digits only,
    written as ``str(i)`` writes them ("00", "+1" and "\u00b2" are names, not positions)."""
    if text.isascii() and text.isdigit() and text == str(int(text)):
        return int(text)
    return None
