"""The errors unitree raises.

Every error derives from :class:`UnitreeError` and from the builtin it
specializes, so ``except KeyError`` and ``except unitree.UnitreeError`` both
catch a wrong path.
"""

from __future__ import annotations

from collections.abc import Iterable


class UnitreeError(Exception):
    """Base class of every error unitree raises."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument, quotes and all.
        return str(self.args[0]) if self.args else ""


class PathError(UnitreeError, KeyError, AttributeError):
    """A path that names nothing in the tree.

    Also an ``AttributeError``, so ``hasattr(tree[2], "weight")`` and
    ``getattr(node, name, default)`` work as they do on native modules.
    """

    @classmethod
    def missing(cls, path: str, where: str, known: Iterable[str]) -> PathError:
        import difflib

        close = difflib.get_close_matches(path, list(known), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return cls(f"No parameter or module at path {path!r} in {where}.{hint}")


class ShapeError(UnitreeError, ValueError):
    """A value whose shape does not fit the parameter it is written to."""


class ParamIndexError(ShapeError, IndexError):
    """An index that does not fit a parameter's shape, read (``p[8, 0]``) or written: also an
    ``IndexError``, as numpy's own, so the sequence protocol stops on it as on an array."""


class StateDictError(UnitreeError, ValueError):
    """A state dict or checkpoint that does not match the tree: every problem is listed."""


class CheckpointError(UnitreeError, ValueError):
    """A checkpoint file that cannot be read safely."""


class PortError(UnitreeError, ValueError):
    """``ut.port`` found layers, shapes, dtypes, ties or settings that do not match."""


class NonFiniteError(UnitreeError, ValueError):
    """A NaN or infinity in a value written with ``error_if_nonfinite=True``."""


class ValueTypeError(UnitreeError, TypeError):
    """A value that is not numeric, or whose dtype cannot be written without loss."""


class UnsupportedModelError(UnitreeError, TypeError):
    """An object that no adapter claims."""


class UnsupportedError(UnitreeError, NotImplementedError):
    """What a framework cannot do natively (``tree.tie`` on flax linen, where sharing is in
    the module definition): the message says the native way."""


class UninitializedError(UnitreeError, RuntimeError):
    """A parameter whose shape is not known yet (lazy or deferred initialization)."""
