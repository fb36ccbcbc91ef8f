"""PyTorch: ``torch.nn.Module`` trees.

Paths are torch's own (``_modules`` keys: positions in ``Sequential`` and
``ModuleList``, keys in ``ModuleDict``, attribute names elsewhere) and so are
the leaf names and layouts, which are the canonical ones (a ``Linear`` reading a conv's map
through a module whose ``forward`` unitree cannot read has an unknown layout, which keeps the
native one: ``_torch_layout``). A tie is one ``Parameter`` object (or buffer tensor) reached
from two places, as ``named_parameters`` deduplicates them.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm  # torch >= 2.1
from torch.nn.utils.weight_norm import WeightNorm as _LegacyWeightNorm

from unitree._adapter import Adapter, KindTable, Leaf, as_numpy, fingerprint, new_leaf
from unitree._errors import (
    CheckpointError,
    PathError,
    UninitializedError,
    UnsupportedError,
    ValueTypeError,
)
from unitree._param import contiguous
from unitree.layouts import CONVS, Step

from ._torch_layout import step as torch_step

_KINDS: dict[type, str] = {
    nn.Linear: "dense",
    nn.Conv1d: "conv",
    nn.Conv2d: "conv",
    nn.Conv3d: "conv",
    nn.ConvTranspose1d: "conv_transpose",
    nn.ConvTranspose2d: "conv_transpose",
    nn.ConvTranspose3d: "conv_transpose",
    nn.Embedding: "embedding",
    nn.LayerNorm: "layer_norm",
    nn.modules.batchnorm._BatchNorm: "batch_norm",
    nn.GroupNorm: "group_norm",
    nn.LSTM: "lstm",
    nn.GRU: "gru",
    nn.MultiheadAttention: "attention",
}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's numpy view (a copy from other devices), for dtypes numpy lacks too.
    Keras on the torch backend reads its tensors through it as well."""
    t = t.detach()
    if t.device.type == "meta":
        raise UninitializedError(
            "The tensor is on the meta device: it has a shape but no values. Call module.to_empty(device=...) and initialize it first."
        )
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except TypeError:  # bfloat16, float8: numpy knows them only through ml_dtypes
        import ml_dtypes

        name = str(t.dtype).rpartition(".")[2]
        bits = {1: torch.uint8, 2: torch.int16}[t.element_size()]
        return t.view(bits).numpy().view(getattr(ml_dtypes, name))


