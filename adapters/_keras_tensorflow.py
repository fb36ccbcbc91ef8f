"""Keras on TensorFlow: eager tensors, a ``GradientTape`` for ``tree.backward``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from ._keras_backend import Backend as Base


class Backend(Base):
    name = "tensorflow"

    def to_numpy(self, t: Any) -> np.ndarray:
        if isinstance(t, tf.Variable):
            t = t.read_value()  # a snapshot: TensorFlow copies on the next write
        return np.asarray(t)

    def device(self, t: Any) -> str:
        kind, _, index = t.device.rpartition("device:")[2].partition(":")
        return "cpu" if kind == "CPU" else f"{kind.lower()}:{index}"

    def gpus(self) -> int:
        return len(tf.config.list_logical_devices("GPU"))

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], args: Sequence[Any]) -> float:
        trainable = root.trainable_variables
        with tf.GradientTape() as tape:
            tape.watch([v.value for v in trainable])
            loss = self.scalar(loss_fn(root(*args)))
        grads = tape.gradient(loss, [v.value for v in trainable])
        # None: the loss does not depend on it; IndexedSlices (an embedding's): made dense
        self.accumulate(trainable, [None if g is None else tf.convert_to_tensor(g) for g in grads])
        return float(np.asarray(loss).reshape(()))
