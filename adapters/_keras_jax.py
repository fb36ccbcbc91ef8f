"""Keras on JAX: immutable arrays, ``jax.value_and_grad`` over ``stateless_call`` for ``tree.backward``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np

from unitree._param import fresh

from ._keras_backend import Backend as Base


class Backend(Base):
    name = "jax"

    def to_numpy(self, t: Any) -> np.ndarray:
        return np.asarray(t)  # a read-only view on CPU

    def device(self, t: Any) -> str:
        d = next(iter(t.devices()))
        return "cpu" if d.platform == "cpu" else f"gpu:{d.id}"

    def gpus(self) -> int:
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jax
            return 0

    def from_host(self, value: np.ndarray, variable: Any) -> Any:
        """A jax array of the variable's sharding over a fresh aligned copy of ``value``, which
        jax adopts on the host: one copy, where ``assign`` of numpy would copy again."""
        return jax.device_put(fresh(value), variable.value.sharding)

    def backup(self, variable: Any) -> Any:
        return variable.value  # immutable: assign replaces the array, restore assigns this one back

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
        if not root.built:  # stateless_call needs the variables: build them as a first call would
            root(*args)
        trainable, non_trainable = root.trainable_variables, root.non_trainable_variables

        def f(values: list, state: list) -> tuple[Any, list]:
            y, state = root.stateless_call(values, state, *args)
            return self.scalar(loss_fn(y)).reshape(()), state

        (loss, state), grads = jax.value_and_grad(f, has_aux=True)(
            [v.value for v in trainable], [v.value for v in non_trainable]
        )
        for v, value in zip(non_trainable, state):  # what the call changed, as an eager call would
            v.assign(value)
        self.accumulate(trainable, grads)
        return float(loss)  # a jax scalar