def from_numpy(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A tensor of ``like``'s dtype over ``a``'s memory, to copy from (never kept, never
    written): a read-only or strided array is taken as it is; one torch cannot take (a
    negative stride: a flipped view) is copied first."""
    bits = a.dtype.kind == "V"  # an ml_dtypes type: move the bits, then reinterpret them
    if bits:
        a = a.view({1: np.uint8, 2: np.int16}[a.dtype.itemsize])
    if any(s < 0 or s % a.itemsize for s in a.strides):
        a = np.array(a)
    if a.flags.writeable:
        t = torch.from_numpy(a)
    else:
        with warnings.catch_warnings():  # torch warns that a write would be undefined
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a)
    return t.view(like.dtype) if bits else t


def _copy_into(leaf: torch.Tensor, value: np.ndarray) -> bool:
    """Copy a large strided matrix (a transposed view) into a contiguous CPU ``leaf`` tile by
    tile on every core (``unitree._param.contiguous``: several times torch's own strided
    ``copy_``), bumping its version counter as ``copy_`` would; False where it does not apply."""
    if value.ndim != 2 or value.size < 1 << 16 or value.flags.c_contiguous:
        return False
    out = _host(leaf)
    if out is None or value.dtype != out.dtype:
        return False
    contiguous(value, out)
    torch.autograd.graph.increment_version(leaf)
    return True


def _host(leaf: torch.Tensor) -> np.ndarray | None:
    """A writable numpy view of a plain contiguous CPU tensor's memory, which numpy may write
    as ``copy_`` would (not an inference tensor outside inference mode: torch refuses those
    writes); None for any other."""
    if (
        type(leaf) is _Normed
        or leaf.device.type != "cpu"
        or not leaf.is_contiguous()
        or leaf.is_conj()
        or leaf.is_neg()
        or (leaf.is_inference() and not torch.is_inference_mode_enabled())
    ):
        return None
    return to_numpy(leaf)


def _unshared(value: np.ndarray, leaf: torch.Tensor) -> np.ndarray:
    """``value``, copied first if it overlaps the leaf's own memory (``p.set(p.numpy().T)``):
    a write would read what it had already overwritten."""
    if leaf.device.type == "cpu" and type(leaf) is not _Normed:
        own = to_numpy(leaf)
        if np.may_share_memory(value, own):
            return np.array(value)
    return value


def _tensors(m: nn.Module) -> Any:
    """The objects of ``leaves(m)``, in its order, for the fingerprint."""
    if m._forward_pre_hooks or "parametrizations" in m._modules:  # maybe weight-normed
        return [leaf.obj for leaf in adapter.leaves(m)]
    # buffers are rare: most modules give their parameters' dict view, with no list to build
    buffers = m._buffers
    return [*m._parameters.values(), *buffers.values()] if buffers else m._parameters.values()


def _child_modules(m: nn.Module) -> Any:
    """The modules of ``children(m)``, in its order, for the fingerprint."""
    modules = m._modules
    if not modules:
        return ()
    values = modules.values()
    if "parametrizations" in modules or any(map(_wrapper, map(type, values))):
        return [child for _, child in adapter.children(m)]
    return values


# -- wrappers that only forward to a model: transparent (docs: DESIGN §4) ---------------------
# The qualified names of their classes (torch._dynamo is not imported to name OptimizedModule:
# a compiled model exists only once it is) -> the attribute that holds the wrapped model.
_WRAPPERS = {
    "torch.nn.parallel.data_parallel.DataParallel": "module",
    "torch.nn.parallel.distributed.DistributedDataParallel": "module",
    "torch._dynamo.eval_frame.OptimizedModule": "_orig_mod",
}


class _WrapperTable(dict):
    """Module class -> the attribute holding the model it wraps, or None: its own class's or
    its nearest base's entry in _WRAPPERS (a subclass of DataParallel wraps too). Remembered
    per class."""

    def __missing__(self, cls: type) -> str | None:
        names = (f"{base.__module__}.{base.__qualname__}" for base in cls.__mro__)
        attr = self[cls] = next((_WRAPPERS[n] for n in names if n in _WRAPPERS), None)
        return attr


_wrapper = _WrapperTable().__getitem__


def unwrap(m: Any) -> Any:
    """The model that ``m`` only forwards to (``DataParallel``'s and
    ``DistributedDataParallel``'s ``module``, ``torch.compile``'s ``_orig_mod``), through
    nested wrappers; ``m`` itself when it is no such wrapper. A wrapper holding anything
    besides the wrapped model (leaves of its own, other submodules) is not transparent: it
    stays, and its paths show it."""
    attr = _wrapper(type(m))
    while attr is not None:
        modules = m._modules
        inner = modules.get(attr)
        if inner is None or len(modules) != 1 or m._parameters or m._buffers:
            return m
        m = inner
        attr = _wrapper(type(m))
    return m


# -- weight norm: the layer's effective weight is its leaf ------------------------------------


class _Normed:
    """A weight that torch computes by weight norm from a magnitude g and a direction v,
    w = g * v / ||v|| (the norm over every axis but ``dim``): what a weight-normed layer's
    leaf stands for, so its canonical view is its effective weight (``module.weight``).

    ``torch.nn.utils.parametrizations.weight_norm`` keeps g and v as
    ``parametrizations.<name>.original0`` and ``original1`` (``owner``: that
    ParametrizationList); the legacy ``torch.nn.utils.weight_norm`` as ``<name>_g`` and
    ``<name>_v``, recomputing ``module.<name>`` before each forward (``owner``: the module).
    Writing w writes g = ||w|| and v = w, as torch's own ``right_inverse`` (and the legacy
    ``weight_norm`` when it is applied) makes them: the effective weight is w. One object per
    weight (``_handle``), so its identity is stable across reads; it holds its owner weakly.
    ``shape``, ``dtype``, ``device`` and ``requires_grad`` are v's (g's too, for the last).
    """

    __slots__ = ("__weakref__", "_owner", "dim", "legacy", "name")

    def __init__(self, owner: nn.Module, name: str, dim: int, legacy: bool) -> None:
        self._owner = weakref.ref(owner)
        self.name = name
        self.dim = dim
        self.legacy = legacy

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(g, v), the parameters torch trains."""
        owner = self._owner()
        if owner is None:
            raise PathError(f"The weight-normed layer of {self.name!r} no longer exists.")
        params = owner._parameters
        if self.legacy:
            return params[f"{self.name}_g"], params[f"{self.name}_v"]
        return params["original0"], params["original1"]

    def value(self) -> torch.Tensor:
        """The effective weight, as torch computes it for the forward pass."""
        g, v = self.factors()
        with torch.no_grad():
            return torch._weight_norm(v, g, self.dim)

    def assign(self, w: torch.Tensor) -> None:
        """Make the effective weight ``w``: g = ||w||, v = w, in place (the version counters
        are bumped, as ``write`` does)."""
        g, v = self.factors()
        with torch.no_grad():
            w = w.to(device=v.device, dtype=v.dtype)
            g.copy_(torch.norm_except_dim(w, 2, self.dim))
            v.copy_(w)
        self.refresh()

    def refresh(self) -> None:
        """The legacy weight norm's ``module.<name>``, which its forward pre-hook sets from g
        and v: kept current for whoever reads it before the next forward pass."""
        if self.legacy:
            g, v = self.factors()
            setattr(self._owner(), self.name, torch._weight_norm(v, g, self.dim))

    @property
    def shape(self) -> torch.Size:
        return self.factors()[1].shape

    @property
    def dtype(self) -> torch.dtype:
        return self.factors()[1].dtype

    @property
    def device(self) -> torch.device:
        return self.factors()[1].device

    @property
    def requires_grad(self) -> bool:
        return any(t.requires_grad for t in self.factors())


