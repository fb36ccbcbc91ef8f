"""Which backends the suite runs on, and their builders.

``UNITREE_BACKENDS=torch,keras`` names them. A named backend whose builder or
framework fails to import is an error, never a silent skip: a run that
tested nothing must not look green.
"""

from __future__ import annotations

import importlib
import os

from .builder import MEMBERS, Builder

BUILDERS = {
    "torch": "unitree.conformance.builders.torch",
    "keras": "unitree.conformance.builders.keras",  # on whichever backend KERAS_BACKEND names
    "flax-linen": "unitree.conformance.builders.flax_linen",
    "flax-nnx": "unitree.conformance.builders.flax_nnx",
    "gluon": "unitree.conformance.builders.gluon",
}


def named() -> list[str] | None:
    """The backends named in ``UNITREE_BACKENDS``, or None if it is unset or empty."""
    raw = os.environ.get("UNITREE_BACKENDS", "").strip()
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(
            f"UNITREE_BACKENDS names unknown backends {unknown}; expected some of {sorted(BUILDERS)}."
        )
    return names


def load(name: str) -> Builder:
    """The builder module of ``name``; ImportError if its framework is not installed."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown backend {name!r}; expected one of {sorted(BUILDERS)}.")
    module = importlib.import_module(BUILDERS[name])
    missing = [n for n in MEMBERS if not hasattr(module, n)]
    if missing:  # not an ImportError: a broken builder must fail, never pass as not installed
        raise TypeError(
            f"The {name} builder ({module.__name__}) lacks {missing} of conformance.builder.Builder."
        )
    return module


def importable() -> list[str]:
    """The backends whose builder and framework import in this process."""
    found = []
    for n in BUILDERS:
        try:
            load(n)
        except ImportError:
            continue
        found.append(n)
    return found


def selected() -> list[Builder]:
    """Builders for the named backends (all must import), or for every installed one if none is named."""
    names = named()
    if names is not None:
        return [load(n) for n in names]
    found = []
    for n in BUILDERS:
        try:
            found.append(load(n))
        except ImportError:
            continue
    if not found:
        raise RuntimeError(
            "No backend framework is installed here; install one (pip install 'unitree-params[torch]') or set UNITREE_BACKENDS."
        )
    return found
