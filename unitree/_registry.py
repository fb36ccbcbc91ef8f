"""``unitree.register_layer``: third-party layer types given a kind and canonical leaf rules.

The canonical tables (``unitree.layouts``) know each framework's own layer classes. A layer
type they do not know keeps its native leaf names and layouts, and a port pairs it only with
its own type. Registering a type tells unitree what it computes: a kind ("dense", "conv",
...) and how its native leaves map to that kind's canonical (PyTorch) leaves. The type is
named by its class or by its qualified name, so a rule ships without importing the framework
that defines it (unitree ships Hugging Face's ``Conv1D`` this way, in ``layouts.REGISTERED``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import layouts
from ._adapter import KindTable
from ._errors import ValueTypeError
from .layouts import CODECS, Kind, Rule

__all__ = ["generation", "register_layer"]

_generation = 0  # registrations so far: a tree read before the last one reads its model again

# Kinds whose canonical leaves some framework computes from a layer's whole subtree (attention,
# recurrent layers: layouts.CODECS): per-leaf rules cannot say what such a type holds.
_COMPUTED = frozenset(kind for _, kind in CODECS)


def register_layer(
    layer_type: type | str,
    kind: str,
    leaves: Mapping[str, str | tuple[str, Any] | Rule] | None = None,
) -> None:
    """Register a layer type the canonical tables do not know: its kind and its leaf rules.

    ``layer_type`` is the class, or its qualified name ``"package.module.QualName"`` (as
    ``f"{cls.__module__}.{cls.__qualname__}"`` spells it), which needs no import of the
    framework: a module whose class, or any base class along its MRO, is registered is read
    with this kind and these rules, on every backend, from the next read of a model on (wrap
    models after registering: a tree keeps what it read). A registration of the same type
    replaces the one before, including those unitree ships.

    ``kind`` is the canonical table's kind the type computes ("dense", "conv",
    "conv_transpose", "depthwise_conv", "embedding", "layer_norm", "group_norm",
    "batch_norm"), and the type is then matched by ``ut.port`` like a layer of that kind; or a
    name of your own, which matches the types you register under it on other frameworks.
    Kinds whose canonical leaves some framework computes from a whole subtree (attention,
    lstm, gru) cannot be registered.

    ``leaves`` maps each native leaf name to its canonical name, or to (canonical name,
    transform), or to a ``unitree.layouts.Rule``: the transform turns the native value into
    the canonical one and back (``layouts.TRANSPOSED``, ``layouts.Permute(axes)``; ``None``:
    the same layout). Canonical means what PyTorch holds for the kind: a dense layer's
    ``weight`` is (out, in). The mapping's order is the canonical leaf order; leaves it does
    not name keep their native names and layouts.

    >>> import unitree as ut
    >>> from unitree import layouts
    >>> ut.register_layer(  # Hugging Face's GPT-2 Conv1D: y = x @ weight + bias, weight (in, out)
    ...     "transformers.pytorch_utils.Conv1D",
    ...     kind="dense",
    ...     leaves={"weight": ("weight", layouts.TRANSPOSED), "bias": "bias"},
    ... )

    Raises:
        ValueTypeError: ``layer_type`` is neither a class nor a dotted name; ``kind`` is
            not a non-empty string or is one of the computed kinds; a leaf rule is none of the
            forms above, or two native leaves have one canonical name.
    """
    if isinstance(layer_type, str):
        if "." not in layer_type.strip(".") or not all(layer_type.split(".")):
            raise ValueTypeError(
                f"register_layer: {layer_type!r} is no qualified class name; give the class, or "
                'its module and name as "package.module.QualName".'
            )
    elif not isinstance(layer_type, type):
        raise ValueTypeError(
            f"register_layer: expected a class or its qualified name, got {type(layer_type).__name__}."
        )
    if not isinstance(kind, str) or not kind:
        raise ValueTypeError(f"register_layer: kind must be a non-empty string, got {kind!r}.")
    if kind in _COMPUTED:
        raise ValueTypeError(
            f"register_layer: the kind {kind!r} cannot be registered: some framework computes its "
            "canonical leaves from a layer's whole subtree (layouts.CODECS), which per-leaf "
            "rules cannot say. An unregistered type ports onto its own type."
        )
    rules = {name: _rule(name, given) for name, given in (leaves or {}).items()}
    canonical = [rule.canonical for rule in rules.values()]
    twice = sorted({name for name in canonical if canonical.count(name) > 1})
    if twice:
        raise ValueTypeError(
            f"register_layer: two native leaves map to the canonical leaf {twice[0]!r}."
        )
    global _generation
    layouts.REGISTERED[layer_type] = Kind(kind, rules, layer_type)
    KindTable.forget()  # classes looked up before now find the registration
    _generation += 1


def generation() -> int:
    """How many registrations were made: a tree whose structure was read at another count
    reads it again (its kinds and leaf rules may have changed; ``unitree._tree``)."""
    return _generation


def _rule(name: str, given: Any) -> Rule:
    """The Rule of one ``leaves`` entry, checked."""
    if isinstance(given, Rule):
        canonical, transform = given
    elif isinstance(given, str):
        canonical, transform = given, None
    elif isinstance(given, tuple) and len(given) == 2:
        canonical, transform = given
    else:
        raise ValueTypeError(
            f"register_layer: the rule of the leaf {name!r} must be a canonical name, "
            f"(canonical name, transform) or a layouts.Rule, not {given!r}."
        )
    if not isinstance(name, str) or not name or not isinstance(canonical, str) or not canonical:
        raise ValueTypeError(
            f"register_layer: leaf names are non-empty strings, got {name!r} -> {canonical!r}."
        )
    needs = ("shape", "to_canonical", "to_native")
    if transform is not None and not all(callable(getattr(transform, m, None)) for m in needs):
        raise ValueTypeError(
            f"register_layer: the transform of the leaf {name!r} is no layout transform "
            f"(it needs {', '.join(needs)}: layouts.TRANSPOSED, layouts.Permute(axes)...), "
            f"got {type(transform).__name__}."
        )
    return Rule(canonical, transform)