_handles: weakref.WeakKeyDictionary[Any, _Normed] = weakref.WeakKeyDictionary()


def _handle(key: Any, owner: nn.Module, name: str, dim: int, legacy: bool) -> _Normed:
    """The one :class:`_Normed` of a weight, by what torch keeps one of per weight (its
    ParametrizationList, or the legacy forward pre-hook)."""
    handle = _handles.get(key)
    if handle is None:
        handle = _handles.setdefault(key, _Normed(owner, name, dim, legacy))
    return handle


def _with_weight_norms(module: nn.Module, leaves: list[Leaf]) -> list[Leaf]:
    """``leaves`` with each weight-normed weight's g and v replaced by the weight, first."""
    normed = _weight_norms(module)[0]
    if not normed:
        return leaves
    factors = {f"{h.name}_{x}" for h in normed if h.legacy for x in "gv"}
    return [new_leaf((h.name, h, True, True)) for h in normed] + [
        leaf for leaf in leaves if leaf.name not in factors
    ]


def _weight_norms(module: nn.Module) -> tuple[list[_Normed], bool]:
    """The weight-normed weights of ``module`` (parametrized ones first), and whether its
    ``parametrizations`` are all weight norms, read as such and so not listed as a child. A
    module with any other parametrization keeps every one native (``parametrizations.*``)."""
    out: list[_Normed] = []
    plists = module._modules.get("parametrizations")
    hidden = (
        isinstance(plists, nn.ModuleDict)
        and len(plists) > 0
        and all(
            len(plist) == 1 and type(plist[0]) is _WeightNorm and len(plist._parameters) == 2
            for plist in plists.values()
        )
    )
    if hidden:
        out += [_handle(p, p, name, p[0].dim, False) for name, p in plists.items()]
    params = module._parameters
    for hook in module._forward_pre_hooks.values():
        if (
            isinstance(hook, _LegacyWeightNorm)
            and f"{hook.name}_g" in params
            and f"{hook.name}_v" in params
        ):
            out.append(_handle(hook, module, hook.name, hook.dim, True))
    return out, hidden


