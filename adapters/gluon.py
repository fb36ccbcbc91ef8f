"""MXNet Gluon: ``mxnet.gluon.Block`` trees (1.9.1; the 2.x ``share_parameters`` API too).

Paths are Gluon's structural ones, as ``save_parameters`` writes them: the
``_children`` keys (positions in ``Sequential`` / ``HybridSequential``,
attribute names elsewhere, in registration order) and, inside a block, the
``_reg_params`` keys (the attribute names: ``weight``, ``gamma``). Gluon's
prefixed names (``dense0_weight``) are never used: they come from a
process-global counter and change with whatever else the process built.

Dense and Conv weights are already canonical (out, in, ...); a ``Dense`` reading a conv's map
through a custom block has an unknown layout, which keeps the native one (``_gluon_layout``).
A tie is one ``Parameter`` object reached from two places: the same block added
twice, ``nn.Dense(8, params=shared.params)`` (1.9.1) or ``share_parameters`` (2.x).
Running statistics (``differentiable=False``, ``grad_req='null'``) and
``Constant`` parameters are buffers; a parameter the user froze with
``grad_req='null'`` stays a parameter that is not trainable, as in torch.

A parameter can live on several contexts (data parallel): reads come from the
first one, writes go to every one, and the gradient is the sum over them.

Layer kinds for porting and checkpoints: dense, conv (grouped and depthwise:
``groups`` = in channels), conv_transpose (weight (in, out/groups, *k), as
torch's), embedding, layer_norm, batch_norm, group_norm, lstm and gru. The
fused RNN layers' leaves (``l0_i2h_weight``, reverse direction ``r0_...``) are
shown under torch's names (``weight_ih_l0``, ``..._l0_reverse``): the arrays
and the gate orders are torch's (LSTM i, f, g, o; GRU r, z, n, with r applied
to ``W_hn h + b_hn`` as in torch; LSTM's projection ``l0_h2r_weight`` is
torch's ``weight_hr_l0``). Gluon 1.9.1 has no multi-head attention block, so
no attention kind. Its ``GroupNorm`` holds gamma and beta per *group*
(num_groups,), not per channel as torch's: the two are the same function only
when num_groups equals the channels; otherwise the shapes differ and a port
refuses it. A conv with a channels-last ``layout`` (``NHWC``: weight
(out, *k, in)) has no kind: it keeps its native layout.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.gluon.parameter import Constant, Parameter

from unitree._adapter import Adapter, KindTable, Leaf, as_numpy, fingerprint, new_leaf
from unitree._errors import PathError, UninitializedError, UnsupportedError, ValueTypeError
from unitree.layouts import CONVS, Step

from ._gluon_layout import step as gluon_step

_KINDS: dict[type, str] = {
    nn.Dense: "dense",
    nn.Conv1D: "conv",
    nn.Conv2D: "conv",
    nn.Conv3D: "conv",
    nn.Conv1DTranspose: "conv_transpose",
    nn.Conv2DTranspose: "conv_transpose",
    nn.Conv3DTranspose: "conv_transpose",
    nn.Embedding: "embedding",
    nn.LayerNorm: "layer_norm",
    nn.GroupNorm: "group_norm",
    nn.basic_layers._BatchNorm: "batch_norm",
    gluon.rnn.LSTM: "lstm",
    gluon.rnn.GRU: "gru",
}


def _block(child: Any) -> Any:
    # MXNet 2.x keeps children as weak references; 1.9.1 keeps the blocks themselves.
    return child() if isinstance(child, weakref.ref) else child


def _child_blocks(block: gluon.Block) -> Any:
    # most blocks are layers without children: no list to build for them
    children = block._children
    return [_block(c) for c in children.values()] if children else ()


def _blocks(root: gluon.Block) -> Iterator[gluon.Block]:
    yield root
    for child in root._children.values():
        yield from _blocks(_block(child))


def _arrays(leaf: Parameter) -> list[Any]:
    """The parameter's array on every context, or an UninitializedError saying what to do."""
    if leaf._data is not None:
        return leaf._data
    if leaf._deferred_init:
        raise UninitializedError(
            f"Gluon parameter {leaf.name} is not initialized yet: its shape is decided by the first "
            "forward pass (deferred initialization). Run the model once on an input, then read it."
        )
    raise UninitializedError(
        f"Gluon parameter {leaf.name} has no value yet: call net.initialize() and run the model once on an input."
    )


