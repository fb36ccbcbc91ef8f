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

import functools
import importlib
import weakref
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from ._errors import UnsupportedError, UnsupportedModelError
from ._paths import Segment
from .layouts import UNKNOWN, Step, registered

__all__ = [
    "Adapter",
    "KindTable",
    "Leaf",
    "adapter_for",
    "as_numpy",
    "fingerprint",
    "new_leaf",
]


class Leaf(NamedTuple):
    """One leaf of a module as the adapter sees it."""

    name: str  # the native leaf name ("weight", "kernel", "running_mean")
    # the adapter's object for the leaf: what leaf() returns and shape(), read()... take (the
    # framework's own parameter, variable or buffer, or a handle standing in for it)
    obj: Any
    param: bool  # a parameter (True) or non-trainable state, a buffer (False)
    persistent: bool = True  # saved in state_dict and checkpoints


# Leaf(...) runs the NamedTuple's __new__ in Python; this makes the same Leaf in C, in half the
# time, for the adapters' leaves(), which make one per leaf on every wrap:
# new_leaf((name, obj, param, persistent)).
new_leaf = functools.partial(tuple.__new__, Leaf)


class Adapter(ABC):
    """What the core needs from one framework, in groups.

    **Required** (abstract; a new framework's adapter starts here):

    - structure: :meth:`children`, :meth:`leaves`, :meth:`leaf`;
    - one leaf, in the framework's own (native) layout: :meth:`shape`, :meth:`dtype`,
      :meth:`device`, :meth:`trainable`, :meth:`read`, :meth:`write`.

    **Defaults that fit most frameworks** (override to say more or go faster):
    :meth:`root` (checks ``module_types``), :meth:`child`, :meth:`segment`,
    :meth:`native`, :meth:`identity` (``id``: one object, one parameter),
    :meth:`type_name`, :meth:`kind` (``kinds`` by class), :meth:`fingerprint`,
    :meth:`data`, :meth:`asarray`, :meth:`devices`.

    **Optional capabilities**, each a named group whose default either says
    "<capability> is not supported by the <framework> adapter" (an
    :class:`UnsupportedError`) or, where the core has a slower way of its own, lets it
    take that way:

    - *autodiff*: :meth:`backward`, :meth:`grad`, :meth:`zero_grad` (unsupported);
    - *sharing*: :meth:`share`, :meth:`shared` (``tree.tie``; unsupported);
    - *device copies and backups*: :meth:`dlpack`, :meth:`write_dlpack` (``ut.port``
      goes through numpy), :meth:`backup`, :meth:`restore` (the core keeps a copy);
    - *layer settings*: :meth:`settings` (none known: ``ut.port`` compares nothing);
    - *native files*: :meth:`state_dict_file`, :meth:`shared_storage` (unsupported);
    - *separate variables*: :meth:`variables` (flax linen only; unsupported elsewhere);
    - *running the model*: :meth:`run` (``ut.compare`` and a port's output check; unsupported);
    - *the layout between layers*: :meth:`step` (what a parameterless layer or a container's
      call does to the activations; unknown).

    **Class attributes:** ``name``, the backend name users see, which is also the key of the
    canonical tables (``layouts.LAYOUTS``, ``CODECS``, ``GENERATED``, ``CHANNELS_LAST``): a
    new framework's layers keep their native names and layouts until the tables know its
    name; ``module_types`` and ``module_what`` for :meth:`root`'s check; ``kinds``, a
    :class:`KindTable` of the layer classes the tables know, by kind: ``dense``, ``conv``,
    ``conv_transpose``, ``depthwise_conv``, ``embedding``, ``layer_norm``, ``group_norm``,
    ``batch_norm``, ``lstm``, ``gru``, ``attention``.

    **Registration:** the adapter's module holds one instance, ``adapter = MyAdapter()``;
    ``ADAPTERS`` below names the built-in ones, and a third-party one is an entry point of
    the group ``unitree.adapters``, named after the top-level package of the types it
    claims, whose value is the module's name.

    Leaves are addressed by their owner module and native name, and resolved
    with :meth:`leaf` on every access, so a parameter that the framework
    replaces (lazy initialization, a reassigned attribute) is always read live.
    """

    name: ClassVar[str]  # the backend name users see: "torch", "keras", ...
    # What :meth:`root` accepts, and how its error names it; () accepts anything.
    module_types: ClassVar[tuple[type, ...]] = ()
    # write() accepts a strided value (a transposed view) and makes its own copy of it
    strided_writes: ClassVar[bool] = False
    module_what: ClassVar[str] = ""  # with its article: "a torch.nn.Module"
    kinds: ClassVar[KindTable | None] = None  # what :meth:`kind` reads

    # -- required: structure ---------------------------------------------------------
    @abstractmethod
    def children(self, module: Any) -> Iterable[tuple[Segment, Any]]:
        """(path segment, child module) in the model's own order: the segment is what the
        container keys the child by, an ``int`` for a position in a sequential container,
        else a ``str`` (``unitree._paths``)."""

    @abstractmethod
    def leaves(self, module: Any) -> Sequence[Leaf]:
        """The module's own leaves (not its children's), in the framework's own order (the
        core puts them in canonical order with ``layouts.plan``)."""

    @abstractmethod
    def leaf(self, module: Any, name: str) -> Any:
        """The current leaf object of ``module`` called ``name`` (what :class:`Leaf` ``.obj`` is).

        Raises:
            PathError: the module no longer has such a leaf.
        """

    # -- required: one leaf, native layout -----------------------------------------------
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
        ``value`` may be a read-only view (a broadcast): copy from it, never keep it.
        """

    # -- defaults ------------------------------------------------------------------------
    def root(self, obj: Any, *state: Any) -> Any:
        """The native root module; ``state`` is for frameworks that keep it apart (flax linen).

        Raises:
            UnsupportedModelError: ``obj`` is none of ``module_types``, or ``state`` is given.
        """
        if self.module_types and not isinstance(obj, self.module_types):
            raise UnsupportedModelError(
                f"Expected {self.module_what}, got {type(obj).__module__}.{type(obj).__qualname__}."
            )
        if state:
            raise UnsupportedModelError(
                f"wrap() takes extra arguments only for flax linen; got {len(state)} for a {self.name} model."
            )
        return obj

    def child(self, module: Any, segment: Segment) -> Any:
        """The current child of ``module`` at ``segment`` (as :meth:`children` gives it), or None."""
        return dict(self.children(module)).get(segment)

    def segment(self, module: Any, key: str) -> Segment:
        """The segment of the child of ``module`` that ``key``, a part of a user's dotted path,
        names: by default ``key`` itself. An adapter whose containers are sequential turns a
        position ("0") into its ``int`` there, and one that accepts aliases (a Keras layer's
        own name) gives the aliased child's segment. Unknown keys are returned as they are
        (:meth:`child` then finds nothing)."""
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
        """The layer kind the canonical layout tables know it by ("dense", "conv", ...), or None:
        by default, :attr:`kinds`'s answer for the module's class."""
        return self.kinds[type(module)] if self.kinds is not None else None

    def fingerprint(self, root: Any) -> Any:
        """A cheap value that changes whenever the structure or the tie pattern changes.

        It must equal what the core records while reading the tree: depth
        first, the id of each module, then the ids of its leaves' objects as
        :meth:`leaves` lists them, then its children as :meth:`children` lists
        them. Adapters override it only to compute the same list faster, with
        :func:`fingerprint`.
        """
        return fingerprint(
            root,
            lambda m: [leaf.obj for leaf in self.leaves(m)],
            lambda m: [child for _, child in self.children(m)],
        )

    def data(self, leaf: Any) -> Any:
        """The framework's own tensor behind the leaf, native layout, no copy."""
        return leaf

    def asarray(self, value: Any) -> np.ndarray:
        """A numpy array from a value given by the user: numpy, a scalar, or a native tensor."""
        return np.asarray(value)

    def devices(self) -> list[str]:
        """Every device this framework sees here, CPU first."""
        return ["cpu"]

    # -- capability: autodiff -------------------------------------------------------------
    def backward(self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        """Run ``root`` on ``inputs`` and ``loss_fn`` on its output, and differentiate natively:
        gradients accumulate into what :meth:`grad` reads. Returns the loss."""
        raise self.unsupported("backward")

    def grad(self, leaf: Any) -> np.ndarray | None:
        """The gradient in native layout, or None before any backward pass."""
        raise self.unsupported("reading gradients")

    def zero_grad(self, leaf: Any) -> None:
        """Forget the leaf's gradient: :meth:`grad` is None until the next backward pass."""
        raise self.unsupported("zero_grad")

    # -- capability: sharing --------------------------------------------------------------
    def share(self, leaf: Any, dst_owner: Any, dst_name: str) -> None:
        """Make ``dst_owner.dst_name`` the very ``leaf`` (native sharing). ``tree.tie`` also calls
        it with the leaf that was there before, to undo a tie that failed halfway."""
        raise self.unsupported("tie")

    def shared(self, root: Any) -> None:
        """Called once after :meth:`share` made ``tree.tie``'s leaves one, with the whole model, so
        the adapter can drop what the framework cached about the old ones (Keras: compiled functions)."""
        return None  # most frameworks cache nothing that holds the old leaves

    # -- capability: device copies and backups --------------------------------------------
    def dlpack(self, leaf: Any) -> Any:
        """An object with ``__dlpack__`` for the leaf's tensor (native layout, on its device), or
        None where the framework cannot export one: ``ut.port`` then goes through numpy."""
        return None

    def write_dlpack(self, leaf: Any, tensor: Any) -> bool:
        """Copy ``tensor`` (another framework's, with ``__dlpack__``, the leaf's shape and
        dtype) into the leaf, device to device, with no copy through the host; False where
        the framework cannot take it (``ut.port`` then goes through numpy)."""
        return False

    def backup(self, leaf: Any) -> Any:
        """What :meth:`restore` needs to put the leaf's value back after a failed write, or
        None (the default): the core then keeps a copy of :meth:`read`'s value, on disk when
        it is large. A framework whose arrays are immutable (jax) returns the array itself.
        """
        return None

    def restore(self, leaf: Any, backup: Any) -> None:
        """Put back the value :meth:`backup` returned (or the core's copy, native layout)."""
        self.write(leaf, backup, None)

    def writable_view(self, leaf: Any) -> np.ndarray | None:
        """A writable numpy view of the leaf's own memory (native layout and dtype) where
        writing into it is a write of the leaf (its version counter, if any, bumped by this
        call), for a load to read a file's tensor straight into it; None (the default) where
        the leaf has no such memory on the host. A view that is not C-contiguous is not used."""
        return None

    def write_can_fail(self, leaf: Any) -> bool:
        """Whether :meth:`write` of a value already validated for the leaf (its shape and
        dtype, from the host) can still fail. True, the default: a load or a port keeps what
        undoes the write (:meth:`backup`, or a copy) until the whole batch is written. An
        adapter says False where nothing but the machine (memory, an interrupt) can stop
        such a write; a load then keeps no copy of the old value (``unitree._write.Journal``)."""
        return True

    def batch_begin(self, leaf: Any) -> None:
        """The leaf is about to be written as part of a batch (``write_all``, a load, a port):
        work per model that each write would redo can wait for :meth:`batch_end` (linen: a
        model object's ``params`` set once, not per leaf). The default does nothing."""
        return None

    def batch_end(self, leaf: Any) -> None:
        """The batch :meth:`batch_begin` began is over, written or undone: called once per
        leaf begun. The default does nothing."""
        return None

    # -- capability: layer settings -------------------------------------------------------
    def settings(self, module: Any) -> dict[str, Any]:
        """A layer's settings that change its results without being parameters, in one
        vocabulary, so that ``ut.port`` can compare them across frameworks by meaning
        (``unitree._settings.compare``).

        ``unitree._settings.VOCABULARY`` lists, per layer kind, every setting an adapter
        reports and what each value means, in PyTorch's terms: conv ``padding`` ("same",
        or (before, after) per spatial axis), ``padding_mode``, ``stride``, ``dilation``,
        ``groups``...; a norm's ``eps``, whether its stored ``scale`` and shift (``center``)
        are applied, batch norm's ``momentum`` as PyTorch counts it (the weight of the new
        batch: 1 - Keras's, Flax's, Gluon's); attention's ``num_heads``; recurrent
        activations. Report every setting of the vocabulary for every layer of a kind the
        adapter knows, the fixed ones too (PyTorch's recurrent activations): a setting not
        reported is unknown, and ``ut.port`` refuses it under ``strict`` (the check proves
        such a port by outputs). Also: ``flatten`` (Gluon's Dense, which no other framework
        has: a note), ``data_format`` (a Keras conv's, read by the core's flatten rule).

        {} for a layer whose settings cannot be read (a linen submodule made by a compact
        method), and the default: an adapter that knows no settings.
        """
        return {}

    # -- capability: the layout between layers ---------------------------------------------
    def step(self, module: Any) -> Step:
        """What ``module`` does to the layout of the activations, as a ``layouts.Step``: asked
        on a channels-last backend (``layouts.CHANNELS_LAST``), and on a channels-first one
        (``layouts.CHANNELS_FIRST``) whose model holds a conv, of a parameterless layer, a
        layer with leaves of no kind the tables know, and a container, between a conv and
        a dense layer that may read its flatten (or a dense layer and a conv that may read
        its output reshaped); and of a dense layer reading a map, which may flatten it itself
        (``FLATTEN``: Gluon's ``Dense``). The read follows the answer
        (``layouts.after_step``) to decide the dense layer's rule (``layouts.decide``);
        where it is ``UNKNOWN`` the rule is unknown (``View.unknown``) and a port refuses it
        under ``strict``.

        A layer: ``KEEP`` (the layout stays; with the ``data_format`` it finds the channels
        by, for a pooling or an upsampling), ``FLATTEN`` (of some axes only: PyTorch's
        ``Flatten(2)``), ``PERMUTE``, ``RESHAPE``, ``UNFLATTEN`` (PyTorch's ``Unflatten``),
        ``POOL`` (global), ``CONCAT``, ``MAP`` (a conv no table knows starts a feature map of
        its own: Keras's ``SeparableConv2D``; asked even when nothing is followed). A
        container: ``CHAIN`` (its children called in order, each on the previous one's output
        and nothing else: Keras's, PyTorch's and Gluon's ``Sequential``), ``GRAPH`` (as its
        ``wires`` say: Keras's functional model). Default: ``UNKNOWN``, which is right for any
        module whose call the adapter cannot read (a lambda, a custom ``call``).
        """
        return _UNKNOWN_STEP

    # -- capability: native files ---------------------------------------------------------
    def state_dict_file(self, path: str) -> Mapping[str, Any]:
        """{key: native tensor} of a file in the framework's own state_dict format, read
        without unpickling arbitrary objects (``ut.load`` of a PyTorch file).

        Raises:
            CheckpointError: the file is not one, naming it and the problem.
        """
        raise self.unsupported("reading native state_dict files")

    def shared_storage(self, state: Mapping[str, Any]) -> dict[str, str]:
        """{key: the first key holding the very same tensor} of a :meth:`state_dict_file`: a
        tied parameter the file stores once under several keys."""
        raise self.unsupported("reading native state_dict files")

    # -- capability: separate variables ---------------------------------------------------
    def variables(self, root: Any) -> Any:
        """The current variables of a framework that keeps them apart from the module (flax linen)."""
        raise UnsupportedError(
            f"tree.variables is for flax linen, which keeps variables apart; a {self.name} model holds its own."
        )

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: Any,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """Run the whole model ``root`` natively, in inference mode, on ``inputs``, and catch the
        outputs of the modules in ``capture`` (this adapter's module objects, as a View lists
        them): what ``ut.compare`` and a port's output check compare across frameworks.

        ``inputs`` go in as the model's positional arguments (numpy arrays in the model's
        floating dtype and on its device, as :meth:`backward` takes them; native tensors as
        they are), ``kwargs`` as its keyword arguments. Inference mode is the framework's own
        (torch ``eval()`` under ``no_grad``, Keras ``training=False``, NNX ``eval()``, linen
        without mutable collections, Gluon outside ``autograd.record``); the model's mode is
        put back afterwards and nothing the capture installed (hooks, wrappers) stays.

        Returns:
            (the model's output, captured): the output with every tensor as a numpy array of
            its own (:func:`as_numpy`: tuples and lists as tuples, mappings as dicts), and
            {id(module): [its output at each call, in call order, as the model output]} for
            every module of ``capture`` the run called (a module called at two places has two
            entries; one never called has none).
        """
        raise self.unsupported("running the model (ut.compare, the output check of ut.port)")

    def unsupported(self, capability: str) -> UnsupportedError:
        return UnsupportedError(f"{capability} is not supported by the {self.name} adapter.")


_UNKNOWN_STEP = Step(UNKNOWN)


class KindTable(dict):
    """Layer class -> the kind of the canonical tables ("dense", "conv", ...), or None; a
    subclass has its nearest named base's kind: ``table[type(module)]``, unless it overrides
    the base's call (``forward``, ``call``, ``__call__``, ``hybrid_forward``): a timm
    ``StdConv2d`` standardizes its weight in ``forward``, an ``EqualLinear`` scales it, so
    the same leaves compute something else and such a class has no kind (it ports only onto
    its own type). A class registered
    with ``unitree.register_layer`` (``layouts.REGISTERED``: by class or by qualified name)
    has its registered :class:`~unitree.layouts.Kind`, which carries its own leaf rules; it
    is looked up at each base of the MRO before the table's own classes, so the nearest
    base decides. Remembered per class, so a lookup after the first is a dict's (it is asked
    once per module on every read); a registration makes every table forget (:meth:`forget`)."""

    _tables: ClassVar[list[weakref.ref[KindTable]]] = []  # every table, for forget()

    def __init__(self, kinds: Mapping[type, str]) -> None:
        super().__init__()
        self.kinds = dict(kinds)
        KindTable._tables.append(weakref.ref(self))

    def __missing__(self, cls: type) -> str | None:
        kind = None
        for n, base in enumerate(cls.__mro__):
            kind = registered(base) or self.kinds.get(base)
            if kind is not None:
                if _overrides_call(cls.__mro__[:n], base):
                    kind = None  # it computes something else with the same leaves
                break
        self[cls] = kind
        return kind

    @classmethod
    def forget(cls) -> None:
        """Forget every class every table has looked up: a registration changed the answers."""
        for ref in list(cls._tables):
            table = ref()
            if table is not None:
                table.clear()


_CALLS = ("forward", "call", "__call__", "hybrid_forward")


def _overrides_call(subclasses: tuple[type, ...], base: type) -> bool:
    """Whether one of ``subclasses`` (a class and its bases up to ``base``) defines its own
    call method, other than the one ``base`` has (flax linen re-wraps inherited methods)."""

    def unwrapped(f: Any) -> Any:
        while hasattr(f, "__wrapped__"):
            f = f.__wrapped__
        return f

    for sub in subclasses:
        for name in _CALLS:
            own = sub.__dict__.get(name)
            if own is not None and unwrapped(own) is not unwrapped(getattr(base, name, None)):
                return True
    return False


def fingerprint(
    root: Any,
    leaf_objects: Callable[[Any], Iterable[Any]],
    children: Callable[[Any], Iterable[Any]],
) -> list[int]:
    """What :meth:`Adapter.fingerprint` returns, from two cheap functions of a module: its own
    leaves' objects and its child modules, each in the order :meth:`Adapter.leaves` and
    :meth:`Adapter.children` list them (None entries are skipped, as torch's dicts hold them)."""
    ids: list[int] = []
    add = ids.append

    def visit(module: Any) -> None:
        add(id(module))
        for obj in leaf_objects(module):
            if obj is not None:
                add(id(obj))
        for child in children(module):
            if child is not None:
                visit(child)

    visit(root)
    return ids


def as_numpy(value: Any, tensor: Callable[[Any], np.ndarray | None]) -> Any:
    """A model's output (or a module's) with each tensor in it a numpy array of its own, for
    :meth:`Adapter.run`: ``tensor`` converts one tensor, or returns None for what is no
    tensor. Tuples and lists become tuples, mappings dicts (a Hugging Face ``ModelOutput``
    is one), in their own order; Python numbers become 0-d arrays; anything else stays as it
    is (a comparison then finds it not comparable). Every array is a copy: a later in-place
    operation of the model (torch's ``ReLU(inplace=True)``) cannot change what was caught."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {k: as_numpy(v, tensor) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(as_numpy(v, tensor) for v in value)
    if isinstance(value, (bool, int, float, complex, np.generic, np.ndarray)):
        return np.array(value)
    a = tensor(value)
    return value if a is None else np.array(a)


# The package or module of the types an adapter claims (a type there or below it) -> (adapter
# module, what it wraps, the extra to install). Flax names the modules of its two base classes:
# a linen module may live under flax.nnx (nnx.bridge.ToLinen), and is found by its base.
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "torch": ("unitree.adapters.torch", "torch.nn.Module", "torch"),
    "keras": ("unitree.adapters.keras", "keras.Layer (Keras 3)", "keras"),
    "flax.nnx.module": ("unitree.adapters.nnx", "flax nnx.Module", "flax"),
    "flax.linen.module": ("unitree.adapters.linen", "a linen Module with its variables", "flax"),
    "mxnet": ("unitree.adapters.gluon", "mxnet.gluon.Block", "gluon"),
}

# Frameworks that stop the MRO walk where no adapter claims the type: a Keras 3 model on the
# torch backend is a torch.nn.Module too, and must not be read as one.
FRAMEWORKS = {
    "torch": "PyTorch",
    "keras": "Keras 3",
    "tensorflow": "TensorFlow",
    "flax": "Flax",
    "jax": "JAX",
    "mxnet": "MXNet",
}

_loaded: dict[str, Adapter] = {}


def _load(module_name: str) -> Adapter:
    adapter = _loaded.get(module_name)
    if adapter is None:
        adapter = importlib.import_module(module_name).adapter
        _loaded[module_name] = adapter
    return adapter


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="unitree.adapters")}


# Frameworks whose adapters claim parts of them: the walk goes on to a claimed base class.
_SPLIT = {key.partition(".")[0] for key in ADAPTERS if "." in key}


def _claimed(module: str) -> str | None:
    """The ADAPTERS key that is ``module`` or a package holding it ("torch.nn.modules.linear"
    -> "torch"), or None."""
    while module:
        if module in ADAPTERS:
            return module
        module = module.rpartition(".")[0]
    return None


def adapter_named(backend: str) -> Adapter:
    """The adapter of the framework whose top-level package is ``backend`` ("torch")."""
    return _load(ADAPTERS[backend][0])


def _holds_linen(obj: Any) -> bool:
    """Whether ``obj`` holds a linen module as ``obj.module`` beside its ``obj.params`` (Hugging
    Face's Flax models are no linen Module themselves), found without importing flax."""
    held = type(getattr(obj, "module", None))
    linen = any(c.__module__ == "flax.linen.module" for c in held.__mro__)
    return linen and hasattr(type(obj), "params")


def adapter_for(obj: Any) -> Adapter:
    """The adapter for ``obj``, chosen by the module names along its type's MRO.

    The MRO is walked from the most derived class and the first framework
    found decides, so a Keras model on the torch backend (also a
    ``torch.nn.Module``) is never taken for a torch model. Third-party
    adapters register in the entry point group ``unitree.adapters`` under the
    top-level module name of the types they claim.

    Raises:
        UnsupportedModelError: no adapter claims ``obj``, naming what is supported.
    """
    modules = [cls.__module__ for cls in type(obj).__mro__]
    roots = [module.partition(".")[0] for module in modules]
    for module, root in zip(modules, roots):
        key = _claimed(module)
        if key is not None:
            return _load(ADAPTERS[key][0])
        if root in FRAMEWORKS and root not in _SPLIT:
            break
    if _holds_linen(obj):
        return _load(ADAPTERS["flax.linen.module"][0])
    plugins = _entry_points()
    for root in roots:
        if root in plugins:
            return _load(plugins[root])
    by_extra: dict[str, list[str]] = {}  # flax's two adapters: one line, one extra
    for _, what, extra in ADAPTERS.values():
        by_extra.setdefault(extra, []).append(what)
    supported = "; ".join(
        f"{', or '.join(whats)} (pip install 'unitree-params[{extra}]')"
        for extra, whats in by_extra.items()
    )
    root = next((root for root in roots if root in FRAMEWORKS), None)
    if root is None:
        why = "no adapter claims it"
    elif any(key.partition(".")[0] == root for key in ADAPTERS):
        why = f"it is a {FRAMEWORKS[root]} object, but not a model unitree reads"
    else:
        why = f"{FRAMEWORKS[root]} has no adapter in this version of unitree"
    raise UnsupportedModelError(
        f"Expected a model of a supported framework, got {type(obj).__module__}.{type(obj).__qualname__}: "
        f"{why}. Supported: {supported}."
    )
