"""PyTorch: ``torch.nn.Module`` trees.

Paths are torch's own (``_modules`` keys: positions in ``Sequential`` and
``ModuleList``, keys in ``ModuleDict``, attribute names elsewhere) and so are
the leaf names and layouts, which are the canonical ones. A tie is one
``Parameter`` object (or buffer tensor) reached from two places, as
``named_parameters`` deduplicates them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from unitree._adapter import Adapter, KindTable, Leaf, fingerprint, new_leaf
from unitree._errors import CheckpointError, PathError, UninitializedError, ValueTypeError
from unitree.layouts import CONVS

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
    if not a.flags.writeable or not a.flags.c_contiguous:
        a = np.array(a)  # torch.from_numpy wants its own writable buffer
    if a.dtype.kind == "V":  # an ml_dtypes type: move the bits, then reinterpret them
        bits = {1: np.uint8, 2: np.int16}[a.dtype.itemsize]
        return torch.from_numpy(a.view(bits)).view(like.dtype)
    return torch.from_numpy(a)


def _tensors(m: nn.Module) -> Any:
    # buffers are rare: most modules give their parameters' dict view, with no list to build
    buffers = m._buffers
    return [*m._parameters.values(), *buffers.values()] if buffers else m._parameters.values()


class TorchAdapter(Adapter):
    name = "torch"
    module_types = (nn.Module,)
    module_what = "a torch.nn.Module"
    kinds = KindTable(_KINDS)

    # -- structure -----------------------------------------------------------------
    def children(self, module: nn.Module) -> Sequence[tuple[str, nn.Module]]:
        modules = module._modules
        return [(k, m) for k, m in modules.items() if m is not None] if modules else ()

    def child(self, module: nn.Module, segment: str) -> Any:
        return module._modules.get(segment)

    def leaves(self, module: nn.Module) -> list[Leaf]:
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
        return out

    def leaf(self, module: nn.Module, name: str) -> torch.Tensor:
        t = module._parameters.get(name)
        if t is None:
            t = module._buffers.get(name)
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
        kind = self.kind(module)
        if kind in CONVS:
            padding = module.padding
            if isinstance(padding, str):
                padding = "same" if padding == "same" else ((0, 0),) * len(module.kernel_size)
            else:
                padding = tuple((p, p) for p in padding)
            out = {"stride": tuple(module.stride), "dilation": tuple(module.dilation)}
            out |= {"groups": module.groups, "padding": padding}
            if kind == "conv_transpose":
                out["output_padding"] = tuple(module.output_padding)
            return out
        if kind == "layer_norm":
            return {"eps": float(module.eps)}
        if kind == "group_norm":
            return {"eps": float(module.eps), "groups": module.num_groups}
        if kind == "attention":
            return {"num_heads": module.num_heads}
        if kind == "batch_norm":
            return {"eps": float(module.eps), "momentum": module.momentum}
        if kind in ("lstm", "gru"):  # fixed in PyTorch
            out = {"activation": "tanh", "recurrent_activation": "sigmoid"}
            # a GRU's reset gate multiplies (W_hn h + b_hn): after the recurrent matmul
            return {**out, "reset_after": True} if kind == "gru" else out
        return {}

    def fingerprint(self, root: nn.Module) -> Any:
        # the dicts themselves, not leaves() and children(): this runs on every traversal
        return fingerprint(root, _tensors, lambda m: m._modules.values())

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
        return to_numpy(leaf)

    def write(self, leaf: torch.Tensor, value: np.ndarray, index: Any = None) -> None:
        src = from_numpy(value, leaf)
        # no_grad: a parameter is a leaf that requires grad. The write still
        # bumps the version counter, so a graph that saved the old value fails
        # loudly in backward instead of using the new one silently.
        with torch.no_grad():
            if index is None:
                leaf.copy_(src)
            else:
                leaf[index] = src.to(leaf.device)

    def dlpack(self, leaf: torch.Tensor) -> torch.Tensor:
        return leaf.detach()  # a tensor that requires grad cannot be exported

    def write_dlpack(self, leaf: torch.Tensor, tensor: Any) -> bool:
        with torch.no_grad():  # as write(): the version counter is bumped
            leaf.copy_(torch.from_dlpack(tensor))
        return True

    def data(self, leaf: torch.Tensor) -> torch.Tensor:
        return leaf.data

    def grad(self, leaf: torch.Tensor) -> np.ndarray | None:
        return None if leaf.grad is None else to_numpy(leaf.grad)

    def zero_grad(self, leaf: torch.Tensor) -> None:
        leaf.grad = None  # torch's zero_grad(set_to_none=True)

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
        if isinstance(leaf, nn.Parameter):
            setattr(dst_owner, dst_name, leaf)
        else:
            dst_owner._buffers[dst_name] = leaf


adapter = TorchAdapter()