class _ForRead:
    """What ``np.from_dlpack`` asks for: MXNet arrays only hand out DLPack capsules."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.array.to_dlpack_for_read()  # waits for pending writes to the array

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def _to_numpy(a: Any) -> np.ndarray:
    """A CPU array's numpy view (a copy from a GPU, or where DLPack cannot carry the dtype)."""
    if a.ctx.device_type.startswith("cpu"):
        try:
            return np.from_dlpack(_ForRead(a))
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass
    return a.asnumpy()


def _device(ctx: mx.Context) -> str:
    return "cpu" if ctx.device_type.startswith("cpu") else f"{ctx.device_type}:{ctx.device_id}"


def _basic(index: Any) -> tuple[Any, ...] | None:
    """``index`` as ints and unit-step slices that MXNet's setitem takes, or None for fancier ones."""
    items = index if isinstance(index, tuple) else (index,)
    out: list[Any] = []
    for i in items:
        if isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)):
            out.append(int(i))
        elif isinstance(i, slice) and i.step in (None, 1):
            out.append(i)
        else:
            return None
    return tuple(out)


def _tell_trainer(leaf: Parameter) -> None:
    # What Parameter.set_data does: a kvstore that keeps its own copy of the weights must re-pull them.
    trainer = leaf._trainer
    if (
        trainer is not None
        and getattr(trainer, "_kv_initialized", False)
        and getattr(trainer, "_update_on_kvstore", False)
        and leaf not in getattr(trainer, "_params_to_init", ())
    ):
        trainer._reset_kvstore()


