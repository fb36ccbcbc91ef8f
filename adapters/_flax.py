"""What the two flax adapters share: jax arrays as leaves, layer settings, autodiff helpers.

linen (``unitree.adapters.linen``) keeps its variables apart from the module and NNX
(``unitree.adapters.nnx``) inside it, but both hold jax arrays and name their layer
settings alike. :class:`FlaxAdapter` is their common base: everything about one leaf,
given how to get and replace its array (devices come from its sharding: "cpu", "gpu:0");
the settings ``ut.port`` compares; the devices. The functions below it serve both
adapters' kinds, backward passes and settings.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen.linear import canonicalize_padding

from unitree._adapter import Adapter, KindTable
from unitree._errors import ValueTypeError
from unitree._param import fresh
from unitree.layouts import KEEP, UNKNOWN, Step

BY_CELL = "by cell"  # a recurrent wrapper (RNN) is the kind of its cell


class FlaxAdapter(Adapter):
    """A flax adapter: leaves are jax arrays, read through :meth:`array` and replaced (arrays
    are immutable) through :meth:`replace`; layer settings are read from the module that
    :meth:`definition` gives."""

    name = "flax"
    strided_writes = True  # _placed copies a transposed view once
    # One message for both APIs: a user who passes the wrong object may mean either.
    module_what = "a flax nnx.Module, or a linen Module with its variables"

    @abstractmethod
    def array(self, leaf: Any) -> Any:
        """The leaf's current array (unboxed)."""

    @abstractmethod
    def replace(self, leaf: Any, value: Any) -> None:
        """Make ``value`` the leaf's array, for every alias of it."""

    @abstractmethod
    def definition(self, module: Any) -> Any:
        """The flax module whose fields or attributes hold ``module``'s settings, or None."""

    # -- one leaf ----------------------------------------------------------------------
    def shape(self, leaf: Any) -> tuple[int, ...]:
        return tuple(np.shape(self.array(leaf)))

    def dtype(self, leaf: Any) -> str:
        a = self.array(leaf)
        return str(a.dtype) if hasattr(a, "dtype") else str(np.asarray(a).dtype)

    def device(self, leaf: Any) -> str:
        devices = getattr(self.array(leaf), "devices", None)
        if devices is None:  # a numpy array (variables restored without a target)
            return "cpu"
        names = sorted("cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}" for d in devices())
        return ",".join(dict.fromkeys(names))

    def read(self, leaf: Any) -> np.ndarray:
        return np.asarray(self.array(leaf))  # a read-only view of a CPU array

    def write(self, leaf: Any, value: np.ndarray, index: Any = None) -> None:
        old = self.array(leaf)
        if index is not None:  # numpy's indexing rules, exactly as p[index] reads
            full = np.array(old)
            full[index] = value
            value = full
        self.replace(leaf, _placed(value, old))

    def data(self, leaf: Any) -> Any:
        return self.array(leaf)

    def asarray(self, value: Any) -> np.ndarray:
        # a value the user gives may be an NNX variable, whichever API the model is
        if isinstance(value, nnx.Variable):
            value = get_value(value)
        return np.asarray(value)

    def devices(self) -> list[str]:
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend here
            gpus = []
        return ["cpu"] + [f"gpu:{d.id}" for d in gpus]

    # -- capability: device copies and backups ------------------------------------------
    def dlpack(self, leaf: Any) -> Any:
        a = self.array(leaf)
        return a if isinstance(a, jax.Array) else None

    def write_dlpack(self, leaf: Any, tensor: Any) -> bool:
        old = self.array(leaf)
        if not isinstance(old, jax.Array) or all(d.platform == "cpu" for d in old.devices()):
            return False  # on the host, numpy's one copy (write) is faster than XLA's
        # an array of jax's own (the import may alias the other framework's memory), where
        # the old one lives
        new = jax.device_put(jnp.array(jax.dlpack.from_dlpack(tensor), copy=True), old.sharding)
        self.replace(leaf, new)
        return True

    def backup(self, leaf: Any) -> Any:
        return self.array(leaf)  # jax arrays are immutable: the current one is the backup

    def restore(self, leaf: Any, backup: Any) -> None:
        self.replace(leaf, backup)

    def write_can_fail(self, leaf: Any) -> bool:
        """False on the host: a write puts a new array in the old one's place (``_placed``),
        which only memory can stop; a device's copy can fail."""
        return self.device(leaf) != "cpu"

    # -- capability: layer settings -----------------------------------------------------
    def settings(self, module: Any) -> dict[str, Any]:
        """The settings of ``unitree._settings.VOCABULARY``, read from a linen module's fields
        or an NNX module's attributes (the same names). {} where there is nothing to read: a
        linen submodule made by a ``@nn.compact`` method exists only while its parent runs
        (its arguments are computed in the call), so no definition holds them and nothing can
        be read without running the model on an input (the core then calls them unknown); a
        layer of no flax class of the kind table (a registered third-party type)."""
        kind = self.kind(module)
        m = self.definition(module)
        if kind is None or m is None or not _own(m, self.kinds):
            return {}
        if kind == "conv":
            size = _axes(m.kernel_size)
            n = len(size)
            dilation = _axes(m.kernel_dilation, n)
            padding, mode = _padding(m.padding, n, size, dilation)
            return {
                "padding": padding,
                "padding_mode": mode,
                "stride": _axes(m.strides, n),
                "dilation": dilation,
                "groups": int(m.feature_group_count),
                "input_dilation": _axes(m.input_dilation, n),
                "kernel_mask": m.mask is not None,
            }
        if kind == "conv_transpose":
            size = _axes(m.kernel_size)
            n = len(size)
            out = _transpose_padding(
                m.padding, size, _axes(m.strides, n), _axes(m.kernel_dilation, n)
            )
            return {
                **out,
                "padding_mode": "circular" if out["padding"] == "circular" else "zeros",
                "stride": _axes(m.strides, n),
                "dilation": _axes(m.kernel_dilation, n),
                "groups": 1,
                "input_dilation": (1,) * n,
                "kernel_mask": m.mask is not None,
            }
        if kind == "embedding":
            return {"max_norm": None, "mask_zero": False}
        if kind == "attention":
            return {
                "num_heads": int(m.num_heads),
                "add_zero_attn": False,
                "attention_axes": None,  # the axis before the features: the sequence
                "attention_fn": _attention_fn(m.attention_fn),
                "gated": False,
            }
        if kind in ("lstm", "gru"):
            cell = getattr(m, "cell", m)
            out = {
                "activation": fn_name(cell.activation_fn),
                "recurrent_activation": fn_name(cell.gate_fn),
                "reverse": _reverse(m),
                "stateful": False,
            }  # a GRU cell resets as PyTorch's: r * (W_hn h + b_hn)
            return {**out, "reset_after": True} if kind == "gru" else out
        if kind not in ("layer_norm", "batch_norm", "group_norm"):
            return {}  # dense: nothing beyond its leaves
        # the norms: no leaf where use_scale / use_bias is False, and a leaf is always applied
        out = {"eps": float(m.epsilon), "scale": bool(m.use_scale), "center": bool(m.use_bias)}
        if kind == "layer_norm":
            axes = m.reduction_axes
            axes = tuple(axes) if isinstance(axes, (list, tuple)) else (axes,)
            if all(a < 0 for a in axes):  # counted from the front: the input's rank decides
                out["axes"] = tuple(sorted(int(a) for a in axes))
            return {**out, "rms_scaling": False}
        if kind == "batch_norm":  # flax's momentum weighs the old value, PyTorch's the new batch
            return {**out, "momentum": round(1.0 - float(m.momentum), 12)}
        groups = m.num_groups  # group_norm
        if groups is None and m.group_size:  # linen: the channels from the scale or bias
            channels = next((self.shape(leaf.obj)[0] for leaf in self.leaves(module)), None)
            groups = None if channels is None else channels // m.group_size
        if groups is not None:
            out["groups"] = int(groups)
        return out


