"""Keras on PyTorch: torch tensors, read as the torch adapter reads them, and torch's autograd,
which keeps each gradient on its tensor (``variable.value.grad``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from ._keras_backend import Backend as Base
from .torch import to_numpy


class Backend(Base):
    name = "torch"

    def to_numpy(self, t: Any) -> np.ndarray:
        return to_numpy(t)

    def device(self, t: Any) -> str:
        return "cpu" if t.device.type == "cpu" else f"gpu:{t.device.index or 0}"

    def gpus(self) -> int:
        return torch.cuda.device_count()

    def attributes(self, layer: Any) -> dict[str, Any]:
        # Keras layers are torch modules here: sublayers live in _modules, not in the attributes
        attrs = vars(layer)
        modules = attrs.get("_modules")
        return {**attrs, **modules} if modules else attrs

    def retrack(self, layer: Any) -> None:
        if "_torch_params" in layer._modules:  # the torch parameters Keras lists per layer
            layer._track_variables()

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
        loss = self.scalar(loss_fn(root(*args)))
        loss.backward()
        return float(loss.item())

    def grad(self, variable: Any) -> np.ndarray | None:
        g = variable.value.grad  # autograd keeps it on the tensor, and accumulates it there
        return None if g is None else to_numpy(g)

    def zero_grad(self, variable: Any) -> None:
        variable.value.grad = None