class GluonAdapter(Adapter):
    name = "gluon"
    module_types = (gluon.Block,)
    module_what = "an mxnet.gluon.Block"
    kinds = KindTable(_KINDS)

    def __init__(self) -> None:
        # Parameters a backward pass went through: grad is None for the others, as in torch.
        self._touched: weakref.WeakSet[Parameter] = weakref.WeakSet()

    # -- structure -----------------------------------------------------------------
    def children(self, module: gluon.Block) -> list[tuple[str, gluon.Block]]:
        return [(k, _block(c)) for k, c in module._children.items()]

    def child(self, module: gluon.Block, segment: str) -> Any:
        found = module._children.get(segment)
        return None if found is None else _block(found)

    def leaves(self, module: gluon.Block) -> list[Leaf]:
        # once per block on every wrap
        return [
            new_leaf((n, p, p._differentiable and not isinstance(p, Constant), True))
            for n, p in module._reg_params.items()
        ]

    def leaf(self, module: gluon.Block, name: str) -> Parameter:
        p = module._reg_params.get(name)
        if p is None:
            raise PathError(
                f"The {type(module).__name__} block no longer has a parameter {name!r}."
            )
        return p

    def kind(self, module: gluon.Block) -> str | None:
        kind = self.kinds[type(module)]
        if kind in CONVS and not module._kwargs.get("layout", "NC").startswith("NC"):
            return None  # channels-last weight (out, *k, in): no canonical rule for it
        return kind

    def settings(self, module: gluon.Block) -> dict[str, Any]:
        """The settings of ``unitree._settings.VOCABULARY``, and Dense's ``flatten`` (which no
        other framework has). Fixed in Gluon, and reported as such: convs pad with zeros,
        embeddings neither renormalize nor mask, recurrent layers run forward. A norm applies
        its stored beta whatever ``center`` says (``center=False`` only stops training it), and
        its gamma too, except BatchNorm with ``scale=False`` (its operator's ``fix_gamma``:
        gamma kept, 1 used). {} for a block of no Gluon class of the kind table."""
        kind = self.kind(module)
        if not isinstance(module, _OWN):
            return {}
        if kind in CONVS:
            kw = module._kwargs  # what Gluon hands its Convolution / Deconvolution operator
            n = len(kw["kernel"])
            out = {
                "padding": tuple((int(p), int(p)) for p in kw["pad"]),
                "padding_mode": "zeros",
                "stride": tuple(int(s) for s in kw["stride"]),
                "dilation": tuple(int(d) for d in kw["dilate"]),
                "groups": int(kw["num_group"]),
                "input_dilation": (1,) * n,
                "kernel_mask": False,
            }
            if kind == "conv_transpose":
                out["output_padding"] = tuple(int(a) for a in kw["adj"])
            return out
        if kind == "layer_norm":
            out = {"eps": float(module._epsilon), "scale": True, "center": True}
            out["rms_scaling"] = False
            axis = int(module._axis)  # one axis; counted from the front, the rank decides
            return out | ({"axes": (axis,)} if axis < 0 else {})
        if kind == "group_norm":
            out = {"eps": float(module._epsilon), "scale": True, "center": True}
            return out | {"groups": int(module._num_groups)}
        if kind == "batch_norm":
            kw = module._kwargs
            # Gluon's momentum is the weight of the old value, torch's that of the new batch;
            # rounded so that 0.9 reads 0.1, not 0.09999999999999998
            return {
                "eps": float(kw["eps"]),
                "scale": not kw["fix_gamma"],
                "center": True,
                "momentum": round(1.0 - float(kw["momentum"]), 12),
            }
        if kind == "dense":
            return {"flatten": bool(module._flatten)}
        if kind == "embedding":
            return {"max_norm": None, "mask_zero": False}
        if kind in ("lstm", "gru"):  # the fused RNN operator's, fixed; a GRU resets as torch's
            out = {
                "activation": "tanh",
                "recurrent_activation": "sigmoid",
                "reverse": False,
                "stateful": False,
            }
            return {**out, "reset_after": True} if kind == "gru" else out
        return {}

    def step(self, module: gluon.Block) -> Step:
        """What ``module`` does to the layout of the activations (``Adapter.step``): read from
        Gluon's own blocks (``_gluon_layout``); a custom block is ``UNKNOWN``."""
        return gluon_step(module)

    def fingerprint(self, root: gluon.Block) -> Any:
        # the dicts themselves, not leaves() and children(): this runs on every traversal
        return fingerprint(root, lambda b: b._reg_params.values(), _child_blocks)

    # -- one leaf ------------------------------------------------------------------------
    def shape(self, leaf: Parameter) -> tuple[int, ...] | None:
        if leaf._data is not None:
            return tuple(leaf._data[0].shape)
        shape = leaf._shape
        # unknown dimensions are 0 (classic) or -1 (numpy mode) until the first forward pass
        if shape is None or any(d <= 0 for d in shape):
            return None
        return tuple(shape)

    def dtype(self, leaf: Parameter) -> str:
        dtype = leaf._data[0].dtype if leaf._data is not None else leaf.dtype
        return np.dtype(dtype).name

    def device(self, leaf: Parameter) -> str:
        if leaf._data is not None:
            return _device(leaf._ctx_list[0])
        if leaf._deferred_init:
            return _device(leaf._deferred_init[1][0])
        return _device(mx.context.current_context())  # where initialize() will put it

    def trainable(self, leaf: Parameter) -> bool:
        return leaf.grad_req != "null"

    def read(self, leaf: Parameter) -> np.ndarray:
        return _to_numpy(_arrays(leaf)[0])

    def write(self, leaf: Parameter, value: np.ndarray, index: Any = None) -> None:
        arrays = _arrays(leaf)
        where = None if index is None else _basic(index)
        if index is not None and where is None:  # fancy indexing: numpy's semantics, whole write
            full = np.array(self.read(leaf))
            full[index] = value
            value, index = full, None
        # one copy per context: if a later one fails, the earlier ones take the old value back
        old = arrays[0].asnumpy() if len(arrays) > 1 else None
        try:
            with autograd.pause():  # a write is never part of a graph being recorded
                for a in arrays:
                    if index is None:
                        a[:] = value
                    else:
                        a[where] = value
            for a in arrays:
                a.wait_to_read()  # synchronous, as in the other frameworks: the next read sees it
        except BaseException:
            if old is not None:
                with autograd.pause():
                    for a in arrays:
                        a[:] = old
            raise
        _tell_trainer(leaf)

    def data(self, leaf: Parameter) -> Any:
        return _arrays(leaf)[0]

    def grad(self, leaf: Parameter) -> np.ndarray | None:
        if leaf not in self._touched or leaf._grad is None:
            return None
        total = leaf._grad[0].asnumpy()  # a copy: the next backward overwrites Gluon's buffer
        for g in leaf._grad[1:]:  # data parallel: the gradient of the whole batch
            total += g.asnumpy()
        return total

    def zero_grad(self, leaf: Parameter) -> None:
        # Gluon's own buffers hold the sum (see backward): clear them, as param.zero_grad() would
        if leaf._grad is not None:
            with autograd.pause():
                for g in leaf._grad:
                    g[:] = 0
        self._touched.discard(leaf)

    def asarray(self, value: Any) -> np.ndarray:
        if isinstance(value, mx.nd.NDArray):  # mx.np.ndarray too: it subclasses NDArray
            return value.asnumpy()
        if isinstance(value, Parameter):
            return self.read(value)
        return np.asarray(value)

    # -- the whole model -------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu"] + [f"gpu:{i}" for i in range(mx.context.num_gpus())]

    def backward(
        self, root: gluon.Block, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]
    ) -> float:
        """``loss_fn(root(*inputs))`` under ``autograd.record()``, then ``loss.backward()``.

        Gradients accumulate over calls, as in torch, in Gluon's own gradient
        buffers, whatever ``grad_req`` says: with ``'write'`` the previous sum
        is added back after the pass (so ``param.grad()`` and a ``Trainer``
        see the same sum as ``p.grad``), with ``'add'`` Gluon adds by itself.
        Clearing them natively (``param.grad()[:] = 0``; ``zero_grad()`` fails on
        numpy-style arrays in 1.9.1) clears ``p.grad`` too. A parameter the loss
        does not depend on gets zeros, not Gluon's stale value.
        """
        params = list(dict.fromkeys(p for b in _blocks(root) for p in b._reg_params.values()))
        args = [self._input(x, params) for x in inputs]
        with autograd.record():
            loss = loss_fn(root(*args))
        if not isinstance(loss, mx.nd.NDArray) or loss.size != 1:
            raise ValueTypeError(
                f"loss_fn must return an MXNet scalar, got {type(loss).__name__} {getattr(loss, 'shape', '')}."
            )
        live = [p for p in params if p._grad is not None]  # deferred ones exist after the forward
        kept = {}
        for p in live:
            if p.grad_req == "write":
                # Gluon overwrites 'write' buffers and leaves unused ones stale: start from zeros
                if p in self._touched:
                    kept[p] = [g.copy() for g in p._grad]
                for g in p._grad:
                    g[:] = 0
        try:
            loss.backward()
        except BaseException:
            for p, old in kept.items():
                for g, before in zip(p._grad, old):
                    g[:] = before
            raise
        for p, old in kept.items():
            for g, before in zip(p._grad, old):
                g += before
        self._touched.update(live)
        return float(loss.asnumpy().reshape(()))

    @staticmethod
    def _input(x: Any, params: list[Parameter]) -> Any:
        if not (isinstance(x, np.ndarray) or np.isscalar(x)):
            return x  # a native array (or anything else the model takes) as it is
        x = np.asarray(x)
        ready = [p._data[0] for p in params if p._data is not None]
        if ready:
            ctx, numpy_style = ready[0].ctx, isinstance(ready[0], mx.np.ndarray)
            floating = next((a.dtype for a in ready if np.dtype(a.dtype).kind == "f"), np.float32)
        else:  # deferred initialization: the model has not run yet
            waiting = [p._deferred_init[1][0] for p in params if p._deferred_init]
            ctx = waiting[0] if waiting else mx.context.current_context()
            numpy_style, floating = mx.util.is_np_array(), np.float32
        # explicit even for ints: classic nd.array would make them float32
        dtype = floating if x.dtype.kind == "f" else x.dtype
        return (mx.np.array if numpy_style else mx.nd.array)(x, ctx=ctx, dtype=dtype)

    def share(self, param: Parameter, dst_owner: gluon.Block, dst_name: str) -> None:
        old = dst_owner._reg_params.get(dst_name)
        dst_owner._reg_params[dst_name] = param
        object.__setattr__(dst_owner, dst_name, param)  # Block.__setattr__ refuses to rebind one
        # 1.9.1's collect_params() (what a Trainer takes) reads the block's ParameterDict, by Gluon name
        own = getattr(getattr(dst_owner, "_params", None), "_params", None)
        if own is not None:
            items = [(param.name, param) if v is old else (k, v) for k, v in own.items()]
            own.clear()
            own.update(items)
            own.setdefault(param.name, param)

    def shared(self, root: gluon.Block) -> None:
        # a hybridized block replays the graph it cached, with the Parameters it held then
        for b in _blocks(root):
            if isinstance(b, gluon.HybridBlock):
                b._clear_cached_op()

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: gluon.Block,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """``root(*inputs)`` under ``autograd.pause(train_mode=False)`` (inference: dropout off,
        batch norm on its running statistics, whatever the caller's autograd scope).

        Captured through forward hooks (``register_forward_hook``, each detached afterwards).
        A dense or convolution block with an activation folded in (``Dense(8, activation=
        "relu")``, which calls its ``act`` child last) is caught before it, as another
        framework's layer gives it: the input of its ``act``, by a forward pre-hook there. A
        hybridized block replays its cached graph, where its children's hooks never run: for a
        run that captures, every hybridized block runs imperatively (``_active`` off) and is
        put back afterwards, its cached graph kept.

        Raises:
            UnsupportedError: ``kwargs`` given: a Gluon block takes positional arguments only.
        """
        if kwargs:
            raise UnsupportedError(
                f"A Gluon block is called with positional arguments only; got {sorted(kwargs)}."
            )
        params = list(dict.fromkeys(p for b in _blocks(root) for p in b._reg_params.values()))
        args = [self._input(x, params) for x in inputs]
        captured: dict[int, list[Any]] = {}

        def hook(block: gluon.Block, _args: Any, output: Any) -> None:
            captured.setdefault(id(block), []).append(as_numpy(output, _mx_numpy))

        def before(owner: gluon.Block) -> Callable[[gluon.Block, Any], None]:
            def hook(_act: gluon.Block, args: Any) -> None:  # the owner's output, not yet activated
                captured.setdefault(id(owner), []).append(as_numpy(args[0], _mx_numpy))

            return hook

        wanted = {id(b): b for b in capture if isinstance(b, gluon.Block)}
        active = [b for b in _blocks(root) if wanted and getattr(b, "_active", False)]
        handles = []
        try:
            for b in active:
                b._active = False
            for b in wanted.values():
                act = getattr(b, "act", None) if self.kind(b) in _FOLDS_ACTIVATION else None
                if isinstance(act, gluon.Block):
                    handles.append(act.register_forward_pre_hook(before(b)))
                else:
                    handles.append(b.register_forward_hook(hook))
            with autograd.pause(train_mode=False):
                out = root(*args)
            return as_numpy(out, _mx_numpy), captured
        finally:
            for handle in handles:
                handle.detach()
            for b in active:
                b._active = True


# Blocks whose forward ends with ``if self.act is not None: act = self.act(act)``.
_FOLDS_ACTIVATION = frozenset({"dense", "conv", "conv_transpose"})


def _mx_numpy(value: Any) -> np.ndarray | None:
    return _to_numpy(value) if isinstance(value, mx.nd.NDArray) else None


# Gluon's own block classes of the kind table: the ones whose settings settings() reads
_OWN = tuple(_KINDS)

adapter = GluonAdapter()
