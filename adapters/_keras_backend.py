"""What the Keras adapter does differently on each Keras backend: the contract, and the pick.

Keras 3 hides its backend behind ``keras.ops``, but not all that the adapter needs: a
tensor's values and device, the GPUs, autodiff and where its gradients live, where a
layer keeps its sublayers, what a tie must tell the backend. :class:`Backend` names those
few operations; one module per backend (``_keras_tensorflow``, ``_keras_jax``,
``_keras_torch``) implements them, and :func:`pick` imports the one ``KERAS_BACKEND``
names, once, when the adapter is imported: only that backend's framework is imported.
"""

from __future__ import annotations

import importlib
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import keras
import numpy as np

from unitree._errors import UnsupportedModelError, ValueTypeError
from unitree._param import contiguous

BACKENDS = ("tensorflow", "jax", "torch")


def pick(name: str) -> Backend:
    """The :class:`Backend` of the Keras backend ``name``.

    Raises:
        UnsupportedModelError: a Keras backend other than tensorflow, jax and torch.
    """
    if name not in BACKENDS:
        raise UnsupportedModelError(
            f"Keras models on the {name} backend are not supported: the keras adapter reads "
            f"those on {', '.join(BACKENDS)} (KERAS_BACKEND)."
        )
    return importlib.import_module(f"unitree.adapters._keras_{name}").Backend()


class Backend(ABC):
    """The operations that differ per Keras backend.

    Gradients are kept here by default, summed per variable: Keras stores none. A backend
    whose autodiff keeps them itself (torch, on the tensor) overrides :meth:`grad` and
    :meth:`zero_grad`.
    """

    name: ClassVar[str]  # as keras.backend.backend() says it

    def __init__(self) -> None:
        # id(variable) -> (weak ref, sum so far); the weak ref drops the entry with the variable
        self._grads: dict[int, tuple[weakref.ref, np.ndarray]] = {}

    def from_host(self, value: np.ndarray, variable: Any) -> Any:
        """What ``variable.assign`` takes for a host value, which may be strided (a transposed
        view): here the value made C-contiguous, tile by tile, for the backend's one copy."""
        return contiguous(value)

    @abstractmethod
    def to_numpy(self, t: Any) -> np.ndarray:
        """The backend tensor's values; a view of its memory where the backend allows it."""

    @abstractmethod
    def device(self, t: Any) -> str:
        """The tensor's device, as the adapter names them: "cpu", "gpu:0"."""

    @abstractmethod
    def gpus(self) -> int:
        """How many GPUs the backend sees."""

    @abstractmethod
    def backward(self, root: Any, loss_fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
        """``loss_fn(root(*args))``, differentiated: the gradients add to what :meth:`grad`
        reads. Returns the loss."""

    def attributes(self, layer: Any) -> dict[str, Any]:
        """The layer's attributes, the ones holding its sublayers included."""
        return vars(layer)

    def backup(self, variable: Any) -> Any:
        """What ``Adapter.backup`` returns for a variable: None, the core keeps a copy."""
        return None

    def retrack(self, layer: Any) -> None:
        """Tell the backend's own bookkeeping of ``layer`` that a tie changed its variables."""
        return None  # tensorflow and jax keep none: Keras's own tracker is all

    def grad(self, variable: Any) -> np.ndarray | None:
        entry = self._grads.get(id(variable))
        if entry is None or entry[0]() is not variable:
            return None
        return entry[1]

    def zero_grad(self, variable: Any) -> None:
        self._grads.pop(id(variable), None)

    def accumulate(self, variables: Sequence[Any], grads: Sequence[Any]) -> None:
        """Add ``grads`` (backend tensors, None where the loss does not use the variable) to
        the sums :meth:`grad` reads."""
        for v, g in zip(variables, grads):
            if g is None:
                continue
            g = np.array(self.to_numpy(g))
            entry = self._grads.get(id(v))
            if entry is not None and entry[0]() is v:
                self._grads[id(v)] = (entry[0], entry[1] + g)  # a new array: grads read before stay
            else:
                key = id(v)
                ref = weakref.ref(v, lambda r, key=key: self._drop(key, r))
                self._grads[key] = (ref, g)

    def _drop(self, key: int, ref: weakref.ref) -> None:
        entry = self._grads.get(key)
        if entry is not None and entry[0] is ref:
            del self._grads[key]

    def scalar(self, loss: Any) -> Any:
        """``loss``, checked to be a one-value backend tensor."""
        if not keras.ops.is_tensor(loss) or int(np.prod(loss.shape)) != 1:
            raise ValueTypeError(
                f"loss_fn must return a scalar {self.name} tensor (keras.ops.sum(y), for example), "
                f"got {type(loss).__name__} {getattr(loss, 'shape', '')}."
            )
        return loss


BACKEND = keras.backend.backend()
backend = pick(BACKEND)  # chosen once: Keras itself reads KERAS_BACKEND only at import
