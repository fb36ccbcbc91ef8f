"""The contract every backend adapter implements, and the table that finds one.

An adapter is a small object that knows one framework: it lists a module's
children and leaves, reads and writes a leaf in the framework's own (native)
layout, and runs the framework's autodiff. Everything else -- paths, ties,
canonical layouts, validation, checkpoints -- lives in the core and is written
once. The core never imports a framework: an adapter module is imported on
first use, picked by the module name of the wrapped object's type, and that
framework is already imported because the user built the object with it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from ._errors import UnsupportedError, UnsupportedModelError


class Leaf(NamedTuple):
    """One leaf of a module as the adapter sees it."""

    name: str  # the native leaf name ("weight", "kernel", "running_mean")
    obj: Any  # the framework's own parameter, variable or buffer
    param: bool  # a parameter (True) or non-trainable state, a buffer (False)
    persistent: bool = True  # saved in state_dict and checkpoints


class Adapter(ABC):
    """What the core needs from one framework.

    Leaves are addressed by their owner module and native name, and resolved
    with :meth:`leaf` on every access, so a parameter that the framework
    replaces (lazy initialization, a reassigned attribute) is always read live.
    """

    name: ClassVar[str]  # the backend name users see: "torch", "keras", ...

    # -- structure -------------------------------------------------------------
    def root(self, obj: Any, *state: Any) -> Any:
        """The native root module; ``state`` is for frameworks that keep it apart (flax linen)."""
        if state:
            raise UnsupportedModelError(
                f"wrap() takes extra arguments only for flax linen; got {len(state)} for a {self.name} model."
            )
        return obj

    @abstractmethod
    def children(self, module: Any) -> Iterable[tuple[str, Any]]:
        """(path segment, child module) in the model's own order."""

    @abstractmethod
    def leaves(self, module: Any) -> Iterable[Leaf]:
        """The module's own leaves (not its children's), in canonical leaf order."""

    @abstractmethod
    def leaf(self, module: Any, name: str) -> Any:
        """The current native leaf object of ``module`` called ``name``."""

    def child(self, module: Any, segment: str) -> Any:
        """The current child of ``module`` at ``segment``, or None."""
        return dict(self.children(module)).get(segment)

    def segment(self, module: Any, key: str) -> str:
        """The path segment of the child ``key`` names: ``key``, unless it is an alias the adapter
        accepts in :meth:`child` (a Keras layer's own name), whose child has a segment of its own."""
        return key

    def native(self, obj: Any) -> Any:
        """What ``.native`` shows for the root, a module or a leaf object of this adapter: the
        object itself, unless the adapter stands its own objects in for the framework's
        (flax linen: the module, and the leaf's current array)."""
        return obj

    def identity(self, leaf: Any) -> Hashable:
        """Two leaves with the same identity are one tied parameter."""
        return id(leaf)

    def type_name(self, module: Any) -> str:
        return type(module).__name__

    def kind(self, module: Any) -> str | None:
        """The layer kind the canonical layout tables know it by ("dense", "conv", ...)."""
        return None

    def fingerprint(self, root: Any) -> Any:
        """A cheap value that changes whenever the structure or the tie pattern changes.

        It must equal what the core records while reading the tree: depth
        first, the id of each module, then the ids of its leaves' objects as
        :meth:`leaves` lists them, then its children as :meth:`children` lists
        them. Adapters override it only to compute the same list faster.
        """
        ids: list[int] = []

        def visit(module: Any) -> None:
            ids.append(id(module))
            ids.extend(id(leaf[1]) for leaf in self.leaves(module))
            for _, child in self.children(module):
                visit(child)

        visit(root)
        return ids

    # -- one leaf, native layout -------------------------------------------------
    @abstractmethod
    def shape(self, leaf: Any) -> tuple[int, ...] | None:
        """The native shape, or None while it is not known (lazy initialization)."""

    @abstractmethod
    def dtype(self, leaf: Any) -> str:
        """The dtype as numpy spells it: "float32", "bfloat16", "int64"."""

    @abstractmethod
    def device(self, leaf: Any) -> str:
        """ "cpu", "cuda:0", "gpu:0", ..."""

    @abstractmethod
    def trainable(self, leaf: Any) -> bool:
        """Whether the framework would compute a gradient for this parameter (not asked of buffers)."""

    @abstractmethod
    def read(self, leaf: Any) -> np.ndarray:
        """The value in native layout; a view of the framework's memory where it can be."""

    @abstractmethod
    def write(self, leaf: Any, value: np.ndarray, index: Any = None) -> None:
        """Write ``value`` (native layout, the leaf's dtype) in place, or into ``leaf[index]``.

        The core validates shape and dtype first. Every alias of the leaf must see the write.
        """

    def backup(self, leaf: Any) -> Any:
        """What :meth:`restore` needs to put the leaf's value back after a failed write, or
        None (the default): the core then keeps a copy of :meth:`read`'s value, on disk when
        it is large. A framework whose arrays are immutable (jax) returns the array itself.
        """
        return None

    def restore(self, leaf: Any, backup: Any) -> None:
        """Put back the value :meth:`backup` returned (or the core's copy, native layout)."""
        self.write(leaf, backup, None)

    def dlpack(self, leaf: Any) -> Any:
        """An object with ``__dlpack__`` for the leaf's tensor (native layout, on its device), or
        None where the framework cannot export one: ``ut.port`` then goes through numpy."""
        return None

    def write_dlpack(self, leaf: Any, tensor: Any) -> bool:
        """Copy ``tensor`` (another framework's, with ``__dlpack__``, the leaf's shape and
        dtype) into the leaf, device to device, with no copy through the host; False where
        the framework cannot take it (``ut.port`` then goes through numpy)."""
        return False

    def data(self, leaf: Any) -> Any:
        """The framework's own tensor behind the leaf, native layout, no copy."""
        return leaf

    def grad(self, leaf: Any) -> np.ndarray | None:
        """The gradient in native layout, or None before any backward pass."""
        raise self.unsupported("reading gradients")

    def zero_grad(self, leaf: Any) -> None:
        """Forget the leaf's gradient: :meth:`grad` is None until the next backward pass."""
        raise self.unsupported("zero_grad")

    def asarray(self, value: Any) -> np.ndarray:
        """A numpy array from a value given by the user: numpy, a scalar, or a native tensor."""
        return np.asarray(value)

    def settings(self, module: Any) -> dict[str, Any]:
        """A layer's settings that change its results without being parameters, in one
        vocabulary, so that ``ut.port`` can compare them across frameworks:

        - ``eps`` (float): a norm's epsilon;
        - ``momentum`` (float): batch norm's running-average update, as PyTorch counts it:
          the weight of the new batch (Keras's, Flax's and Gluon's ``momentum`` is
          the weight of the old value: 1 - theirs);
        - ``padding``: ``"same"``, or a tuple of (before, after) per spatial axis
          (``"valid"`` is zeros); ``stride``, ``dilation``: tuples per spatial axis;
          ``groups`` (int); ``flatten`` (Gluon's Dense: True flattens N-d inputs).

        Only what the framework exposes; {} for a layer with none.
        """
        return {}

    # -- the whole model ----------------------------------------------------------
    def devices(self) -> list[str]:
        """Every device this framework sees here, CPU first."""
        return ["cpu"]

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        raise self.unsupported("backward")

    def share(self, leaf: Any, dst_owner: Any, dst_name: str) -> None:
        """Make ``dst_owner.dst_name`` the very ``leaf`` (native sharing). ``tree.tie`` also calls
        it with the leaf that was there before, to undo a tie that failed halfway."""
        raise self.unsupported("tie")

    def shared(self, root: Any) -> None:
        """Called once after :meth:`share` made ``tree.tie``'s leaves one, with the whole model, so
        the adapter can drop what the framework cached about the old ones (Keras: compiled functions)."""
        return None  # most frameworks cache nothing that holds the old leaves

    def variables(self, root: Any) -> Any:
        """The current variables of a framework that keeps them apart from the module (flax linen)."""
        raise UnsupportedError(
            f"tree.variables is for flax linen, which keeps variables apart; a {self.name} model holds its own."
        )

    def unsupported(self, capability: str) -> UnsupportedError:
        return UnsupportedError(f"{capability} is not supported by the {self.name} adapter.")


