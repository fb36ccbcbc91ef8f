"""Keras 3: ``keras.Layer`` trees, on whichever backend ``KERAS_BACKEND`` names (tensorflow, jax, torch).

Paths are structural, never Keras's automatic names (``dense_3``), which count
every layer the process has built:

- ``Sequential`` and functional models are numbered by position in
  ``model.layers``, input layers not counted: the deck's ``net.layers[i]``.
  A layer's own name is accepted as an alias when indexing (``tree["encoder"]``)
  but never used in a path.
- Subclassed models and layers: attribute names in assignment order; a list
  or tuple of layers is a node of its own (``blocks.0``), a dict too
  (``heads.cls``), as torch's ``ModuleList`` and ``ModuleDict``.
- Leaves are a layer's own variables under their Keras names (``kernel``,
  ``moving_mean``): trainable ones are parameters, the others (batch-norm
  moving statistics) buffers. A variable Keras named automatically
  (``add_weight`` without a name gives ``variable_7``) is called by the
  attribute that holds it instead.
- Layers built of layers show them below their own path: an ``LSTM`` or ``GRU``
  its ``cell`` (``lstm.cell.kernel``), a ``MultiHeadAttention`` its projections
  under the names Keras gives them (``query``, ``key``, ``value``,
  ``attention_output``; the attributes are private). The canonical view of
  those layers (PyTorch's ``weight_ih_l0``, ``in_proj_weight``) is computed
  from that subtree by the core's codecs.

Layer kinds (the layout tables' names): dense, conv (Conv1D/2D/3D, grouped
too), depthwise_conv, conv_transpose, embedding, layer_norm, batch_norm,
group_norm, lstm, gru, attention. Their settings (epsilons, momentum, padding,
strides...) are given to ``ut.port`` in PyTorch's conventions; see
:meth:`KerasAdapter.settings`. An ``EinsumDense`` is a dense layer where its
equation is a dense map (``layouts.einsum_dense``: attention's split-head
projections, kernels (hidden, heads, head_dim) and (heads, head_dim, hidden), as
PyTorch's ``Linear`` weight (out, in)); any other equation, a quantized or LoRA
one, has no kind and ports only onto its own type.

A tie is one ``keras.Variable`` object reached from two places: Keras shares
parameters by reusing a layer instance, which appears at every position it is
used. Values are read and written through the backend tensor behind the
variable (``variable.value``), writes through ``Variable.assign``. A layer not
built yet holds no variables: a layer whose variables are known by kind
(dense, conv, embedding, normalization) shows them with an unknown shape
until the model is called once.

``tree.backward`` calls the model as ``model(*inputs)`` does (no ``training``
argument: Keras's inference behaviour, as in the deck) under the backend's
autodiff: a ``GradientTape`` on tensorflow, ``jax.grad`` over
``stateless_call`` on jax (what the call changed in non-trainable state is
assigned back), autograd on torch, where the gradient stays on the tensor
(``variable.value.grad``) as torch keeps it. Elsewhere the adapter keeps the
sums, keyed by variable. A parameter the loss does not use has no gradient on
tensorflow and torch, and zeros on jax, as each computes it.

What differs per backend (tensors to numpy, devices, autodiff and its gradients,
backups, where a layer keeps its sublayers) is one small object, picked once at
import: see ``_keras_backend``. Everything else here is the same on every backend.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar

import keras
import numpy as np
from keras.src.models.functional import Functional  # no public name; stable across Keras 3

from unitree._adapter import Adapter, KindTable, Leaf, as_numpy, fingerprint, new_leaf
from unitree._errors import PathError, UninitializedError, UnsupportedError
from unitree._paths import Segment, position
from unitree.layouts import CONVS, UNKNOWN, Kind, Step, einsum_dense

from ._keras_backend import Backend, backend
from ._keras_layout import step as keras_step
from ._keras_tree import (
    Container,
    Unbuilt,
    _first_layer,
    _has_layer,
    _is_sequence,
    _items,
    _pending,
)

_KINDS: dict[type, str] = {
    keras.layers.Dense: "dense",
    keras.layers.Conv1D: "conv",
    keras.layers.Conv2D: "conv",
    keras.layers.Conv3D: "conv",
    keras.layers.DepthwiseConv1D: "depthwise_conv",
    keras.layers.DepthwiseConv2D: "depthwise_conv",
    keras.layers.Conv1DTranspose: "conv_transpose",
    keras.layers.Conv2DTranspose: "conv_transpose",
    keras.layers.Conv3DTranspose: "conv_transpose",
    keras.layers.Embedding: "embedding",
    keras.layers.LayerNormalization: "layer_norm",
    keras.layers.BatchNormalization: "batch_norm",
    keras.layers.GroupNormalization: "group_norm",
    # the layer, not its cell: the codecs read the cell's variables below it (cell.kernel)
    keras.layers.LSTM: "lstm",
    keras.layers.GRU: "gru",
    keras.layers.MultiHeadAttention: "attention",
    # a dense layer or not, by its equation: kind() reads it (_einsum_kind)
    keras.layers.EinsumDense: "einsum",
}
# MultiHeadAttention keeps its sublayers in private attributes: they are called by the names Keras
# gives those sublayers (the names its checkpoints use), which the attention codec reads.
_ATTENTION = {
    "_query_dense": "query",
    "_key_dense": "key",
    "_value_dense": "value",
    "_gate_dense": "gate",
    "_softmax": "softmax",
    "_dropout_layer": "dropout",
    "_output_dense": "attention_output",
}
# Keras's automatic variable names: "variable", "variable_12" (a process-global counter).
_AUTO_NAME = re.compile(r"variable(_\d+)?")
_PLAIN: set[str] = set()  # variable names seen to be neither automatic nor dotted

# Attributes that hold layers for Keras's (or, on the torch backend, torch's) own bookkeeping.
_INTERNAL = frozenset(
    {
        "_layers",
        "_tracker",
        "_inbound_nodes",
        "_outbound_nodes",
        "_modules",
        "_parameters",
        "_buffers",
    }
)


class KerasAdapter(Adapter):
    name = "keras"
    module_types = (keras.Layer,)
    module_what = "a keras.Layer (a layer or a model)"
    strided_writes = True  # the backend's from_host makes the one copy a transposed view needs
    kinds = KindTable(_KINDS)
    backend: ClassVar[Backend] = backend

    def __init__(self) -> None:
        self._unbuilt: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._containers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- structure ------------------------------------------------------------------
    @staticmethod
    def _positional(module: Any) -> list[Any] | None:
        """The layers of a Sequential or functional model, input layers not counted; else None."""
        if isinstance(module, keras.Sequential):
            return module.layers
        if isinstance(module, Functional):
            return [
                layer for layer in module.layers if not isinstance(layer, keras.layers.InputLayer)
            ]
        return None

    def children(self, module: Any) -> Sequence[tuple[Segment, Any]]:
        if type(module) is Container:
            listed = not isinstance(module.value, Mapping)  # a list's keys are positions
            return [
                (k if listed else str(k), v if isinstance(v, keras.Layer) else module.sub(k))
                for k, v in _items(module.value)
                if _has_layer(v)
            ]
        if not module._layers:  # no sublayers: every leaf layer ends here
            return ()
        layers = self._positional(module)
        if layers is not None:
            return list(enumerate(layers))
        return self._attribute_children(module)

    def _attribute_children(self, layer: Any) -> list[tuple[str, Any]]:
        """(attribute, layer or Container) in assignment order: the order Keras tracked them in."""
        order = {id(x): i for i, x in enumerate(layer._layers)}
        found = []
        attributes = self.backend.attributes(layer)
        for name, value in attributes.items():
            if name in _INTERNAL or not _has_layer(value) or _tensorflow_own(name, attributes):
                continue
            if isinstance(value, keras.Layer):
                found.append((_first_layer(value, order), name, value))
                continue
            if not (_is_sequence(value) or isinstance(value, Mapping)):
                continue
            containers = self._containers.setdefault(layer, {})
            box = containers.get(name)
            if box is None:
                box = containers[name] = Container(layer, name)
            found.append((_first_layer(value, order), name, box))
        found.sort(key=lambda item: item[0])
        if isinstance(layer, keras.layers.MultiHeadAttention):
            return [(_ATTENTION.get(name, name), value) for _, name, value in found]
        return [(name, value) for _, name, value in found]

    def child(self, module: Any, segment: Segment) -> Any:
        if type(module) is Container:
            return dict(self.children(module)).get(segment)
        if not module._layers:
            return None
        layers = self._positional(module)
        if layers is not None:
            return layers[segment] if type(segment) is int and segment < len(layers) else None
        return dict(self._attribute_children(module)).get(segment)

    def segment(self, module: Any, key: str) -> Segment:
        """A position ("0" -> 0) in a model's layers or a list; a layer's own name (an alias,
        ``tree["dense_1"]``) -> the segment of its first position or attribute; other keys
        as they are."""
        i = position(key)
        if type(module) is Container:
            return i if i is not None and not isinstance(module.value, Mapping) else key
        if not module._layers:
            return key
        layers = self._positional(module)
        if layers is not None:
            if i is not None:
                return i
            return next((j for j, x in enumerate(layers) if x.name == key), key)
        found = self._attribute_children(module)
        if any(seg == key for seg, _ in found):
            return key
        return next((seg for seg, x in found if isinstance(x, keras.Layer) and x.name == key), key)

    def _objects(self, module: Any) -> list[Any]:
        """The module's own variables in leaf order, or the Unbuilt stand-ins of a layer not built yet."""
        if type(module) is Container:
            return []
        own = module._trainable_variables + module._non_trainable_variables
        if own or module.built:
            return own
        stand_ins = self._unbuilt.get(module)
        if stand_ins is None:
            pending = _pending(module, self.kind(module))
            stand_ins = self._unbuilt[module] = [Unbuilt(n, t) for n, t in pending]
        return stand_ins

    def leaves(self, module: Any) -> list[Leaf]:
        # the hot path of every wrap: one call per layer
        if type(module) is Container:
            return []
        trainable, other = module._trainable_variables, module._non_trainable_variables
        # names Keras chose automatically, twice or with a dot are replaced (_renamed); the
        # common layer, a kernel and a bias with plain names, is made directly, in no loop
        if len(trainable) == 2 and not other:
            a, b = trainable
            an, bn = a.name, b.name
            if an != bn and an in _PLAIN and bn in _PLAIN:
                return [new_leaf((an, a, True, True)), new_leaf((bn, b, True, True))]
        out = [new_leaf((v.name, v, True, True)) for v in trainable]
        if other:
            out += [new_leaf((v.name, v, False, True)) for v in other]
        elif not out:
            return (
                []
                if module.built
                else [Leaf(u.name, u, u.trainable) for u in self._objects(module)]
            )
        names = {leaf.name for leaf in out}
        plain = len(names) == len(out) and names <= _PLAIN
        return out if plain else self._renamed(module, out)

    @staticmethod
    def _renamed(module: Any, leaves: list[Leaf]) -> list[Leaf]:
        """Leaves whose Keras names are automatic, repeated or dotted, named by their attributes."""
        names = [leaf.name for leaf in leaves]
        _PLAIN.update(n for n in names if "." not in n and not _AUTO_NAME.fullmatch(n))
        if all(names.count(n) == 1 for n in names) and set(names) <= _PLAIN:
            return leaves
        holders = _holders(module)
        out: list[str] = []
        for i, (n, v, *_) in enumerate(leaves):
            if names.count(n) > 1 or "." in n or _AUTO_NAME.fullmatch(n):
                n = next(
                    (a for a in holders.get(id(v), []) if a not in names and a not in out),
                    f"var_{i}",
                )
            out.append(n)
        return [leaf._replace(name=n) for n, leaf in zip(out, leaves)]

    def leaf(self, module: Any, name: str) -> Any:
        for leaf in self.leaves(module):
            if leaf.name == name:
                return leaf.obj
        raise PathError(f"The {type(module).__name__} layer no longer has a variable {name!r}.")

    def native(self, obj: Any) -> Any:
        return obj.value if type(obj) is Container else obj  # the list or dict itself

    def type_name(self, module: Any) -> str:
        if type(module) is Container:
            # __class__, not type(): TensorFlow's proxies answer with the class they wrap
            return module.value.__class__.__name__.removeprefix("Tracked").lower()
        return type(module).__name__

    def kind(self, module: Any) -> str | None:
        kind = self.kinds[type(module)]
        if kind == "einsum":
            return _einsum_kind(module)
        if kind == "gru" and not getattr(module, "reset_after", True):
            return None  # resets before the recurrent matmul: no canonical (PyTorch) form
        return kind

    def settings(self, module: Any) -> dict[str, Any]:
        """The results-changing settings in the core's vocabulary (see ``Adapter.settings``).

        Convolutions also report ``data_format``: a ``channels_first`` conv reads its input as
        PyTorch does, and the core's flatten permutation (``layouts.Flattened``) assumes
        ``channels_last``, Keras's default; only that is supported for a dense layer fed by the
        flatten of a conv output. A transposed conv's ``"same"`` padding is given as PyTorch's
        ``padding`` and ``output_padding`` where PyTorch can express it. Recurrent layers report
        their activations by name, and a GRU ``reset_after`` (PyTorch's GRU is ``True``);
        attention its ``num_heads``, which the parameter shapes do not show. The whole
        vocabulary is ``unitree._settings.VOCABULARY``'s; {} for a layer of no kind of Keras's
        own (a registered third-party type).
        """
        kind = self.kinds[type(module)]  # a GRU that resets before the matmul reports it too
        if not isinstance(module, _OWN):
            return {}  # a registered third-party type: its settings are unknown
        if kind in CONVS:
            return _conv_settings(module, kind)
        if kind == "embedding":  # no max_norm in Keras
            return {"max_norm": None, "mask_zero": bool(module.mask_zero)}
        if kind in ("layer_norm", "batch_norm", "group_norm"):
            return _norm_settings(module, kind)
        if kind in ("lstm", "gru"):
            cell = module.cell
            out = {
                "activation": cell.activation.__name__,
                "recurrent_activation": cell.recurrent_activation.__name__,
                "reverse": bool(module.go_backwards),  # outputs in the reversed order too
                "stateful": bool(module.stateful),
            }
            return out | ({"reset_after": bool(cell.reset_after)} if kind == "gru" else {})
        if kind == "attention":
            return _attention_settings(module)
        return {}

    def step(self, module: Any) -> Step:
        """What ``module`` does to the layout of the activations (``Adapter.step``): read from
        the layer's class and its own arguments, and from a model's structure (see
        ``_keras_layout``); a container of attributes (``blocks.0``) is a list, never called."""
        if type(module) is Container:
            return Step(UNKNOWN, why=f"the {self.type_name(module)} of layers")
        return keras_step(module)

    def fingerprint(self, root: Any) -> Any:
        # the variables themselves, not leaves(): no renaming of automatic names on every traversal
        children = self.children
        return fingerprint(root, self._objects, lambda m: [c for _, c in children(m)])

    # -- one leaf -----------------------------------------------------------------------
    def shape(self, leaf: Any) -> tuple[int, ...] | None:
        if type(leaf) is Unbuilt:
            return None
        return tuple(int(d) for d in leaf.shape)

    def dtype(self, leaf: Any) -> str:
        if type(leaf) is Unbuilt:
            return keras.config.floatx()
        return leaf.dtype

    def device(self, leaf: Any) -> str:
        if type(leaf) is Unbuilt:  # where Keras will create it: the first GPU, if any
            devices = self.devices()
            return devices[1] if len(devices) > 1 else "cpu"
        return self.backend.device(leaf.value)

    def trainable(self, leaf: Any) -> bool:
        return bool(leaf.trainable)

    def read(self, leaf: Any) -> np.ndarray:
        return self.backend.to_numpy(leaf.value)

    def write(self, leaf: Any, value: np.ndarray, index: Any = None) -> None:
        if index is not None:  # Keras variables take whole values only
            full = np.array(self.read(leaf))
            full[index] = value
            value = full
        # Variable.assign: in place on tensorflow and torch, a new array on jax; every alias
        # sees it, being the same Keras variable
        leaf.assign(self.backend.from_host(value, leaf))

    def backup(self, leaf: Any) -> Any:
        return self.backend.backup(leaf)

    def write_can_fail(self, leaf: Any) -> bool:
        """False on the host: ``Variable.assign`` of a value of the variable's shape and dtype
        (checked before) only copies it; a device's copy can fail."""
        return self.device(leaf) != "cpu"

    def data(self, leaf: Any) -> Any:
        return leaf.value

    def grad(self, leaf: Any) -> np.ndarray | None:
        return None if type(leaf) is Unbuilt else self.backend.grad(leaf)

    def asarray(self, value: Any) -> np.ndarray:
        if isinstance(value, keras.Variable):
            return self.read(value)
        if keras.ops.is_tensor(value):
            return self.backend.to_numpy(value)
        return np.asarray(value)

    # -- the whole model ------------------------------------------------------------------
    def devices(self) -> list[str]:
        return ["cpu"] + [f"gpu:{i}" for i in range(self.backend.gpus())]

    def backward(self, root: Any, loss_fn: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        floating = next(
            (v.dtype for v in root.trainable_variables if "float" in v.dtype), keras.config.floatx()
        )
        args = [self._input(x, floating) for x in inputs]
        return self.backend.backward(root, loss_fn, args)

    @staticmethod
    def _input(x: Any, floating: str) -> Any:
        if isinstance(x, np.ndarray) or np.isscalar(x):
            a = np.asarray(x)
            return keras.ops.convert_to_tensor(a, dtype=floating if a.dtype.kind == "f" else None)
        return x

    def zero_grad(self, leaf: Any) -> None:
        if type(leaf) is not Unbuilt:
            self.backend.zero_grad(leaf)

    def share(self, new: Any, dst_owner: Any, dst_name: str) -> None:
        old = self.leaf(dst_owner, dst_name)
        if new is old:
            return
        if type(new) is Unbuilt or type(old) is Unbuilt:
            raise UninitializedError(
                "Cannot tie layers that are not built yet: their variables do not exist. "
                "Call the model once on an input, then tie."
            )
        if self.shape(new) != self.shape(old):
            raise UnsupportedError(
                f"tie is not supported by the keras adapter between {new.path} "
                f"{self.shape(new)} and {type(dst_owner).__name__}.{dst_name} {self.shape(old)}: "
                "one Keras variable cannot serve two layouts. Reuse one layer instance instead, "
                "or a layer that reads the other's variable in its own layout."
            )
        # Every variable of the layer must sit in an attribute we can point elsewhere: checked for
        # the whole layer at its first leaf, so that a tie Keras cannot make changes nothing.
        holders = _holders(dst_owner)
        objects = self._objects(dst_owner)
        hidden = [v.name for v in objects if id(v) not in holders]
        if hidden:
            raise UnsupportedError(
                f"tie is not supported by the keras adapter for {type(dst_owner).__name__}: it keeps "
                f"{hidden} outside its attributes, so it cannot be pointed at another layer's variables. "
                "Keras shares parameters by reusing the layer instance: put the same layer at both "
                "places in the model definition."
            )
        # Keras's own tracker helpers compare with ==, which Variables answer elementwise: by identity here.
        tracker = dst_owner._tracker
        store = next(k for k, ids in tracker.stored_ids.items() if id(old) in ids)
        tracked = tracker.config[store][1]
        i = next(i for i, v in enumerate(tracked) if v is old)
        if tracker.is_in_store(store, new):  # it already holds it under another name
            del tracked[i]
        else:
            tracked[i] = new
            tracker.stored_ids[store].add(id(new))
        tracker.stored_ids[store].discard(id(old))
        for attr in holders[id(old)]:
            setattr(dst_owner, attr, new)  # tracked already: Keras keeps it where it is
        dst_owner._post_untrack_variable(old)  # torch backend: the layer's torch parameters
        dst_owner._post_track_variable(new)

    def shared(self, root: Any) -> None:
        """Drop what Keras compiled against the old variables; torch: re-list every layer's parameters."""
        layers = root._flatten_layers()
        # a Sequential runs through a functional twin of itself, with caches of its own
        layers += [
            x._functional
            for x in layers
            if isinstance(getattr(x, "_functional", None), keras.Layer)
        ]
        for layer in layers:
            for fn in ("train_function", "test_function", "predict_function"):
                if getattr(layer, fn, None) is not None:
                    setattr(layer, fn, None)
            self.backend.retrack(layer)

    # -- capability: running the model ----------------------------------------------------
    def run(
        self,
        root: Any,
        inputs: Sequence[Any],
        capture: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[int, list[Any]]]:
        """``root(*inputs, training=False, **kwargs)``. A layer is captured by a wrapper of its
        ``call`` set on the instance for the run (and removed after it): ``Layer.__call__``
        runs ``self.call``, so every call is seen, in Sequential, functional and subclassed
        models alike, whoever calls the layer. Not seen: a layer a model reaches without
        calling it (a subclassed model that reads ``layer.kernel`` itself).

        A dense or convolution layer with an activation folded in (``Dense(8, "relu")``) is
        caught before its activation, as the layer of another framework (torch's ``Linear``,
        then a ``ReLU`` module) gives it: its ``activation`` is off for the call, and applied
        by the wrapper to what it returns."""
        floating = next(
            (v.dtype for v in root.trainable_variables if "float" in v.dtype), keras.config.floatx()
        )
        args = [self._input(x, floating) for x in inputs]
        captured: dict[int, list[Any]] = {}
        convert = self._tensor_numpy
        patched: list[tuple[Any, Any]] = []
        try:
            for layer in {id(m): m for m in capture if isinstance(m, keras.Layer)}.values():
                patched.append((layer, layer.__dict__.get("call", _NOTHING)))
                # set past Keras's own __setattr__: a function is nothing it should track
                folded = self.kind(layer) in _FOLDS_ACTIVATION
                wrapper = _catching(layer, captured, convert, folded)
                object.__setattr__(layer, "call", wrapper)
            out = root(*args, training=False, **(kwargs or {}))
            return as_numpy(out, convert), captured
        finally:
            for layer, old in reversed(patched):
                if old is _NOTHING:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", old)

    def _tensor_numpy(self, value: Any) -> np.ndarray | None:
        return self.backend.to_numpy(value) if keras.ops.is_tensor(value) else None


_NOTHING = object()  # no ``call`` of the instance's own before the run
# Layers whose ``call`` ends with ``if self.activation is not None: activation(outputs)``.
_FOLDS_ACTIVATION = frozenset({"dense", "conv", "conv_transpose", "depthwise_conv"})


def _catching(
    layer: Any,
    captured: dict[int, list[Any]],
    convert: Callable[[Any], np.ndarray | None],
    folded: bool,
) -> Callable[..., Any]:
    """``layer.call``, which also appends its output (numpy, a copy) to ``captured[id(layer)]``:
    where the layer ``folded`` an activation in, the output before it."""
    call, key = layer.call, id(layer)

    def catching(*args: Any, **kwargs: Any) -> Any:
        activation = layer.activation if folded else None
        if activation is None:
            out = call(*args, **kwargs)
            captured.setdefault(key, []).append(as_numpy(out, convert))
            return out
        object.__setattr__(layer, "activation", None)
        try:
            out = call(*args, **kwargs)
        finally:
            object.__setattr__(layer, "activation", activation)
        captured.setdefault(key, []).append(as_numpy(out, convert))
        return activation(out)

    return catching


def _conv_settings(layer: Any, kind: str) -> dict[str, Any]:
    """Padding as (before, after) per spatial axis or "same", strides, dilation, groups; Keras
    pads with zeros only, and has no kernel mask or input dilation."""
    n = len(layer.kernel_size)
    strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    out: dict[str, Any] = {"stride": strides, "dilation": dilation}
    if kind == "conv":
        out["groups"] = int(layer.groups)
    elif kind == "depthwise_conv" and layer.built:  # one group per input channel
        out["groups"] = int(layer.kernel.shape[-2])
    elif kind == "conv_transpose":
        out["groups"] = 1
    padding: Any = ((0, 0),) * n if layer.padding == "valid" else layer.padding
    if layer.padding == "causal":  # Conv1D: everything before the sequence
        padding = ((dilation[0] * (layer.kernel_size[0] - 1), 0),)
    if kind == "conv_transpose":
        padding, out["output_padding"] = _transpose_padding(layer, padding)
    out["padding"] = padding
    out |= {"padding_mode": "zeros", "input_dilation": (1,) * n, "kernel_mask": False}
    out["data_format"] = layer.data_format
    return out


def _norm_settings(layer: Any, kind: str) -> dict[str, Any]:
    """A norm's epsilon, and whether its stored scale (gamma) and shift (beta) are applied: a
    ``LayerNormalization(rms_scaling=True)`` keeps gamma and no beta, whatever ``scale`` and
    ``center`` say. Keras's momentum weighs the old average, PyTorch's the batch."""
    rms = kind == "layer_norm" and bool(layer.rms_scaling)
    out: dict[str, Any] = {
        "eps": float(layer.epsilon),
        "scale": bool(layer.scale) or rms,
        "center": bool(layer.center) and not rms,
    }
    if kind == "batch_norm":
        return out | {"momentum": 1.0 - float(layer.momentum)}
    if kind == "group_norm":
        return out | {"groups": int(layer.groups)}
    out["rms_scaling"] = rms
    axes = _negative_axes(layer)
    return out if axes is None else out | {"axes": axes}


def _negative_axes(layer: Any) -> tuple[int, ...] | None:
    """A LayerNormalization's axes counted from the last (-1,), or None where an axis counted
    from the front meets an input rank not known yet (the layer not built)."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if all(a < 0 for a in axes):
        return tuple(sorted(int(a) for a in axes))
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        return None
    rank = len(shape)
    return tuple(sorted(int(a) - rank if a >= 0 else int(a) for a in axes))


def _attention_settings(layer: Any) -> dict[str, Any]:
    """MultiHeadAttention's heads, whether it gates, and where it attends: ``attention_axes``
    None when over every axis between batch and features (Keras's default, which it spells
    out once built: (1,) for a 3-d query)."""
    axes = layer._attention_axes
    equation = getattr(layer, "_dot_product_equation", None)
    if axes is not None and equation:  # built: the default spelled out for the query's rank
        rank = len(equation.split(",")[0])
        if tuple(axes) == tuple(range(1, rank - 2)):
            axes = None
    own = type(layer)._compute_attention is keras.layers.MultiHeadAttention._compute_attention
    return {
        "num_heads": int(layer.num_heads),
        "add_zero_attn": False,
        "attention_axes": None if axes is None else tuple(int(a) for a in axes),
        "attention_fn": "dot_product_attention"
        if own
        else f"{type(layer).__module__}.{type(layer).__qualname__}._compute_attention",
        "gated": bool(getattr(layer, "_use_gate", False)),
    }


def _transpose_padding(layer: Any, padding: Any) -> tuple[Any, tuple[int, ...]]:
    """A transposed conv's padding and output padding as PyTorch's ConvTranspose takes them.

    PyTorch crops ``p`` from both ends of the full output, then adds ``output_padding`` at the
    end. Keras's "valid" crops nothing and pads the output to ``max(k, stride)`` per step
    unless told otherwise; its "same" gives ``input * stride`` values, which PyTorch expresses
    only when it crops nothing or pads nothing at the end (else "same" is kept).
    """
    pads, extra = [], []
    for i, k in enumerate(layer.kernel_size):
        s, k = layer.strides[i], (k - 1) * layer.dilation_rate[i] + 1
        given = None if layer.output_padding is None else layer.output_padding[i]
        if layer.padding == "valid":
            pads.append((0, 0))
            extra.append(max(k, s) - k if given is None else given)
            continue
        op = s - k % 2 if given is None else given
        p = max(-((k % 2 - k + op) // 2), 0)
        op = 2 * p + k % 2 - k + op
        if p and op:
            return padding, tuple(layer.output_padding or ())
        pads.append((p, p))
        extra.append(op)
    return tuple(pads), tuple(extra)


_EINSUM_KINDS: dict[tuple[str, str | None], Kind | None] = {}


def _einsum_kind(layer: Any) -> Kind | None:
    """An ``EinsumDense``'s kind: "dense" with rules read from its equation and bias axes
    (``layouts.einsum_dense``: its kernel as PyTorch's ``Linear`` weight), or None where the
    equation is no dense map, or where the kernel is not what it computes with (quantized,
    LoRA): such a layer ports only onto its own type. One Kind per (equation, bias axes)."""
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return None
    key = (str(layer.equation), None if layer.bias_axes is None else str(layer.bias_axes))
    if key not in _EINSUM_KINDS:
        rules = einsum_dense(*key)
        _EINSUM_KINDS[key] = (
            None
            if rules is None
            else Kind("dense", rules, f"keras.layers.EinsumDense {key[0]} bias {key[1]}")
        )
    return _EINSUM_KINDS[key]


def _tensorflow_own(name: str, attributes: Mapping[str, Any]) -> bool:
    """Whether the attribute ``name`` is TensorFlow's bookkeeping of a layer's dependencies
    (TensorFlow's ``Trackable`` keeps them in attributes named ``_self_...``, which Keras
    wraps in its tracked containers too), not a sublayer: a container of layers that the
    layer's other attributes hold already. A layer held directly (KerasHub's
    ``_self_attention_layer``), or a container of layers held nowhere else, is the model's."""
    value = attributes[name]
    if not name.startswith("_self_") or isinstance(value, keras.Layer):
        return False
    elsewhere = {
        id(x)
        for other, held in attributes.items()
        if other != name and not other.startswith("_self_") and other not in _INTERNAL
        for x in _layers_in(held)
    }
    return all(id(x) in elsewhere for x in _layers_in(value))


def _layers_in(value: Any) -> list[Any]:
    """The layers a layer attribute holds: itself, or those in its lists and dicts."""
    if isinstance(value, keras.Layer):
        return [value]
    if _is_sequence(value) or isinstance(value, Mapping):
        return [x for _, v in _items(value) for x in _layers_in(v)]
    return []


def _holders(layer: Any) -> dict[int, list[str]]:
    """id(variable) -> the layer's attributes holding it."""
    out: dict[int, list[str]] = {}
    for name, value in vars(layer).items():
        if isinstance(value, keras.Variable):
            out.setdefault(id(value), []).append(name)
    return out


# Keras's own layer classes of the kind table: the ones whose settings settings() reads
_OWN = tuple(_KINDS)

adapter = KerasAdapter()
