"""Random architectures, built natively in each framework from one seeded spec, for the port
property test (tests/flax/test_port_property.py, tests/gluon/test_port_property.py).

A ``Spec`` is plain data with PyTorch's meaning: the input shape without the batch axis,
channels first (``(F,)``, ``(C, L)`` or ``(C, H, W)``), and the steps, each a ``Step``:

- ``dense`` (``out``, ``bias``), ``conv`` 1-d or 2-d (``out``, ``k``, ``stride``, ``pad``:
  symmetric zero padding, ``dilation``, ``bias``), ``bn`` (batch norm over the channels, on its
  running statistics), ``ln`` (layer norm over the features of a 2-d activation);
- parameterless: ``act`` (``fn``: relu, tanh, sigmoid), ``pool`` (``fn``: max or avg, window
  and stride 2), ``dropout`` (``rate``; every model runs in inference), ``flatten`` (of a
  channels-first activation: (C, *S) -> C*S features in C-major order, as ``torch.flatten``),
  ``unflatten`` (``shape``: F features -> (C, L), as ``torch.nn.Unflatten``).

Each ``Step`` also carries ``inp``, the activation shape it receives (channels first), so a
builder needs no shape inference. Every step with parameters has a ``name`` (``dense3``), the
same in every framework: what a named container calls its attribute.

``build(framework, spec, seed, mutation)`` makes the model in one framework
(``torch``, ``keras``, ``linen``, ``nnx``, ``gluon``), every parameter and buffer drawn from
``seed`` through the framework's own API, and returns a ``Built``: what ``ut.port`` takes and
``run``, the model's own output on a channels-first input, given back channels first.

How a framework spells the spec is drawn from the spec's seed and the framework (a twin's
spelling varies the way people write models): a positional container or a named one (a custom
module with attributes; Keras: functional or subclassed; linen: ``setup`` or ``@nn.compact``,
its submodules given a ``name=`` or named by linen, ``Dense_0``);
activations as layers, as functions, or folded into the layer before them (Keras, Gluon);
conv padding as a number, per-side pairs, ``'same'`` where it means the same (stride 1, odd
kernel), or Keras's ``ZeroPadding`` then a valid conv; the flatten in the framework's own
order (channels last in Keras and Flax: a correct port permutes the next dense layer's input
axis) or after an explicit permute to the other order (Keras's ``Permute((3, 1, 2))`` before
``Flatten``, "flatten like PyTorch"; Flax's transpose to NCHW before the reshape, as Flax's
porting guide writes it; a custom permute module in PyTorch and Gluon); Gluon's ``Dense``
flattening by itself. Whatever the spelling, a twin computes the spec's function, so a port
between twins has one right answer: the source's output.

A ``mutation`` makes the destination no twin in a way that matters, with the same parameter
shapes, so only reading the layers (or running them) can tell: ``same_s2`` (a stride-2
``'same'`` conv, padding 0 before and 1 after, where the spec pads 1 on both sides),
``dilation`` (dilation 2 with padding 2 for a 3-wide kernel padded 1), ``pad_mode`` (reflect
or circular padding for zeros), ``swap_names`` (two same-shaped dense layers whose names are
swapped: the names say one order, the layers' order another; what a checkpoint load pairs
too, so only a check can see it), ``unflatten_order`` (the features reshaped to (L, C) where
the spec reshapes to (C, L)).

``run_pair(src, dst, specs, mode)`` ports every spec's twin and mutations, ``strict``
(``ut.port(src, dst)``) or with ``check=`` (``check_inputs``), and counts the outcomes in a
``Tally`` (``assert_pair`` asserts the property on it; ``table`` and ``write_report`` show it).
The outputs are compared on the check's input and on one the port never saw (``INPUTS``).
``KNOWN_LIMITS``: what a twin may still be refused for with check=, each a limit of the library
this test knows, recognised by the spelling that meets it and the reason given.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

FRAMEWORKS = ("torch", "keras", "linen", "nnx", "gluon")
CHANNELS_LAST = {"torch": False, "keras": True, "linen": True, "nnx": True, "gluon": False}
ACTS = ("relu", "tanh", "sigmoid")
BATCH = 3
EPS = 1e-5  # every norm's epsilon, spelled out in each framework (Keras's default is 1e-3)
# every value is drawn after the build: jax compiles a random initializer per shape, slowly
KERAS_ZEROS = {"kernel_initializer": "zeros"}
MUTATIONS = ("same_s2", "dilation", "pad_mode", "swap_names", "unflatten_order")


@dataclass(frozen=True)
class Step:
    """One step of a spec, in PyTorch's meaning (see the module docstring)."""

    kind: str
    inp: tuple[int, ...]  # the activation it receives, channels first, without the batch
    name: str = ""
    out: int = 0
    k: int = 0
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    bias: bool = True
    fn: str = ""
    rate: float = 0.0
    shape: tuple[int, ...] = ()

    @property
    def dims(self) -> int:
        """Spatial axes of the activation this step receives (0 for features)."""
        return len(self.inp) - 1


@dataclass(frozen=True)
class Spec:
    """A random architecture: ``shape`` (input, channels first, no batch) and ``steps``."""

    seed: int
    shape: tuple[int, ...]
    steps: tuple[Step, ...]
    family: str = ""

    @property
    def out(self) -> tuple[int, ...]:
        """The output shape, channels first, without the batch."""
        return _after(self.steps[-1])

    def __str__(self) -> str:
        return f"spec {self.seed} {self.shape}: " + " ".join(map(_show, self.steps))


def _show(s: Step) -> str:
    if s.kind == "dense":
        return f"dense{s.out}" + ("" if s.bias else "-nobias")
    if s.kind == "conv":
        extra = f"s{s.stride}" * (s.stride > 1) + f"p{s.pad}" + f"d{s.dilation}" * (s.dilation > 1)
        return f"conv{s.dims}d{s.out}k{s.k}{extra}"
    if s.kind in ("act", "pool"):
        return s.fn
    if s.kind == "unflatten":
        return f"unflatten{s.shape}"
    return s.kind