class TorchAdapter(Adapter):
    name = "torch"
    module_types = (nn.Module,)
    module_what = "a torch.nn.Module"
    kinds = KindTable(_KINDS)
    strided_writes = True  # from_numpy takes a strided view, _copy_into copies it once

    # -- structure -----------------------------------------------------------------
    def root(self, obj: Any, *state: Any) -> Any:
        """The model itself, or the one a wrapper forwards to (``DataParallel``,
        ``DistributedDataParallel``, ``torch.compile``: :func:`unwrap`), whose paths the tree
        has: a wrapped model's checkpoint loads into the plain one, and ports the same."""
        return unwrap(super().root(obj, *state))

    def children(self, module: nn.Module) -> Sequence[tuple[str, nn.Module]]:
        """torch's ``_modules``, with a wrapper replaced by the model it wraps (a compiled
        submodule has the plain one's paths), and without the ``parametrizations`` of a
        weight-normed layer, whose weights are its own leaves (:meth:`leaves`)."""
        modules = module._modules
        if not modules:
            return ()
        if "parametrizations" in modules or any(map(_wrapper, map(type, modules.values()))):
            hidden = "parametrizations" if _weight_norms(module)[1] else None
            return [(k, unwrap(m)) for k, m in modules.items() if m is not None and k != hidden]
        return [(k, m) for k, m in modules.items() if m is not None]

    def child(self, module: nn.Module, segment: str) -> Any:
        m = module._modules.get(segment)
        if m is None or (segment == "parametrizations" and _weight_norms(module)[1]):
            return None
        return unwrap(m)

    def leaves(self, module: nn.Module) -> list[Leaf]:
        """torch's parameters and buffers; a weight-normed weight is one leaf, first: the
        effective weight (:class:`_Normed`), its g and v not listed."""
        # once per module on every wrap: the dicts read directly, empty ones skipped
        params, buffers = module._parameters, module._buffers
        out = (
            [new_leaf((n, p, True, True)) for n, p in params.items() if p is not None]
            if params
            else []
        )
        if buffers:
            transient = module._non_persistent_buffers_set
            out += [
                new_leaf((n, b, False, n not in transient))
                for n, b in buffers.items()
                if b is not None
            ]
        if module._forward_pre_hooks or "parametrizations" in module._modules:
            return _with_weight_norms(module, out)
        return out

    def leaf(self, module: nn.Module, name: str) -> Any:
        t = module._parameters.get(name)
        if t is None:
            t = module._buffers.get(name)
        if t is None:
            t = next((h for h in _weight_norms(module)[0] if h.name == name), None)
        if t is None:
            raise PathError(
                f"The {type(module).__name__} module no longer has a parameter or buffer {name!r}."
            )
        return t

    def state_dict_file(self, path: str) -> dict[str, torch.Tensor]:
        """A ``torch.save``d state_dict, loaded with ``weights_only=True`` (never a plain
        unpickle) and memory-mapped where the format allows, for ``ut.load``. A file that is
        not one (truncated, corrupt, refused by the restricted unpickler, not a flat dict of
        tensors) raises a ``CheckpointError`` naming the file and the problem."""
        try:
            if path.endswith(".safetensors"):  # torch.load would read it as one, by its name
                with open(path, "rb") as f:
                    state = torch.load(f, map_location="cpu", weights_only=True)
            else:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                    state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # RuntimeError, UnpicklingError, EOFError, OSError...
            # torch's messages run to paragraphs: keep the one that names the problem
            text = str(e).strip()
            if text.startswith("Weights only load failed"):
                details = [p.strip() for p in text.split("\n\n")[1:] if p.strip()]
                details = [p for p in details if not p.startswith("Check the documentation")]
                text = "refused by the weights_only unpickler" + (
                    f": {details[0]}" if details else ""
                )
            else:
                text = text.splitlines()[0].split(". ")[0] if text else "the file ends early"
            raise CheckpointError(
                f"{path}: not a PyTorch state_dict file that loads with weights_only=True"
                f" ({type(e).__name__}: {text[:200].rstrip('.')})."
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(
                f"{path}: expected a state_dict (a dict of names to tensors), got a {type(state).__name__}."
            )
        for key, value in state.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{path}: expected a state_dict (a dict of names to tensors), but the key {key!r} is not a string."
                )
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"{path}: expected a state_dict (a dict of names to tensors), but {key!r} holds {type(value).__name__}, not a tensor."
                )
        return state

    def shared_storage(self, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """{key: the first key with the very same tensor}: a tied parameter that
        ``torch.save`` stored once and the state_dict lists under each of its names."""
        first: dict[tuple[Any, ...], str] = {}
        out: dict[str, str] = {}
        for key, t in state.items():
            where = (
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                t.stride(),
                t.dtype,
            )
            if where in first:
                out[key] = first[where]
            else:
                first[where] = key
        return out

    def settings(self, module: nn.Module) -> dict[str, Any]:
        """The settings of ``unitree._settings.VOCABULARY`` for torch's own layers of a kind;
        {} for any other module (a registered third-party type: its settings are unknown).
        Fixed in PyTorch, and reported as such: no kernel mask or input dilation, no
        masking embedding, attention over the sequence, recurrent layers run forward."""
        kind = self.kind(module)
        if not isinstance(module, _OWN):
            return {}
        if kind in CONVS:
            return _conv_settings(module, kind)
        if kind == "embedding":
            norm = module.max_norm
            return {
                "max_norm": None if norm is None else (float(norm), float(module.norm_type)),
                "mask_zero": False,
            }
        if kind in ("layer_norm", "batch_norm", "group_norm"):
            out = {
                "eps": float(module.eps),
                "scale": module.weight is not None,  # affine=False: no weight, no bias
                "center": module.bias is not None,
            }
            if kind == "layer_norm":
                axes = tuple(range(-len(module.normalized_shape), 0))
                return out | {"axes": axes, "rms_scaling": False}
            if kind == "group_norm":
                return out | {"groups": int(module.num_groups)}
            momentum = module.momentum  # None: a cumulative average
            return out | {"momentum": None if momentum is None else float(momentum)}
        if kind == "attention":
            own = type(module).forward is nn.MultiheadAttention.forward
            return {
                "num_heads": int(module.num_heads),
                "add_zero_attn": bool(module.add_zero_attn),
                "attention_axes": None,
                "attention_fn": "dot_product_attention"
                if own
                else f"{type(module).__module__}.{type(module).__qualname__}.forward",
                "gated": False,
            }
        if kind in ("lstm", "gru"):  # fixed in PyTorch
            out = {
                "activation": "tanh",
                "recurrent_activation": "sigmoid",
                "reverse": False,
                "stateful": False,
            }
            # a GRU's reset gate multiplies (W_hn h + b_hn): after the recurrent matmul
            return {**out, "reset_after": True} if kind == "gru" else out
        return {}

    def step(self, module: nn.Module) -> Step:
        """What ``module`` does to the layout of the activations (``Adapter.step``): read from
        torch's own modules (``_torch_layout``); a custom ``forward`` is ``UNKNOWN``."""
        return torch_step(module)

    def fingerprint(self, root: nn.Module) -> Any:
        # the dicts themselves where leaves() and children() would list them as they are:
        # this runs on every traversal
        return fingerprint(root, _tensors, _child_modules)

    # -- one leaf ------------------------------------------------------------------------
    def shape(self, leaf: torch.Tensor) -> tuple[int, ...] | None:
        if isinstance(leaf, nn.parameter.UninitializedTensorMixin):
            return None
        return tuple(leaf.shape)

    def dtype(self, leaf: torch.Tensor) -> str:
        return str(leaf.dtype).rpartition(".")[2]

    def device(self, leaf: torch.Tensor) -> str:
        return str(leaf.device)

    def trainable(self, leaf: torch.Tensor) -> bool:
        return leaf.requires_grad

    def read(self, leaf: torch.Tensor) -> np.ndarray:
        if type(leaf) is _Normed:
            return to_numpy(leaf.value())
        return to_numpy(leaf)

    def write(self, leaf: torch.Tensor, value: np.ndarray, index: Any = None) -> None:
        if type(leaf) is _Normed:  # g and v from the whole weight
            src = from_numpy(value, leaf)
            if index is not None:
                w = leaf.value()
                w[index] = src.to(w.device)
                src = w
            leaf.assign(src)
            return
        # no_grad: a parameter is a leaf that requires grad. The write still
        # bumps the version counter, so a graph that saved the old value fails
        # loudly in backward instead of using the new one silently.
        value = _unshared(value, leaf)
        with torch.no_grad():
            if index is not None:
                leaf[index] = from_numpy(value, leaf).to(leaf.device)
            elif not _copy_into(leaf, value):
                leaf.copy_(from_numpy(value, leaf))

    def dlpack(self, leaf: torch.Tensor) -> torch.Tensor | None:
        if type(leaf) is _Normed:  # computed, not stored: ut.port goes through numpy
            return None
        return leaf.detach()  # a tensor that requires grad cannot be exported

    def write_dlpack(self, leaf: torch.Tensor, tensor: Any) -> bool:
        if type(leaf) is _Normed:  # written as g and v, by write()
            return False
        with torch.no_grad():  # as write(): the version counter is bumped
            leaf.copy_(torch.from_dlpack(tensor))
        return True

    def data(self, leaf: torch.Tensor) -> torch.Tensor:
        if type(leaf) is _Normed:  # no tensor holds it: the weight as torch computes it
            return leaf.value()
        return leaf.data

    def native(self, obj: Any) -> Any:
        return obj.value() if type(obj) is _Normed else obj

    def grad(self, leaf: torch.Tensor) -> np.ndarray | None:
        if type(leaf) is _Normed:
            raise UnsupportedError(
                f"The gradient of the weight-normed {leaf.name!r} is not kept by torch: it keeps "
                "the gradients of its magnitude and direction (weight_g and weight_v, or "
                f"parametrizations.{leaf.name}.original0 and original1); read them on the module."
            )
        return None if leaf.grad is None else to_numpy(leaf.grad)

    def zero_grad(self, leaf: torch.Tensor) -> None:
        if type(leaf) is _Normed:
            for t in leaf.factors():
                t.grad = None
            return
        leaf.grad = None  # torch's zero_grad(set_to_none=True)

    def backup(self, leaf: torch.Tensor) -> Any:
        """None (the core keeps a copy), except for a weight-normed weight: copies of g and v,
        which :meth:`restore` puts back as they were (a write of the weight would make other
        ones, computing the same weight)."""
        if type(leaf) is _Normed:
            return tuple(t.detach().clone() for t in leaf.factors())
        return None

    def writable_view(self, leaf: torch.Tensor) -> np.ndarray | None:
        out = _host(leaf)
        if out is not None:
            torch.autograd.graph.increment_version(leaf)  # as copy_ would
        return out

    def write_can_fail(self, leaf: torch.Tensor) -> bool:
        """False for a plain CPU tensor: ``copy_`` of a value of its shape and dtype only reads
        and writes memory. A weight norm's computation, another device's copy and an inference
        tensor outside inference mode (torch refuses to write it) can fail."""
        return (
            type(leaf) is _Normed
            or leaf.device.type != "cpu"
            or (leaf.is_inference() and not torch.is_inference_mode_enabled())
        )

    def restore(self, leaf: torch.Tensor, backup: Any) -> None:
        if type(leaf) is _Normed and type(backup) is tuple:
            with torch.no_grad():
                for t, old in zip(leaf.factors(), backup):
                    t.copy_(old)
            leaf.refresh()
            return
        self.write(leaf, backup, None)

    def asarray(self, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            return to_numpy(value)
        return np.asarray(value)

    # -- the whole model -------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def backward(
        self, root: nn.Module, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]
    ) -> float:
        first = next(itertools.chain(root.parameters(), root.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
        floating = next(
            (p.dtype for p in root.parameters() if p.dtype.is_floating_point), torch.float32
        )
        args = [self._input(x, device, floating) for x in inputs]
        loss = loss_fn(root(*args))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueTypeError(
                f"loss_fn must return a torch scalar, got {type(loss).__name__} {getattr(loss, 'shape', '')}."
            )
        loss.backward()
        return loss.item()

    @staticmethod
    def _input(x: Any, device: torch.device, floating: torch.dtype) -> Any:
        if isinstance(x, np.ndarray) or np.isscalar(x):
            t = torch.as_tensor(np.asarray(x))
            return (
                t.to(device=device, dtype=floating) if t.dtype.is_floating_point else t.to(device)
            )
        return x

    def share(self, leaf: torch.Tensor, dst_owner: nn.Module, dst_name: str) -> None:
        if type(leaf) is _Normed or any(h.name == dst_name for h in _weight_norms(dst_owner)[0]):
            raise UnsupportedError(
                "tie: a weight-normed weight is computed from its magnitude and direction, not "
                "stored: it cannot be one storage with another (tie their g and v instead)."
            )
        if isinstance(leaf, nn.Parameter):
            setattr(dst_owner, dst_name, leaf)
        else:
            dst_owner._buffers[dst_name] = leaf

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: nn.Module,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """``root(*inputs, **kwargs)`` in ``eval()`` mode under ``torch.no_grad``, every
        module's ``training`` flag put back afterwards; captured through forward hooks (each
        removed afterwards), which see a module's output at every call."""
        first = next(itertools.chain(root.parameters(), root.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
        floating = next(
            (p.dtype for p in root.parameters() if p.dtype.is_floating_point), torch.float32
        )
        args = [self._input(x, device, floating) for x in inputs]
        kwargs = {  # numpy keyword inputs as tensors too (an attention mask)
            k: self._input(v, device, floating) if isinstance(v, np.ndarray) else v
            for k, v in (kwargs or {}).items()
        }
        captured: dict[int, list[Any]] = {}

        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            # a copy now: an in-place operation later in the pass would change the tensor
            captured.setdefault(id(module), []).append(as_numpy(output, _tensor_numpy))

        modes = [(m, m.training) for m in root.modules()]
        handles = []
        try:
            for m in {id(m): m for m in capture if isinstance(m, nn.Module)}.values():
                handles.append(m.register_forward_hook(hook))
            root.eval()
            with torch.no_grad():
                out = root(*args, **(kwargs or {}))
            return as_numpy(out, _tensor_numpy), captured
        finally:
            for handle in handles:
                handle.remove()
            for m, training in modes:
                m.training = training


def _tensor_numpy(value: Any) -> np.ndarray | None:
    return to_numpy(value) if isinstance(value, torch.Tensor) else None


# torch's own layer classes of the kind table: the ones whose settings settings() reads
_OWN = tuple(_KINDS)


def _conv_settings(module: nn.Module, kind: str) -> dict[str, Any]:
    """A conv's settings: padding as (before, after) per spatial axis or "same" (stride 1
    only in PyTorch: the reach split with the extra one after), and what it holds."""
    n = len(module.kernel_size)
    padding = module.padding
    if isinstance(padding, str):
        padding = "same" if padding == "same" else ((0, 0),) * n
    else:
        padding = tuple((int(p), int(p)) for p in padding)
    out = {
        "padding": padding,
        "padding_mode": str(module.padding_mode),
        "stride": tuple(module.stride),
        "dilation": tuple(module.dilation),
        "groups": int(module.groups),
        "input_dilation": (1,) * n,
        "kernel_mask": False,
    }
    if kind == "conv_transpose":
        out["output_padding"] = tuple(module.output_padding)
    return out


adapter = TorchAdapter()