# -- kinds -----------------------------------------------------------------------------------
def kind_of(kinds: KindTable, m: Any) -> str | None:
    """The kind of a module: its class's, or for a recurrent wrapper, its cell's."""
    kind = kinds[type(m)]
    if kind == BY_CELL:
        cell = getattr(m, "cell", None)
        return None if cell is None else kinds[type(cell)]
    return kind


def layout_kind(kind: str | None, m: Any) -> str | None:
    """``kind``, unless its native layout is one no rule knows."""
    if kind == "conv_transpose" and getattr(m, "transpose_kernel", False):
        return None  # a (*k, out, in) kernel, not flipped: no rule, native layout
    return kind


def fn_name(fn: Any) -> str:
    """``relu`` for ``nn.relu``, ``gelu`` for ``functools.partial(nn.gelu, ...)``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


# jax's and flax's own elementwise functions and poolings, as a Sequential's entries: the layout
# of the activations stays (flax pools channels-last: (batch, *spatial, features)).
_ACTIVATIONS = """relu relu6 gelu silu swish sigmoid tanh elu celu selu leaky_relu softplus
    soft_sign hard_tanh hard_sigmoid hard_silu hard_swish log_sigmoid mish softmax log_softmax"""
_KEEPS = {
    id(f)
    for n in _ACTIVATIONS.split()
    for f in (getattr(jax.nn, n, None), getattr(nnx, n, None))
    if f is not None
} | {id(jnp.tanh)}
_POOLS = {id(f) for f in (nnx.avg_pool, nnx.max_pool, getattr(nnx, "min_pool", None)) if f}


def function_step(fn: Any) -> Step:
    """What a function entry of an ``nn.Sequential`` or ``nnx.Sequential`` does to the layout
    (``Adapter.step``): jax's and flax's own activations and poolings keep it (a
    ``functools.partial`` of one too); any other function (a lambda that reshapes) is opaque."""
    base = fn
    while isinstance(base, functools.partial):
        base = base.func
    if id(base) in _KEEPS:
        return Step(KEEP)
    if id(base) in _POOLS:
        return Step(KEEP, data_format="channels_last")
    return Step(UNKNOWN, why=f"the function {fn_name(fn)}")


# -- arrays -----------------------------------------------------------------------------------
def get_value(var: nnx.Variable) -> Any:
    return var.get_value() if hasattr(var, "get_value") else var.value  # older flax


def _placed(value: np.ndarray, like: Any) -> Any:
    """``value`` as a new array where ``like`` lives; never an alias of the caller's buffer. A
    strided value (a transposed view) is copied once, by jax itself."""
    sharding = getattr(like, "sharding", None)
    # jax adopts an aligned host buffer without copying it: give it one of our own, made by
    # the one copy a transposed view needs anyway (tile by tile: faster than jax's own)
    own = fresh(value)
    return own if sharding is None else jax.device_put(own, sharding)


def scalar(loss: Any) -> Any:
    """The loss as a jax scalar, or the error a user sees for a loss_fn that returns no scalar."""
    if getattr(loss, "size", None) != 1:
        raise ValueTypeError(
            f"loss_fn must return a jax scalar, got {type(loss).__name__} of shape {getattr(loss, 'shape', None)}."
        )
    return loss.reshape(())


def inputs_like(inputs: Sequence[Any], arrays: Iterable[Any]) -> list[Any]:
    """numpy inputs as jax arrays, floats in the model's floating dtype (the first floating
    array of ``arrays``), on its device."""
    like = next((a for a in arrays if np.issubdtype(a.dtype, np.floating)), None)
    device = None
    if like is not None and len(getattr(like, "devices", set)()) == 1:
        device = next(iter(like.devices()))
    out = []
    for x in inputs:
        if isinstance(x, np.ndarray) or np.isscalar(x):
            a = np.asarray(x)
            if like is not None and a.dtype.kind == "f":
                a = a.astype(like.dtype)
            x = jax.device_put(a, device)
        out.append(x)
    return out


# -- layer settings, in the vocabulary of Adapter.settings ---------------------------------
def _axes(value: Any, n: int = 1) -> tuple[int, ...]:
    """A per-axis setting (None, an int, or a sequence) as a tuple of ints."""
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def _padding(
    padding: Any, n: int, size: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[Any, str]:
    """A conv's padding and what it holds: "same" (or lax's "same_lower"), or (before, after)
    per spatial axis ('VALID': zeros); 'CIRCULAR' and 'REFLECT' pad the dilated kernel's
    reach r, r // 2 before and the rest after, at any stride (flax's ``_Conv.__call__``),
    with the input wrapped or mirrored without its edge (PyTorch's "circular", "reflect")."""
    lax = canonicalize_padding(padding, n)
    if not isinstance(lax, str):
        return tuple((int(lo), int(hi)) for lo, hi in lax), "zeros"
    reach = [d * (k - 1) for k, d in zip(size, dilation)]
    if lax == "VALID":
        return ((0, 0),) * n, "zeros"
    if lax == "CAUSAL":  # 1-D: the dilated kernel's reach, all before
        return ((reach[0], 0),), "zeros"
    if lax in ("CIRCULAR", "REFLECT"):
        return tuple((r // 2, r - r // 2) for r in reach), lax.lower()
    return lax.lower(), "zeros"  # "same", "same_lower"


def _transpose_padding(
    padding: Any, size: tuple[int, ...], strides: tuple[int, ...], dilation: tuple[int, ...]
) -> dict[str, Any]:
    """A transposed conv's padding as PyTorch counts it: ``padding`` p cropped on both sides,
    ``output_padding`` added after. Flax pads the stride-dilated input by (lo, hi) (or what
    lax works out for 'SAME' / 'VALID') before a valid conv with the kernel of reach
    r = dilation * (k - 1): the same output as PyTorch's p = r - lo, output_padding = hi - lo
    (checked numerically against torch.nn.ConvTranspose1d)."""
    n = len(size)
    lax = canonicalize_padding(padding, n)
    if isinstance(lax, str) and lax not in ("SAME", "VALID"):
        return {"padding": lax.lower()}
    pads, out_pad = [], []
    for i in range(n):
        reach, s = dilation[i] * (size[i] - 1), strides[i]
        if lax == "SAME":  # as jax.lax.conv_transpose works it out
            total = reach + s - 1
            lo = reach if s > reach else -(-total // 2)
            hi = total - lo
        elif lax == "VALID":
            lo, hi = reach, s - 1 + max(reach + 1 - s, 0)
        else:
            lo, hi = (int(p) for p in lax[i])
        pads.append((reach - lo, reach - lo))
        out_pad.append(hi - lo)
    return {"padding": tuple(pads), "output_padding": tuple(out_pad)}


def _own(m: Any, kinds: KindTable) -> bool:
    """Whether ``m`` is of a flax class of the kind table (or a subclass of one): the classes
    whose fields settings() reads."""
    return any(
        base.__module__.startswith("flax.") and base in kinds.kinds for base in type(m).__mro__
    )


def _attention_fn(fn: Any) -> str:
    """The attention function's name: "dot_product_attention" for flax's own (linen's or
    NNX's), else its full name with what a partial binds (it computes something else)."""
    from flax import linen

    own = (linen.dot_product_attention, getattr(nnx, "dot_product_attention", None))
    if any(fn is f for f in own if f is not None):
        return "dot_product_attention"
    bound = ""
    if isinstance(fn, functools.partial):
        bound = f"(*{fn.args!r}, **{fn.keywords!r})"
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '')}.{name}{bound}"


def _reverse(m: Any) -> Any:
    """A recurrent layer's direction: False, True (from the end, outputs in that order), or
    "keep_order" (from the end, outputs put back in the input's order); a cell alone: False."""
    if not getattr(m, "reverse", False):
        return False
    return "keep_order" if getattr(m, "keep_order", False) else True


# -- running the model (Adapter.run) ---------------------------------------------------------
def jax_numpy(value: Any) -> np.ndarray | None:
    """A concrete jax array's values, for ``as_numpy``; None for anything else. A tracer (an
    output inside a jax transform, ``nnx.jit``/``nnx.scan`` in the model) has no values:
    :func:`traced` says whether an output holds one."""
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        return np.asarray(value)
    return None


def traced(value: Any) -> bool:
    """Whether an output (arrays, or tuples / lists / dicts of them) holds a jax tracer."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(value))