def _after(s: Step) -> tuple[int, ...]:
    """The activation shape a step gives, channels first."""
    if s.kind == "dense":
        return (s.out,)
    if s.kind == "conv":
        size = [(n + 2 * s.pad - s.dilation * (s.k - 1) - 1) // s.stride + 1 for n in s.inp[1:]]
        return (s.out, *size)
    if s.kind == "pool":
        return (s.inp[0], *(n // 2 for n in s.inp[1:]))
    if s.kind == "flatten":
        return (int(np.prod(s.inp)),)
    if s.kind == "unflatten":
        return s.shape
    return s.inp


# -- the generator --------------------------------------------------------------------------
def random_spec(seed: int) -> Spec:
    """A random architecture drawn from ``seed``: an MLP (dense layers, layer and batch norms,
    runs of same-shaped dense layers), a 1-d or 2-d CNN (convs, batch norms, pooling, then a
    flatten and dense layers, or ending on the feature map), or a decoder (dense, unflatten,
    1-d convs); activations and dropouts in between."""
    rng = np.random.default_rng([seed, 7])
    family = str(rng.choice(["mlp", "conv1d", "conv2d", "decoder"], p=[0.35, 0.2, 0.3, 0.15]))
    steps: list[Step] = []
    names = iter(range(100))

    def add(kind: str, **kw: Any) -> tuple[int, ...]:
        inp = _after(steps[-1]) if steps else shape
        named = kind in ("dense", "conv", "bn", "ln")
        steps.append(Step(kind, inp, name=f"{kind}{next(names)}" if named else "", **kw))
        return _after(steps[-1])

    def between(norms: tuple[str, ...]) -> None:
        """What may follow a layer: a norm (one of ``norms``) before or after an activation,
        then a dropout."""
        norm = str(rng.choice(norms)) if norms and rng.random() < 0.3 else ""
        first = rng.random() < 0.7
        if norm and first:
            add(norm)
        if rng.random() < 0.7:
            add("act", fn=str(rng.choice(ACTS)))
        if norm and not first:
            add(norm)
        if rng.random() < 0.2:
            add("dropout", rate=0.5)

    def dense_part(width: int, layers: int) -> None:
        for i in range(layers):
            last = i == layers - 1
            square = not last and width <= 12 and rng.random() < 0.6  # same-shaped layers
            out = width if square else int(rng.integers(2, 7))
            width = add("dense", out=out, bias=bool(rng.random() < 0.85))[0]
            if last:
                return
            between(("ln", "bn"))

    if family == "mlp":
        shape: tuple[int, ...] = (int(rng.integers(3, 7)),)
        dense_part(shape[0], int(rng.integers(2, 5)))
    elif family == "decoder":
        shape = (int(rng.integers(3, 6)),)
        c, length = int(rng.integers(2, 4)), int(rng.integers(3, 6))
        add("dense", out=c * length)
        between(())
        add("unflatten", shape=(c, length))
        add("conv", out=int(rng.integers(2, 5)), k=3, pad=1)
        between(("bn",))
        if rng.random() < 0.6:
            add("flatten")
            dense_part(int(np.prod(_after(steps[-1]))), 1)
    else:
        dims = 1 if family == "conv1d" else 2
        shape = (int(rng.integers(1, 4)), *(int(rng.choice([6, 8])),) * dims)
        for _ in range(int(rng.integers(1, 3))):
            size = (_after(steps[-1]) if steps else shape)[1]
            k = int(rng.choice([1, 2, 3, 3])) if size >= 3 else 1
            stride = 2 if k == 3 and size >= 4 and rng.random() < 0.35 else 1
            pad = k // 2 if k % 2 and rng.random() < 0.7 else 0
            add("conv", out=int(rng.integers(2, 5)), k=k, stride=stride, pad=pad)
            between(("bn",))
            if _after(steps[-1])[1] >= 4 and rng.random() < 0.5:
                add("pool", fn=str(rng.choice(["max", "avg"])))
        if rng.random() < 0.85:
            add("flatten")
            dense_part(int(np.prod(_after(steps[-1]))), int(rng.integers(1, 3)))
    return Spec(seed, shape, tuple(steps), family)


def applicable(spec: Spec, framework: str) -> list[str]:
    """The mutations that can make ``framework``'s build of ``spec`` no twin of it."""
    out = []
    for s in spec.steps:
        if s.kind != "conv":
            continue
        same = s.k == 3 and s.pad == 1 and s.dilation == 1
        if same and s.stride == 2 and s.inp[1] % 2 == 0 and CHANNELS_LAST[framework]:
            out.append("same_s2")  # 'same' at stride 2 on an even size pads (0, 1)
        if same and s.stride == 1:
            out.append("dilation")
            if framework in ("torch", "linen", "nnx"):
                out.append("pad_mode")
    if _swappable(spec):
        out.append("swap_names")
    if any(s.kind == "unflatten" for s in spec.steps):
        out.append("unflatten_order")
    return list(dict.fromkeys(out))


def _swappable(spec: Spec) -> tuple[int, int] | None:
    """The first two dense layers with the same shapes (and bias), or None."""
    seen: dict[tuple, int] = {}
    for i, s in enumerate(spec.steps):
        if s.kind == "dense":
            key = (s.inp, s.out, s.bias)
            if key in seen:
                return seen[key], i
            seen[key] = i
    return None


# -- how one framework spells a spec --------------------------------------------------------
@dataclass
class Spelling:
    """The choices one framework's build makes (drawn by ``spelling``)."""

    container: str  # "seq", "named"; Keras also "functional"; linen also "compact"
    auto_names: bool = False  # linen compact: submodules named by linen (Dense_0), no name=
    fold: set[int] = field(default_factory=set)  # act steps folded into the layer before
    as_layer: set[int] = field(default_factory=set)  # named containers: act/flatten a layer
    flatten_other: bool = False  # permute to the other order before flattening
    dense_flattens: bool = False  # Gluon: the Dense after the flatten flattens itself
    pad_style: dict[int, str] = field(default_factory=dict)  # conv index -> "int"/"pairs"/"same"
    names: dict[int, str] = field(default_factory=dict)  # step index -> attribute name
    mutation: str = ""

    def __str__(self) -> str:
        out = [self.container + " (linen's names)" * self.auto_names]
        out += ["folds acts"] * bool(self.fold)
        out += ["flattens in the other order"] * self.flatten_other
        out += ["Dense flattens"] * self.dense_flattens
        pads = sorted(set(self.pad_style.values()))
        out += [f"padding {'/'.join(pads)}"] * bool(pads)
        out += [f"mutation {self.mutation}"] * bool(self.mutation)
        return ", ".join(out)


def spelling(framework: str, spec: Spec, mutation: str = "", named: bool = False) -> Spelling:
    """The spelling of ``spec`` in ``framework``, drawn from the spec's seed and the framework
    (the same for a source and a destination), then the ``mutation``; ``named`` forces a named
    container."""
    rng = np.random.default_rng([spec.seed, FRAMEWORKS.index(framework), 3])
    containers = {"keras": ["seq", "functional", "named"], "linen": ["seq", "named", "compact"]}
    kinds = containers.get(framework, ["seq", "named"])
    container = str(rng.choice(kinds, p=[0.5] + [0.5 / (len(kinds) - 1)] * (len(kinds) - 1)))
    if named and container == "seq":
        container = "named"
    out = Spelling(container, mutation=mutation)
    for i, s in enumerate(spec.steps):
        prev = spec.steps[i - 1] if i else None
        after_layer = s.kind == "act" and prev is not None and prev.kind in ("dense", "conv")
        if after_layer and framework in ("keras", "gluon") and rng.random() < 0.5:
            out.fold.add(i)
        if s.kind in ("act", "flatten") and rng.random() < 0.5:
            out.as_layer.add(i)  # else a function the named container calls
        if s.kind == "conv":
            styles = ["int", "pairs"]
            if s.stride == 1 and s.pad == s.k // 2 and s.k % 2 and s.dilation == 1:
                styles.append("same")
            out.pad_style[i] = str(rng.choice(styles))
        if s.kind == "flatten":
            out.flatten_other = bool(rng.random() < 0.4)
            out.dense_flattens = (
                framework == "gluon" and not out.flatten_other and rng.random() < 0.5
            )
        if s.name:
            out.names[i] = s.name
    # drawn last: the draws above are what they were before this choice existed
    out.auto_names = container == "compact" and not named and bool(rng.random() < 0.5)
    if mutation == "swap_names":
        i, j = _swappable(spec)  # type: ignore[misc]
        out.names[i], out.names[j] = out.names[j], out.names[i]
    return out


def mutate(spec: Spec, framework: str, mutation: str) -> dict[int, Step]:
    """The steps a mutation changes: index -> the step the destination builds instead."""
    for i, s in enumerate(spec.steps):
        same = s.kind == "conv" and s.k == 3 and s.pad == 1 and s.dilation == 1
        if mutation == "same_s2" and same and s.stride == 2 and s.inp[1] % 2 == 0:
            return {i: replace(s, pad=-1)}  # -1: 'same'
        if mutation == "dilation" and same and s.stride == 1:
            return {i: replace(s, dilation=2, pad=2)}
        if mutation == "pad_mode" and same and s.stride == 1:
            return {i: replace(s, fn="circular" if framework != "torch" else "reflect")}
        if mutation == "unflatten_order" and s.kind == "unflatten":
            return {i: replace(s, fn="swapped")}
    return {}


# -- what a build gives ---------------------------------------------------------------------
@dataclass
class Built:
    """A model built natively: ``model`` is what ``ut.port`` takes (a linen module wrapped
    with its variables), ``run(x)`` its own output on a channels-first input, channels first,
    ``layers`` step index -> the native layer (linen: its name in the variables), for tests
    that set values by hand."""

    framework: str
    model: Any
    run: Callable[[np.ndarray], np.ndarray]
    spelling: Spelling
    layers: dict[int, Any] = field(default_factory=dict)


def to_native(x: np.ndarray, framework: str) -> np.ndarray:
    """A channels-first activation in ``framework``'s layout (channels last in Keras, Flax)."""
    if CHANNELS_LAST[framework] and x.ndim > 2:
        return np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return x


def to_canonical(y: np.ndarray, framework: str) -> np.ndarray:
    if CHANNELS_LAST[framework] and y.ndim > 2:
        return np.ascontiguousarray(np.moveaxis(y, -1, 1))
    return y


def random_input(spec: Spec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, seed, 11])
    return rng.standard_normal((BATCH, *spec.shape)).astype(np.float32)


def _value(rng: np.random.Generator, name: str, shape: tuple[int, ...], out_axis: int) -> Any:
    """A random value for one native parameter or buffer: kernels scaled by their fan-in (so
    activations stay in the range where tanh and sigmoid still tell values apart), norm scales
    around 1, running variances positive, everything else in [-0.5, 0.5]."""
    name = name.lower()
    if len(shape) >= 2:
        fan_in = int(np.prod(shape)) // shape[out_axis]
        bound = np.sqrt(3.0 / fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if "var" in name:
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if any(w in name for w in ("gamma", "scale")) or name.endswith("weight"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return rng.uniform(-0.5, 0.5, shape).astype(np.float32)


def build(framework: str, spec: Spec, seed: int, mutation: str = "", named: bool = False) -> Built:
    """``spec`` built in ``framework`` with every value drawn from ``seed`` (see the module
    docstring); ``mutation`` makes it no twin of the spec; ``named`` forces a named container."""
    spell = spelling(framework, spec, mutation, named)
    builder = {
        "torch": _torch,
        "keras": _keras,
        "linen": _linen,
        "nnx": _nnx,
        "gluon": _gluon,
    }[framework]
    return builder(spec, mutated(spec, framework, mutation), spell, seed)


def mutated(spec: Spec, framework: str, mutation: str) -> list[Step]:
    """The steps ``framework`` builds for ``spec`` under ``mutation``."""
    steps = dict(enumerate(spec.steps)) | mutate(spec, framework, mutation)
    return [steps[i] for i in range(len(spec.steps))]


def _plan(steps: list[Step], spell: Spelling) -> list[tuple[int, Step]]:
    """The steps a builder makes, in order: folded activations and a flatten Gluon's Dense does
    itself left out (the layer before, or after, does them)."""
    out = []
    for i, s in enumerate(steps):
        if i in spell.fold or (s.kind == "flatten" and spell.dense_flattens):
            continue
        out.append((i, s))
    return out


def _folded(steps: list[Step], spell: Spelling, i: int) -> str | None:
    """The activation folded into the layer at ``i``, if any."""
    return steps[i + 1].fn if i + 1 in spell.fold else None


def _perm_first(dims: int) -> tuple[int, ...]:
    """Axes that put a channels-last activation (batch first) channels first."""
    return (0, dims + 1, *range(1, dims + 1))


def _perm_last(dims: int) -> tuple[int, ...]:
    """Axes that put a channels-first activation (batch first) channels last."""
    return (0, *range(2, dims + 2), 1)


# -- PyTorch --------------------------------------------------------------------------------
def _torch(spec: Spec, steps: list[Step], spell: Spelling, seed: int) -> Built:
    import torch
    from torch import nn

    class Permute(nn.Module):
        """A permute people write as a module (torch has none): opaque to a reader."""

        def __init__(self, axes: tuple[int, ...]) -> None:
            super().__init__()
            self.axes = axes

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(*self.axes)

    class Named(nn.Module):
        """Named attributes in the order they run; functions called in between."""

        def __init__(self, parts: list[tuple[str | None, Callable]]) -> None:
            super().__init__()
            self.parts = []
            for name, part in parts:
                if name is not None:
                    setattr(self, name, part)
                self.parts.append(name or part)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for part in self.parts:
                x = getattr(self, part)(x) if isinstance(part, str) else part(x)
            return x

    torch.manual_seed(seed)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    named = spell.container == "named"
    parts: list[tuple[str | None, Callable]] = []
    layers: dict[int, Any] = {}
    for i, s in _plan(steps, spell):
        d = s.dims
        if s.kind == "dense":
            m: Any = nn.Linear(s.inp[0], s.out, bias=s.bias)
        elif s.kind == "conv":
            style = spell.pad_style.get(i, "int")
            padding: Any = "same" if style == "same" else s.pad
            if style == "pairs" and s.pad == 0:
                padding = "valid"
            conv = (nn.Conv1d, nn.Conv2d)[d - 1]
            mode = s.fn or "zeros"
            m = conv(
                s.inp[0], s.out, s.k, s.stride, padding, s.dilation, bias=s.bias, padding_mode=mode
            )
        elif s.kind == "bn":
            m = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[d](s.inp[0], eps=EPS, momentum=0.1)
        elif s.kind == "ln":
            m = nn.LayerNorm(s.inp[0], eps=EPS)
        elif s.kind == "act":
            if named and i not in spell.as_layer:
                parts.append((None, getattr(torch, s.fn)))
                continue
            m = acts[s.fn]()
        elif s.kind == "pool":
            m = getattr(nn, f"{s.fn.capitalize()}Pool{d}d")(2)
        elif s.kind == "dropout":
            m = nn.Dropout(s.rate)
        elif s.kind == "flatten":
            if spell.flatten_other:  # channels last first: flatten like TensorFlow
                parts.append((f"permute{i}" if named else "", Permute(_perm_last(d))))
            if named and i not in spell.as_layer:
                parts.append((None, partial(torch.flatten, start_dim=1)))
                continue
            m = nn.Flatten()
        elif s.kind == "unflatten":
            if s.fn == "swapped":  # (L, C), then channels first
                parts.append((f"reshape{i}" if named else "", nn.Unflatten(1, s.shape[::-1])))
                m = Permute((0, 2, 1))
            else:
                m = nn.Unflatten(1, s.shape)
        else:
            raise ValueError(s.kind)
        layers[i] = m
        parts.append((spell.names.get(i) or f"{s.kind}{i}" if named else "", m))
    if named:
        model = Named([(name or None, part) for name, part in parts])
    else:
        model = nn.Sequential(*(part for _, part in parts))
    _torch_random(model, seed)
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return Built("torch", model, run, spell, layers)


def _torch_random(model: Any, seed: int) -> None:
    import torch

    rng = np.random.default_rng([seed, 101])
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                t.copy_(torch.from_numpy(_value(rng, name, tuple(t.shape), 0)))


# -- Keras 3 --------------------------------------------------------------------------------
def _keras(spec: Spec, steps: list[Step], spell: Spelling, seed: int) -> Built:
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(seed)
    named = spell.container != "seq"
    made: list[Any] = []  # layers, or plain functions in a subclassed model's call
    out: dict[int, Any] = {}
    for i, s in _plan(steps, spell):
        d = s.dims
        name = (spell.names.get(i) or f"{s.kind}{i}") if named else None
        if s.kind == "dense":
            act = _folded(steps, spell, i)
            m: Any = L.Dense(s.out, activation=act, use_bias=s.bias, name=name, **KERAS_ZEROS)
        elif s.kind == "conv":
            style = spell.pad_style.get(i, "int")
            if s.pad == -1:
                padding = "same"  # the mutation: (0, 1) at stride 2 on an even size
            elif style == "same" or (s.dilation == 2 and s.pad == 2):
                padding = "same"
            elif s.pad:
                made.append((L.ZeroPadding1D, L.ZeroPadding2D)[d - 1](s.pad))
                padding = "valid"
            else:
                padding = "valid"
            conv = (L.Conv1D, L.Conv2D)[d - 1]
            m = conv(
                s.out,
                s.k,
                strides=s.stride,
                padding=padding,
                dilation_rate=s.dilation,
                activation=_folded(steps, spell, i),
                use_bias=s.bias,
                name=name,
                **KERAS_ZEROS,
            )
        elif s.kind == "bn":
            m = L.BatchNormalization(axis=-1, momentum=0.9, epsilon=EPS, name=name)
        elif s.kind == "ln":
            m = L.LayerNormalization(epsilon=EPS, name=name)
        elif s.kind == "act":
            if spell.container == "named" and i not in spell.as_layer:
                made.append(getattr(keras.ops, s.fn))
                continue
            m = L.ReLU() if s.fn == "relu" and i % 2 else L.Activation(s.fn)
        elif s.kind == "pool":
            m = getattr(L, f"{'Max' if s.fn == 'max' else 'Average'}Pooling{d}D")(2)
        elif s.kind == "dropout":
            m = L.Dropout(s.rate)
        elif s.kind == "flatten":
            if spell.flatten_other:  # channels first, then flatten: the PyTorch order
                made.append(L.Permute(tuple(a for a in _perm_first(d)[1:])))
            m = L.Flatten()
        elif s.kind == "unflatten":
            if s.fn == "swapped":
                m = L.Reshape((s.shape[1], s.shape[0]))  # (L, C): channels last at once
            else:
                made.append(L.Reshape(s.shape))
                m = L.Permute((2, 1))
        else:
            raise ValueError(s.kind)
        out[i] = m
        made.append(m)
    shape = to_native(np.zeros((1, *spec.shape)), "keras").shape[1:]
    if spell.container == "seq":
        model = keras.Sequential([keras.Input(shape), *made])
    elif spell.container == "functional":
        inputs = keras.Input(shape)
        y = inputs
        for m in made:
            y = m(y)
        model = keras.Model(inputs, y)
    else:
        model = _keras_named(made, [spell.names.get(i) for i in out])
        model(np.zeros((1, *shape), np.float32))
    _keras_random(model, seed)

    def run(x: np.ndarray) -> np.ndarray:
        y = model(to_native(x, "keras"), training=False)
        return to_canonical(keras.ops.convert_to_numpy(y), "keras")

    return Built("keras", model, run, spell, out)


def _keras_named(made: list[Any], names: list[str | None]) -> Any:
    """A subclassed Keras model: each layer an attribute named after its layer, in the order
    they run; functions called in between."""
    import keras

    class Named(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.order: list[Any] = []
            for m in made:
                if isinstance(m, keras.layers.Layer):
                    attr = m.name if m.name in names else f"step{len(self.order)}"
                    setattr(self, attr, m)
                    self.order.append(attr)
                else:
                    self.order.append(m)

        def call(self, x: Any, training: bool = False) -> Any:
            for part in self.order:
                x = getattr(self, part)(x, training=training) if isinstance(part, str) else part(x)
            return x

    return Named()


def _keras_random(model: Any, seed: int) -> None:
    rng = np.random.default_rng([seed, 102])
    for v in model.weights:
        v.assign(_value(rng, v.path, tuple(v.shape), -1))


# -- flax linen -----------------------------------------------------------------------------
def _flax_padding(s: Step, style: str) -> Any:
    if s.pad == -1:
        return "SAME"
    if s.fn:
        return "CIRCULAR"  # 'same' size, circular: the pad_mode mutation (k=3, stride 1)
    if (s.dilation == 2 and s.pad == 2) or style == "same":
        return "SAME"
    if style == "pairs":
        return ((s.pad, s.pad),) * s.dims
    return s.pad if s.pad else "VALID"


def _flax_flatten(s: Step, other: bool) -> Callable:
    d = s.dims
    if other:  # NCHW first, as Flax's porting guide writes it
        return lambda x: x.transpose(_perm_first(d)).reshape(x.shape[0], -1)
    return lambda x: x.reshape(x.shape[0], -1)


def _flax_unflatten(s: Step) -> Callable:
    c, length = s.shape
    if s.fn == "swapped":
        return lambda x: x.reshape(x.shape[0], length, c)
    return lambda x: x.reshape(x.shape[0], c, length).transpose(0, 2, 1)


def _flax_pool(s: Step, module: Any) -> Callable:
    pool = module.max_pool if s.fn == "max" else module.avg_pool
    window = (2,) * s.dims
    return partial(pool, window_shape=window, strides=window, padding="VALID")


def _linen(spec: Spec, steps: list[Step], spell: Spelling, seed: int) -> Built:
    import jax
    from flax import linen as nn

    import unitree as ut

    zeros = nn.initializers.zeros  # every value is drawn below: no random init to compile

    def layer(i: int, s: Step, name: str | None) -> Any:
        kw = {} if name is None else {"name": name}
        if s.kind == "dense":
            return nn.Dense(s.out, use_bias=s.bias, kernel_init=zeros, **kw)
        if s.kind == "conv":
            padding = _flax_padding(s, spell.pad_style.get(i, "int"))
            return nn.Conv(
                s.out,
                (s.k,) * s.dims,
                strides=s.stride,
                padding=padding,
                kernel_dilation=s.dilation,
                use_bias=s.bias,
                kernel_init=zeros,
                **kw,
            )
        if s.kind == "bn":
            return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=EPS, **kw)
        if s.kind == "ln":
            return nn.LayerNorm(epsilon=EPS, **kw)
        if s.kind == "act":
            return getattr(nn, s.fn)
        if s.kind == "pool":
            return _flax_pool(s, nn)
        if s.kind == "dropout":
            return nn.Dropout(s.rate, deterministic=True, **kw)
        if s.kind == "flatten":
            return _flax_flatten(s, spell.flatten_other)
        if s.kind == "unflatten":
            return _flax_unflatten(s)
        raise ValueError(s.kind)

    plan = _plan(steps, spell)
    # every submodule named (a dropout too: a named container makes it in setup)
    modules = ("dense", "conv", "bn", "ln", "dropout")
    names = {i: spell.names.get(i) or f"{s.kind}{i}" for i, s in plan if s.kind in modules}
    if spell.auto_names:  # linen names them by class, in the order the call makes them
        classes = {"dense": "Dense", "conv": "Conv", "bn": "BatchNorm", "ln": "LayerNorm"}
        made: dict[str, int] = {}
        for i in names:
            cls = classes.get(steps[i].kind, "Dropout")
            made[cls] = made.get(cls, -1) + 1
            names[i] = f"{cls}_{made[cls]}"
    if spell.container == "seq":
        module = nn.Sequential([layer(i, s, None) for i, s in plan])
        where = {i: f"layers_{n}" for n, (i, s) in enumerate(plan) if i in names}
    else:  # a setup or a compact module: each submodule made by its name
        cls = _linen_classes()[spell.container]
        given = {} if spell.auto_names else names  # no name=: linen's own
        module = cls(tuple((given.get(i), partial(layer, i, s)) for i, s in plan))
        where = names
    x0 = to_native(np.zeros((1, *spec.shape), np.float32), "linen")
    variables = module.init(jax.random.key(seed), x0)
    rng = np.random.default_rng([seed, 103])
    variables = _linen_values(variables, rng)
    tree = ut.wrap(module, variables)

    def run(x: np.ndarray) -> np.ndarray:
        # the variables the tree holds now: a port into a linen model writes new ones
        y = module.apply(tree.variables, to_native(x, "linen"))
        return to_canonical(np.asarray(y), "linen")

    return Built("linen", tree, run, spell, where)


def _linen_values(tree: Any, rng: np.random.Generator, name: str = "") -> Any:
    """``tree`` (linen's variables) with a random value for every array, its dicts in their
    order: linen's ``init`` keeps the order a compact call made its submodules in, which is
    all that tells them apart (``jax.tree_util`` would sort the keys)."""
    if isinstance(tree, dict):
        return {k: _linen_values(v, rng, k) for k, v in tree.items()}
    return _value(rng, name, tuple(tree.shape), -1)


@cache  # made on first use: the Gluon environment has no flax
def _linen_classes() -> dict[str, type]:
    from flax import linen as nn

    class Named(nn.Module):
        """Submodules made in ``setup``, attributes named by the spec, in the order they run."""

        parts: tuple

        def setup(self) -> None:
            for name, make in self.parts:
                if name is not None:
                    setattr(self, name, make(None))

        def __call__(self, x: Any) -> Any:
            for name, make in self.parts:
                x = getattr(self, name)(x) if name is not None else make(None)(x)
            return x

    class Compact(nn.Module):
        """Submodules made in a ``@nn.compact`` call, each given its name, or none (``None``:
        linen names it after its class, ``Dense_0``)."""

        parts: tuple

        @nn.compact
        def __call__(self, x: Any) -> Any:
            for name, make in self.parts:
                x = make(name)(x)
            return x

    return {"named": Named, "compact": Compact}


# -- flax NNX -------------------------------------------------------------------------------
def _nnx(spec: Spec, steps: list[Step], spell: Spelling, seed: int) -> Built:
    import jax
    from flax import nnx

    rngs = nnx.Rngs(seed)
    zeros = nnx.initializers.zeros  # every value is drawn below: no random init to compile

    def layer(i: int, s: Step) -> Any:
        if s.kind == "dense":
            return nnx.Linear(s.inp[0], s.out, use_bias=s.bias, kernel_init=zeros, rngs=rngs)
        if s.kind == "conv":
            padding = _flax_padding(s, spell.pad_style.get(i, "int"))
            return nnx.Conv(
                s.inp[0],
                s.out,
                (s.k,) * s.dims,
                strides=s.stride,
                padding=padding,
                kernel_dilation=s.dilation,
                use_bias=s.bias,
                kernel_init=zeros,
                rngs=rngs,
            )
        if s.kind == "bn":
            return nnx.BatchNorm(
                s.inp[0], use_running_average=True, momentum=0.9, epsilon=EPS, rngs=rngs
            )
        if s.kind == "ln":
            return nnx.LayerNorm(s.inp[0], epsilon=EPS, rngs=rngs)
        if s.kind == "act":
            return getattr(nnx, s.fn)
        if s.kind == "pool":
            return _flax_pool(s, nnx)
        if s.kind == "dropout":
            return nnx.Dropout(s.rate, deterministic=True, rngs=rngs)
        if s.kind == "flatten":
            return _flax_flatten(s, spell.flatten_other)
        if s.kind == "unflatten":
            return _flax_unflatten(s)
        raise ValueError(s.kind)

    plan = _plan(steps, spell)
    made = {i: layer(i, s) for i, s in plan}
    if spell.container == "seq":
        model: Any = nnx.Sequential(*made.values())
    else:
        modules = ("dense", "conv", "bn", "ln", "dropout")
        names = [
            spell.names.get(i) or f"{s.kind}{i}" if s.kind in modules else None for i, s in plan
        ]
        model = _nnx_named(list(zip(names, made.values())))
    model.eval()
    rng = np.random.default_rng([seed, 104])
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Param, nnx.BatchStat)):
            node[...] = jax.numpy.asarray(_value(rng, str(path[-1]), tuple(node[...].shape), -1))

    def run(x: np.ndarray) -> np.ndarray:
        return to_canonical(np.asarray(model(to_native(x, "nnx"))), "nnx")

    return Built("nnx", model, run, spell, {i: m for i, m in made.items() if steps[i].name})


def _nnx_named(parts: list[tuple[str | None, Any]]) -> Any:
    from flax import nnx

    class Named(nnx.Module):
        """Attributes named by the spec, in the order they run; functions held in a list."""

        def __init__(self) -> None:
            self.order = []
            for name, part in parts:
                if name is not None:
                    setattr(self, name, part)
                self.order.append(name)
            self.calls = [part if name is None else None for name, part in parts]

        def __call__(self, x: Any) -> Any:
            for name, call in zip(self.order, self.calls):
                x = getattr(self, name)(x) if name is not None else call(x)
            return x

    return Named()


# -- MXNet Gluon ----------------------------------------------------------------------------
def _gluon(spec: Spec, steps: list[Step], spell: Spelling, seed: int) -> Built:
    import mxnet as mx
    from mxnet.gluon import nn

    class Transpose(nn.HybridBlock):
        """A transpose people write as a block (Gluon has none): opaque to a reader."""

        def __init__(self, axes: tuple[int, ...]) -> None:
            super().__init__()
            self.axes = axes

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            return F.transpose(x, axes=self.axes)

    class Reshape(nn.HybridBlock):
        def __init__(self, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.shape = shape

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            return F.reshape(x, shape=(0, *self.shape))

    class Named(nn.Block):
        """Named attributes in the order they run; functions called in between."""

        def __init__(self, parts: list[tuple[str | None, Any]]) -> None:
            super().__init__()
            self.order = []
            for name, part in parts:
                if name is not None:
                    setattr(self, name, part)
                self.order.append(name or part)

        def forward(self, x: Any) -> Any:
            for part in self.order:
                x = getattr(self, part)(x) if isinstance(part, str) else part(x)
            return x

    mx.random.seed(seed)
    named = spell.container == "named"
    parts: list[tuple[str | None, Any]] = []
    layers: dict[int, Any] = {}
    for i, s in _plan(steps, spell):
        d = s.dims
        act = _folded(steps, spell, i)
        if s.kind == "dense":
            flattens = i > 0 and steps[i - 1].kind == "flatten" and spell.dense_flattens
            units = int(np.prod(s.inp)) if not flattens else int(np.prod(steps[i - 1].inp))
            m: Any = nn.Dense(
                s.out, activation=act, use_bias=s.bias, flatten=flattens, in_units=units
            )
        elif s.kind == "conv":
            conv = (nn.Conv1D, nn.Conv2D)[d - 1]
            m = conv(
                s.out,
                s.k,
                strides=s.stride,
                padding=s.pad,
                dilation=s.dilation,
                activation=act,
                use_bias=s.bias,
                in_channels=s.inp[0],
            )
        elif s.kind == "bn":
            m = nn.BatchNorm(axis=1, momentum=0.9, epsilon=EPS, in_channels=s.inp[0])
        elif s.kind == "ln":
            m = nn.LayerNorm(epsilon=EPS, in_channels=s.inp[0])
        elif s.kind == "act":
            if named and i not in spell.as_layer:
                parts.append((None, getattr(mx.nd, s.fn)))
                continue
            m = nn.Activation(s.fn)
        elif s.kind == "pool":
            m = getattr(nn, f"{s.fn.capitalize()}Pool{d}D")(2)
        elif s.kind == "dropout":
            m = nn.Dropout(s.rate)
        elif s.kind == "flatten":
            if spell.flatten_other:
                parts.append((f"permute{i}" if named else "", Transpose(_perm_last(d))))
            m = nn.Flatten()
        elif s.kind == "unflatten":
            if s.fn == "swapped":
                parts.append((f"reshape{i}" if named else "", Reshape(s.shape[::-1])))
                m = Transpose((0, 2, 1))
            else:
                m = Reshape(s.shape)
        else:
            raise ValueError(s.kind)
        layers[i] = m
        parts.append(((spell.names.get(i) or f"{s.kind}{i}") if named else "", m))
    if named:
        model = Named([(name or None, part) for name, part in parts])
    else:
        model = nn.Sequential()
        for _, part in parts:
            model.add(part)
    model.initialize()
    model(mx.nd.zeros((1, *spec.shape)))
    rng = np.random.default_rng([seed, 105])
    for name, p in model.collect_params().items():
        p.set_data(mx.nd.array(_value(rng, name, tuple(p.shape), 0)))

    def run(x: np.ndarray) -> np.ndarray:
        return model(mx.nd.array(x)).asnumpy()  # outside autograd.record: inference

    return Built("gluon", model, run, spell, layers)


# -- a hand check of the builders -----------------------------------------------------------
Values = dict[int, dict[str, np.ndarray]]  # step index -> PyTorch's leaf names and layouts


def reference(spec: Spec, values: Values, x: np.ndarray, steps: list[Step] | None = None) -> Any:
    """The spec's function in numpy, PyTorch's meaning, on a channels-first ``x``, with
    ``values`` (``known_values``) for every step with parameters; or the function of
    ``steps``, the spec's steps as a mutation changed them (``mutated``)."""
    acts = {
        "relu": lambda v: np.maximum(v, 0),
        "tanh": np.tanh,
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    }
    y = x.astype(np.float64)
    for i, s in enumerate(spec.steps if steps is None else steps):
        v = values.get(i, {})
        if s.kind == "dense":
            y = y @ v["weight"].T + v.get("bias", 0)
        elif s.kind == "conv":
            # 'same' at stride 2 on an even size pads 0 before, 1 after (k=3)
            sides = (0, 1) if s.pad == -1 else (s.pad, s.pad)
            mode = {"": "constant", "reflect": "reflect", "circular": "wrap"}[s.fn]
            y = np.pad(y, [(0, 0), (0, 0)] + [sides] * s.dims, mode=mode)
            s = replace(s, pad=0, inp=y.shape[1:])
            size = _after(s)[1:]
            out = np.zeros((y.shape[0], s.out, *size))
            for where in np.ndindex(*size):
                reach = s.dilation * (s.k - 1) + 1
                window = tuple(slice(p * s.stride, p * s.stride + reach, s.dilation) for p in where)
                patch = y[(slice(None), slice(None), *window)]  # (N, C, k...)
                axes = tuple(range(1, patch.ndim))
                out[(slice(None), slice(None), *where)] = np.tensordot(
                    patch, v["weight"], (axes, axes)
                )
            y = out + v.get("bias", np.zeros(s.out)).reshape(1, -1, *(1,) * s.dims)
        elif s.kind == "bn":
            shape = (1, -1, *(1,) * s.dims)
            scale = v["weight"] / np.sqrt(v["running_var"] + EPS)
            y = (y - v["running_mean"].reshape(shape)) * scale.reshape(shape)
            y = y + v["bias"].reshape(shape)
        elif s.kind == "ln":
            mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
            y = (y - mean) / np.sqrt(var + EPS) * v["weight"] + v["bias"]
        elif s.kind == "act":
            y = acts[s.fn](y)
        elif s.kind == "pool":
            size = _after(s)[1:]
            cut = y[(slice(None), slice(None), *(slice(0, 2 * n) for n in size))]
            split = cut.reshape(*cut.shape[:2], *(a for n in size for a in (n, 2)))
            axes = tuple(range(3, split.ndim, 2))
            y = split.max(axes) if s.fn == "max" else split.mean(axes)
        elif s.kind == "unflatten" and s.fn == "swapped":  # (L, C), then channels first
            y = y.reshape(y.shape[0], *s.shape[::-1]).transpose(0, 2, 1)
        elif s.kind in ("flatten", "unflatten"):
            y = y.reshape(y.shape[0], *_after(s))
        elif s.kind != "dropout":
            raise ValueError(f"no reference for {s.kind}")
    return y


def known_values(spec: Spec, seed: int) -> Values:
    """Values for every step with parameters, in PyTorch's names and layouts: distinct
    numbers, so any transposed or permuted axis shows; running variances positive."""
    rng = np.random.default_rng([seed, 13])
    out: Values = {}
    for i, s in enumerate(spec.steps):
        if s.kind == "dense":
            out[i] = {"weight": _value(rng, "w", (s.out, int(np.prod(s.inp))), 0)}
        elif s.kind == "conv":
            out[i] = {"weight": _value(rng, "w", (s.out, s.inp[0], *(s.k,) * s.dims), 0)}
        elif s.kind in ("bn", "ln"):
            c = (s.inp[0],)
            out[i] = {"weight": _value(rng, "weight", c, 0), "bias": _value(rng, "bias", c, 0)}
            if s.kind == "bn":
                out[i]["running_mean"] = _value(rng, "mean", c, 0)
                out[i]["running_var"] = _value(rng, "var", c, 0)
            continue
        else:
            continue
        if s.bias:
            out[i]["bias"] = _value(rng, "bias", (s.out,), 0)
    return out


# each framework's names for PyTorch's leaves, where they differ
NATIVE_NAMES = {
    "keras": {
        "dense": {"weight": "kernel"},
        "conv": {"weight": "kernel"},
        "bn": {
            "weight": "gamma",
            "bias": "beta",
            "running_mean": "moving_mean",
            "running_var": "moving_variance",
        },
        "ln": {"weight": "gamma", "bias": "beta"},
    },
    "linen": {
        "dense": {"weight": "kernel"},
        "conv": {"weight": "kernel"},
        "bn": {"weight": "scale", "running_mean": "mean", "running_var": "var"},
        "ln": {"weight": "scale"},
    },
    "gluon": {
        "bn": {"weight": "gamma", "bias": "beta"},
        "ln": {"weight": "gamma", "bias": "beta"},
    },
}
NATIVE_NAMES["nnx"] = NATIVE_NAMES["linen"]


def set_known(built: Built, spec: Spec, values: Values) -> Callable[[np.ndarray], np.ndarray]:
    """Write ``values`` (``known_values``) into the built model through its framework's own
    API, in its native names and layouts; returns what runs the model on them (a linen model
    gets new variables). A dense layer after a flatten takes its input axis in the order the
    model flattens: channels last in Keras and Flax unless the spelling permutes first, and
    the other way round in PyTorch and Gluon."""
    fw, last = built.framework, CHANNELS_LAST[built.framework]
    native: dict[int, dict[str, np.ndarray]] = {}
    for i, leaves in values.items():
        s, leaves = spec.steps[i], dict(leaves)
        w = leaves.get("weight")
        if s.kind == "dense" and i and spec.steps[i - 1].kind == "flatten":
            inp = spec.steps[i - 1].inp
            if last != built.spelling.flatten_other:  # flattened channels last
                w = w.reshape(-1, *inp).transpose(0, *range(2, len(inp) + 1), 1)
                w = w.reshape(w.shape[0], -1)
        if last and s.kind in ("dense", "conv"):  # kernels (in, out) and (k..., in, out)
            w = w.T if s.kind == "dense" else w.transpose(*range(2, w.ndim), 1, 0)
        leaves["weight"] = w
        names = NATIVE_NAMES.get(fw, {}).get(s.kind, {})
        native[i] = {
            names.get(k, k): np.ascontiguousarray(a, np.float32) for k, a in leaves.items()
        }
    if fw == "linen":
        import jax

        tree = built.model
        variables = jax.tree_util.tree_map(lambda a: a, tree.variables)  # a copy of the dicts
        for i, leaves in native.items():
            for name, a in leaves.items():
                collection = "batch_stats" if name in ("mean", "var") else "params"
                variables[collection][built.layers[i]][name] = a

        def run(x: np.ndarray) -> np.ndarray:
            y = tree.native.apply(variables, to_native(x, "linen"))
            return to_canonical(np.asarray(y), "linen")

        return run
    for i, leaves in native.items():
        m = built.layers[i]
        for name, a in leaves.items():
            if fw == "torch":
                import torch

                with torch.no_grad():
                    getattr(m, name).copy_(torch.from_numpy(a))
            elif fw == "keras":
                getattr(m, name).assign(a)
            elif fw == "nnx":
                getattr(m, name)[...] = a
            else:
                import mxnet as mx

                getattr(m, name).set_data(mx.nd.array(a))
    return built.run


def check_builder(framework: str, spec: Spec, mutation: str = "") -> None:
    """Assert that ``framework``'s build of ``spec`` computes the spec's function (as
    ``mutation`` changed it): known values set through the framework's own API, against
    ``reference`` in numpy."""
    built = build(framework, spec, spec.seed, mutation, named=mutation == "swap_names")
    values = known_values(spec, spec.seed)
    x = random_input(spec)
    want = reference(spec, values, x, mutated(spec, framework, mutation))
    if mutation not in ("", "swap_names"):  # the mutation changes the function: no twin
        assert not close(want, reference(spec, values, x)), (str(spec), mutation)
    got = set_known(built, spec, values)(x)
    assert close(got, want), (str(spec), str(built.spelling), float(np.abs(got - want).max()))


def hand_spellings(framework: str, name: str) -> list[Spec]:
    """The hand spec ``name`` once per spelling ``framework``'s builder draws for it (over 40
    seeds): containers, folded activations, both flatten orders, Gluon's flattening Dense."""
    seen, out = set(), []
    for seed in range(40):
        spec = hand_spec(name, seed)
        spell = spelling(framework, spec)
        key = (
            spell.container,
            spell.auto_names,
            spell.flatten_other,
            bool(spell.fold),
            spell.dense_flattens,
        )
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


HAND_SPECS = {
    # features -> dense -> act (folded in Keras and Gluon, or a layer) -> dense
    "mlp": ((3,), [("dense", {"out": 4}), ("act", {"fn": "tanh"}), ("dense", {"out": 2})]),
    # a 2-d conv, then a flatten in either order: the dense layer after it tells them apart
    "cnn": (
        (2, 4, 3),
        [
            ("conv", {"out": 3, "k": 3, "pad": 1}),
            ("act", {"fn": "relu"}),
            ("flatten", {}),
            ("dense", {"out": 2}),
        ],
    ),
    # features -> (C, L) -> a 1-d conv -> flatten -> dense
    "decoder": (
        (3,),
        [
            ("dense", {"out": 6}),
            ("unflatten", {"shape": (2, 3)}),
            ("conv", {"out": 2, "k": 2}),
            ("flatten", {}),
            ("dense", {"out": 2}),
        ],
    ),
}


def hand_spec(name: str, seed: int) -> Spec:
    """One of ``HAND_SPECS`` as a ``Spec`` (``seed`` draws its spelling)."""
    shape, raw = HAND_SPECS[name]
    steps: list[Step] = []
    for n, (kind, kw) in enumerate(raw):
        inp = _after(steps[-1]) if steps else shape
        named = kind in ("dense", "conv")
        steps.append(Step(kind, inp, name=f"{kind}{n}" if named else "", **kw))
    return Spec(seed, shape, tuple(steps), name)


# -- the counts -----------------------------------------------------------------------------
MODES = ("strict", "check")
# Only running the models can tell these destinations from twins: the names a path match
# pairs by are what a checkpoint load reads too. Under plain strict they are counted apart
# (not asserted); with check= they are held to the property like every other port.
ONLY_CHECK_SEES = ("swap_names",)


@dataclass
class Tally:
    """What one ordered pair of frameworks did in one ``mode`` (``strict``: ``ut.port(src,
    dst)``; ``check``: the same with ``check=``): ports ``tried``, ``equal`` (ported, same
    outputs on the check's input and on a held-out one), ``refused`` (a ``PortError``) by the
    kind of its first reason, ``failed`` (ported with different outputs, a refusal that wrote
    something, a checked port without a passing check), ``errors`` (any other exception),
    each with one example; the same split for twins (``twins``, ``twins_equal``,
    ``twins_refused``: every refused twin and its reason) and for destinations that are no
    twin (``mutated``: by mutation); ``unseen``: under strict, the outcomes of the mutations
    only a check can see (``ONLY_CHECK_SEES``), not asserted."""

    src: str
    dst: str
    mode: str = "strict"
    tried: int = 0
    equal: int = 0
    twins: int = 0
    twins_equal: int = 0
    twins_refused: list[str] = field(default_factory=list)  # and no known limit explains it
    explained: dict[str, int] = field(default_factory=dict)  # twins refused: KNOWN_LIMITS
    refused: dict[str, int] = field(default_factory=dict)
    refused_example: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mutated: dict[str, dict[str, int]] = field(default_factory=dict)
    unseen: dict[str, int] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)  # every port: what, then what it did
    seconds: float = 0.0

    @property
    def pair(self) -> str:
        return f"{self.src} -> {self.dst}"

    def row(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "mode": self.mode,
            "tried": self.tried,
            "ported_equal": self.equal,
            "refused": sum(self.refused.values()),
            "FAILED": len(self.failed),
            "errors": len(self.errors),
            "twins": self.twins,
            "twins_ported": self.twins_equal,
            "twins_refused_unexplained": self.twins_refused,
            "twins_refused_known_limits": self.explained,
            "refused_by_kind": dict(sorted(self.refused.items(), key=lambda kv: -kv[1])),
            "refused_examples": self.refused_example,
            "mutations": self.mutated,
            "only_check_sees": self.unseen,
            "failed_examples": self.failed,
            "error_examples": self.errors,
            "seconds": round(self.seconds, 1),
            "outcomes": self.outcomes,
        }


def reason_kind(message: str) -> str:
    """The kind of a refusal: its first reason (the first line after the heading, or the
    heading), with paths, numbers, quoted values and details in parentheses taken out, cut
    at its first ``;`` or sentence end, so refusals for the same reason on
    different layers count as one; a setting that differs is ``setting differs: <name>``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = lines[1] if len(lines) > 1 else lines[0] if lines else "(empty)"
    text = re.sub(r"^- ", "", text)
    text = re.sub(r"'[^'\s]*'|\"[^\"\s]*\"|`[^`\s]*`", "'..'", text)  # not the ' of "layer's"
    for _ in range(4):  # nested parentheses (a shape inside a layer's description), inner first
        text = re.sub(r"\([^()]*\)|\{[^{}]*\}|\[[^\[\]]*\]", "<..>", text)
    text = text.replace("<..>", "(..)")
    text = re.sub(r"\b[\w.]*\d[\w.]*\b", "#", text)
    text = re.sub(r"\b(torch|keras|linen|nnx|gluon|flax|mxnet)\b", "<fw>", text)
    setting = re.match(r"^[^:]*: (\w+) is .* in the <fw> (layer|one)", text)
    if setting:
        return f"setting differs: {setting.group(1)}"
    return re.sub(r"\s+", " ", text.split(";")[0].split(". ")[0])[:140]


# float32's sqrt(eps): two computations of one function in float32 by different sequences of
# operations. Flax's LayerNorm takes the variance as E[x^2] - E[x]^2: over 2 features it is
# 2.2e-4 off the exact value (spec 12), where PyTorch's is 1e-7 off; a wrong port in this suite
# is off by 0.1 or more.
TOL = float(np.sqrt(np.finfo(np.float32).eps))


def close(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal within float32 rounding: ``rtol=TOL``, ``atol=TOL * max(1, max|want|)``."""
    scale = max(1.0, float(np.abs(want).max()))
    return got.shape == want.shape and np.allclose(got, want, rtol=TOL, atol=TOL * scale)


def mutations(specs: list[Spec], dst: str) -> dict[int, list[str]]:
    """The mutations each spec's destination is built with besides its twin (spec seed ->
    mutations), for the specs where one applies: ``swap_names`` wherever it applies (same-shaped
    dense layers are rare), and of the others the kind used least so far, so that every kind
    that applies to ``dst`` comes up."""
    used = dict.fromkeys(MUTATIONS, 0)
    out: dict[int, list[str]] = {}
    for spec in specs:
        can = applicable(spec, dst)
        picked = ["swap_names"] if "swap_names" in can else []
        others = [m for m in can if m != "swap_names"]
        if others:
            picked.append(min(others, key=lambda m: used[m]))
            used[picked[-1]] += 1
        if picked:
            out[spec.seed] = picked
    return out


INPUTS = (0, 1)  # random_input seeds: the check's input, then one the port never saw
_SOURCES: dict[tuple[str, int, bool], tuple[Built, list[np.ndarray]]] = {}


def source(framework: str, spec: Spec, named: bool) -> tuple[Built, list[np.ndarray]]:
    """The source model (built once, never written: ``ut.port`` only reads it) and its own
    outputs on the spec's inputs (``INPUTS``)."""
    key = (framework, spec.seed, named)
    if key not in _SOURCES:
        built = build(framework, spec, seed=10 * spec.seed + 1, named=named)
        _SOURCES[key] = built, [built.run(random_input(spec, n)) for n in INPUTS]
    return _SOURCES[key]


def check_inputs(spec: Spec, src: str, dst: str) -> Any:
    """What ``check=`` gets: the spec's first input in the source's layout, the same input in
    the destination's (channels last in Keras and Flax), and the destination's outputs moved
    into the source's layout."""
    import unitree as ut

    x = random_input(spec, INPUTS[0])

    def outputs(y: Any) -> np.ndarray:
        return to_native(to_canonical(np.asarray(y), dst), src)

    return ut.Check(to_native(x, src), dst_inputs=to_native(x, dst), dst_outputs=outputs)


# What a twin may be refused for even with check= (the library's known limits: each by the
# spelling that meets it and the reason it is refused for). Any other refusal of a twin with
# check= fails the test; these are counted and reported by name.
KNOWN_LIMITS = {
    "keras ZeroPadding": (
        "Keras pads the conv in a ZeroPadding layer before a 'valid' conv (PyTorch's padding=1 "
        "as Keras writes it): the port compares the conv's own padding, 0 against 1 "
        "(unitree._settings.fold_padding would take the ZeroPadding in; ut.port does not call "
        "it), and a setting that differs is refused even with check="
    ),
    "linen compact name=": (
        "a linen @nn.compact submodule given its own name= that is no literal in the class's "
        "source (here: make(name)) shows no class (adapters/linen.py): no kind; it fits a "
        "known kind only copied as stored, and a square kernel stored (in, out) against "
        "PyTorch's (out, in) is then refused by the check"
    ),
    "inputs cannot tell": (
        "the check's one input cannot tell the candidate layouts apart (a LayerNorm over two "
        "features keeps only their order, a map pooled to one position): several layouts "
        "reproduce the outputs, and the port refuses rather than pick one"
    ),
    "two opaque layouts": (
        "one model reshapes into a feature map as PyTorch does (channels first) and flattens "
        "channels last, each through an opaque step: the check tries one candidate for all "
        "of a model's unknown layouts (unitree._port._choices), never the mixed one"
    ),
}


def _zero_padding(framework: str, spec: Spec, spell: Spelling) -> bool:
    """Keras's build pads a conv with a ZeroPadding layer."""
    return framework == "keras" and any(
        s.kind == "conv" and s.pad > 0 and s.dilation == 1 and spell.pad_style.get(i) != "same"
        for i, s in enumerate(spec.steps)
    )


def _mixed_layouts(framework: str, spec: Spec, spell: Spelling) -> bool:
    """The build reshapes features into a map channels first (every twin's unflatten means
    PyTorch's (C, L)) and flattens a map channels last."""
    kinds = [s.kind for s in spec.steps]
    flat_last = CHANNELS_LAST[framework] != spell.flatten_other
    return "unflatten" in kinds and "flatten" in kinds and flat_last


def explained(spec: Spec, src: Built, dst: Built, kind: str) -> str:
    """The ``KNOWN_LIMITS`` entry that explains a twin refused for ``kind`` (a ``reason_kind``),
    or ""."""
    sides = ((src.framework, src.spelling), (dst.framework, dst.spelling))
    if kind == "setting differs: padding" and any(_zero_padding(f, spec, sp) for f, sp in sides):
        return "keras ZeroPadding"
    compact = any(
        f == "linen" and sp.container == "compact" and not sp.auto_names for f, sp in sides
    )
    if compact and re.search(
        r"no (source|destination) layer matches it|^The destination's outputs differ", kind
    ):
        return "linen compact name="
    if "cannot be proven by these inputs" in kind:
        return "inputs cannot tell"
    mixed = any(_mixed_layouts(f, spec, sp) for f, sp in sides)
    if mixed and kind.startswith("The destination's outputs differ"):
        return "two opaque layouts"
    return ""


def port_once(tally: Tally, spec: Spec, mutation: str) -> None:
    """Port ``spec`` from ``tally.src`` into a fresh ``tally.dst`` (mutated if asked) with
    ``ut.port(src, dst)`` (``check=check_inputs(...)`` in the check mode) and count what
    happened against the source's own outputs, on the check's input and on a held-out one:
    equal, a ``PortError`` that left the destination's outputs as they were, or a failure."""
    import unitree as ut

    checked = tally.mode == "check"
    named = mutation == "swap_names"  # names swapped mean something only on named layers
    src, want = source(tally.src, spec, named)
    dst = build(tally.dst, spec, seed=10 * spec.seed + 2, mutation=mutation, named=named)
    xs = [random_input(spec, n) for n in INPUTS]
    before = dst.run(xs[0])
    what = f"{spec}; {tally.src}: {src.spelling}; {tally.dst}: {dst.spelling}"
    unseen = mutation in ONLY_CHECK_SEES and not checked
    tally.tried += 1
    tally.twins += not mutation
    counts = tally.unseen if unseen else tally.mutated.setdefault(mutation, {}) if mutation else {}

    def count(outcome: str, key: str) -> None:
        counts[key] = counts.get(key, 0) + 1
        tally.outcomes.append(f"{what} => {outcome}")

    if close(before, want[0]):  # the destination computes it already: the port proves nothing
        tally.errors.append(f"degenerate (outputs equal before the port): {what}")
        return
    check = check_inputs(spec, tally.src, tally.dst) if checked else None
    try:
        report = ut.port(src.model, dst.model, check=check)
    except ut.PortError as e:
        kind = reason_kind(str(e))
        tally.refused[kind] = tally.refused.get(kind, 0) + 1
        tally.refused_example.setdefault(kind, f"{what}\n{e}")
        if not mutation and (why := explained(spec, src, dst, kind)):
            tally.explained[why] = tally.explained.get(why, 0) + 1
        elif not mutation:
            tally.twins_refused.append(f"{kind} -- {what}")
        count(f"refused: {kind}", "refused")
        if not np.array_equal(dst.run(xs[0]), before):
            tally.failed.append(f"refused, but the destination's outputs changed: {what}")
        return
    except Exception as e:  # not a named refusal: a fault of its own
        tally.errors.append(f"{type(e).__name__}: {e} -- {what}")
        count(f"error: {type(e).__name__}", "errors")
        return
    finally:  # a port reads its source: the same outputs after it, bit for bit
        if not np.array_equal(src.run(xs[0]), want[0]):
            tally.failed.append(f"the source's outputs changed: {what}")
    got = [dst.run(x) for x in xs]
    if all(close(g, w) for g, w in zip(got, want)):
        if checked and (report.check is None or not report.check.ok):
            tally.failed.append(f"ported with check= but no passing check in the report: {what}")
        tally.equal += 1
        tally.twins_equal += not mutation
        count("equal", "equal")
        return
    diffs = [
        float(np.abs(g - w).max()) if g.shape == w.shape else np.nan for g, w in zip(got, want)
    ]
    off = "off by " + " and ".join(f"{d:.3g}" for d in diffs) + " (check input, held-out input)"
    if unseen:
        count(f"ported with outputs {off}: only check= can see it", "ported, different")
        return
    notes = "; ".join(f"{p.src} -> {p.dst}: {p.note}" for p in report.pairs if p.note)
    tally.failed.append(f"ported with outputs {off}: {what} (the port's notes: {notes or '-'})")
    count(f"FAILED, {off}", "FAILED")


def run_pair(src: str, dst: str, specs: list[Spec], mode: str = "strict") -> Tally:
    """Port every spec (its twin, and the mutations ``mutations`` picks) from ``src`` into
    ``dst`` in ``mode`` (``MODES``), and count (``assert_pair`` then asserts on the counts)."""
    tally = Tally(src, dst, mode)
    started = time.monotonic()
    mutated = mutations(specs, dst)
    for spec in specs:
        for mutation in ["", *mutated.get(spec.seed, [])]:
            port_once(tally, spec, mutation)
    tally.seconds = time.monotonic() - started
    return tally


def summary(tally: Tally) -> str:
    """One line: a pair's counts."""
    return (
        f"{tally.mode}: {tally.pair}: tried {tally.tried}, ported equal {tally.equal}, refused "
        f"{sum(tally.refused.values())}, FAILED {len(tally.failed)}, errors {len(tally.errors)}, "
        f"twins ported {tally.twins_equal}/{tally.twins}"
        + "".join(f", {n} refused: {why}" for why, n in tally.explained.items())
        + f" ({tally.seconds:.0f} s)"
    )


def assert_pair(tally: Tally, floor: float) -> None:
    """The property on one pair's counts, printed first: nothing FAILED, nothing but a
    ``PortError`` came out of ``ut.port``, and at least ``floor`` of the twins ported (the
    test cannot pass by refusing everything). In the check mode, where the outputs prove a
    twin's port, every twin ports or is refused for a ``KNOWN_LIMITS`` reason (pass
    ``floor=1``): only a destination that is no twin may be refused otherwise."""
    print("\n" + summary(tally))
    problems = [*tally.failed, *tally.errors]
    assert not problems, f"{len(tally.failed)} FAILED, {len(tally.errors)} errors:\n" + "\n".join(
        problems
    )
    if tally.mode == "check":
        assert not tally.twins_refused, (
            f"check: {len(tally.twins_refused)} of {tally.twins} twins refused for no known "
            "limit:\n" + "\n".join(tally.twins_refused)
        )
    ported = tally.twins_equal + (sum(tally.explained.values()) if tally.mode == "check" else 0)
    assert ported >= floor * tally.twins, (
        f"{tally.mode}: only {tally.twins_equal} of {tally.twins} twins ported (floor "
        f"{floor:.0%}); refusals by kind {tally.refused}"
    )


def write_report(path: str, label: str, tallies: list[Tally]) -> None:
    """The counts of ``tallies`` into ``path``, under ``label`` (the environment: one pair
    may run in two, Keras on another backend), what the file holds for other labels kept:
    JSON (``.json``: ``{label: {"seconds": s, "pairs": {"strict: torch -> keras": row}}}``,
    each row ``Tally.row()``, every port's outcome included) or markdown (a section per
    label)."""
    p = Path(path)
    seconds = sum(t.seconds for t in tallies)
    if p.suffix == ".json":
        data = json.loads(p.read_text()) if p.exists() else {}
        rows = {f"{t.mode}: {t.pair}": t.row() for t in tallies}
        data[label] = {"seconds": round(seconds, 1), "pairs": rows}
        p.write_text(json.dumps(data, indent=1))
        return
    sections: dict[str, str] = {}
    if p.exists():
        for chunk in re.split(r"^## ", p.read_text(), flags=re.M)[1:]:
            title, _, body = chunk.partition("\n")
            sections[title.strip()] = body
    sections[label] = "\n" + table(tallies) + f"\n\n({seconds:.0f} s)\n"
    p.write_text("".join(f"## {t}\n{b}\n" for t, b in sections.items()))


def table(tallies: list[Tally]) -> str:
    """The counts as a markdown table, then each pair's refusals by kind and its failures."""
    head = (
        "| mode | pair | tried | ported, equal | refused | FAILED | errors | twins ported / twins "
        "| twins refused: known limit | twins refused: other | only check= sees (swapped names) |"
    )
    lines = [head, "|" + "---|" * 11]
    for t in tallies:
        lines.append(
            f"| {t.mode} | {t.pair} | {t.tried} | {t.equal} | {sum(t.refused.values())} | "
            f"{len(t.failed)} | {len(t.errors)} | {t.twins_equal} / {t.twins} | "
            f"{', '.join(f'{k} {n}' for k, n in t.explained.items()) or '-'} | "
            f"{len(t.twins_refused)} | "
            f"{', '.join(f'{k} {n}' for k, n in t.unseen.items()) or '-'} |"
        )
    for t in tallies:
        if t.refused or t.failed or t.errors:
            lines.append(f"\n{t.mode}: {t.pair}:")
        for kind, n in sorted(t.refused.items(), key=lambda kv: -kv[1]):
            lines.append(f"  refused {n}x: {kind}")
        for what, counts in t.mutated.items():
            lines.append(f"  mutation {what}: {counts}")
        lines += [f"  FAILED: {f}" for f in t.failed]
        lines += [f"  ERROR: {e}" for e in t.errors]
    return "\n".join(lines)