# The type's top-level module name -> (adapter module, what it wraps, the extra to install).
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "torch": ("unitree.adapters.torch", "torch.nn.Module", "torch"),
    "keras": ("unitree.adapters.keras", "keras.Layer (Keras 3)", "keras"),
    "flax": (
        "unitree.adapters.flax",
        "flax nnx.Module, or a linen Module with its variables",
        "flax",
    ),
    "mxnet": ("unitree.adapters.gluon", "mxnet.gluon.Block", "gluon"),
}

# Frameworks that stop the MRO walk even without an adapter here: a Keras 3 model
# on the torch backend is a torch.nn.Module too, and must not be read as one.
FRAMEWORKS = {
    "torch": "PyTorch",
    "keras": "Keras 3",
    "tensorflow": "TensorFlow",
    "flax": "Flax",
    "jax": "JAX",
    "mxnet": "MXNet",
}

_loaded: dict[str, Adapter] = {}


def position(segment: str) -> int | None:
    """The position a path segment names ("0", "12"), or None: ASCII digits only, written as
    ``str(i)`` writes them ("00", "+1" and "\u00b2" are names, not positions)."""
    if segment.isascii() and segment.isdigit() and segment == str(int(segment)):
        return int(segment)
    return None


def _load(module_name: str) -> Adapter:
    adapter = _loaded.get(module_name)
    if adapter is None:
        adapter = importlib.import_module(module_name).adapter
        _loaded[module_name] = adapter
    return adapter


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="unitree.adapters")}


def adapter_for(obj: Any) -> Adapter:
    """The adapter for ``obj``, chosen by the module names along its type's MRO.

    The MRO is walked from the most derived class and the first framework
    found decides, so a Keras model on the torch backend (also a
    ``torch.nn.Module``) is never taken for a torch model. Third-party
    adapters register in the entry point group ``unitree.adapters`` under the
    top-level module name of the types they claim.
    """
    roots = [cls.__module__.partition(".")[0] for cls in type(obj).__mro__]
    for root in roots:
        if root in ADAPTERS:
            return _load(ADAPTERS[root][0])
        if root in FRAMEWORKS:
            break
    plugins = _entry_points()
    for root in roots:
        if root in plugins:
            return _load(plugins[root])
    supported = "; ".join(
        f"{what} (pip install 'unitree-params[{extra}]')" for _, what, extra in ADAPTERS.values()
    )
    framework = next((FRAMEWORKS[root] for root in roots if root in FRAMEWORKS), None)
    why = (
        f"{framework} has no adapter in this version of unitree"
        if framework
        else "no adapter claims it"
    )
    raise UnsupportedModelError(
        f"Expected a model of a supported framework, got {type(obj).__module__}.{type(obj).__qualname__}: "
        f"{why}. Supported: {supported}."
    )
