"""A framework-free adapter over plain Python objects and numpy arrays.

It lets the core be tested in an environment with no framework at all. By
default it plays the part of a channels-last backend ("flax": dense layers
hold a (in, out) kernel), so the canonical-layout tables are exercised too;
``FakeAdapter("torch")`` plays a backend whose leaves are already canonical
and ``FakeAdapter("keras")`` another channels-last one, so two fakes can
stand for two frameworks in ``ut.port``.
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from unitree import Adapter, Leaf
from unitree.layouts import CHAIN, FLATTEN, KEEP, UNKNOWN, Step

Kernel = Union[int, tuple[int, ...]]


_NORM = {"eps": 1e-5, "scale": True, "center": True}
_CONV = {
    "padding": 0,
    "padding_mode": "zeros",
    "stride": 1,
    "dilation": 1,
    "groups": 1,
    "input_dilation": 1,
    "kernel_mask": False,
}
_RECURRENT = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",
    "reverse": False,
    "stateful": False,
}
# Every setting of unitree._settings.VOCABULARY, per kind, at PyTorch's defaults (an int
# stands for the same value along every spatial axis).
NEUTRAL: dict[str, dict[str, Any]] = {
    "conv": _CONV,
    "depthwise_conv": _CONV,
    "conv_transpose": {**_CONV, "output_padding": 0},
    "embedding": {"max_norm": None, "mask_zero": False},
    "layer_norm": {**_NORM, "axes": (-1,), "rms_scaling": False},
    "batch_norm": {**_NORM, "momentum": 0.1},
    "group_norm": {**_NORM, "groups": 1},
    "attention": {
        "num_heads": 1,
        "add_zero_attn": False,
        "attention_axes": None,
        "attention_fn": "dot_product_attention",
        "gated": False,
    },
    "lstm": _RECURRENT,
    "gru": {**_RECURRENT, "reset_after": True},
}


class Mod:
    def __init__(
        self,
        type_name: str,
        kind: str | None = None,
        *,
        settings: dict[str, Any] | None = None,
        step: Step | None = None,
        **items: Any,
    ) -> None:
        self.type_name, self.kind = type_name, kind
        # what FakeAdapter.settings() reports: the kind's whole vocabulary (PyTorch's
        # defaults), as a real adapter does, then what the test says
        self.settings = {**NEUTRAL.get(kind or "", {}), **(settings or {})}
        self.step = step  # what FakeAdapter.step() reports, if not known by its type
        self.leaves: dict[str, tuple[np.ndarray, bool]] = {}
        self.children: dict[str, Mod] = {}
        for name, item in items.items():
            if isinstance(item, Mod):
                self.children[name] = item
            else:
                self.leaves[name] = (item, True)

    def buffer(self, name: str, value: np.ndarray) -> Mod:
        self.leaves[name] = (value, False)
        return self


class FakeAdapter(Adapter):
    name = (
        "flax"  # so the dense rules of the layout table apply: kernel (in, out) -> weight (out, in)
    )

    def __init__(self, backend: str = "flax") -> None:
        self.name = backend  # the layout rules and codecs of this backend apply
        self.writes = 0
        self.fail_after: int | None = None  # fail once, on the write after this many
        self.frozen: set[int] = set()  # ids of the arrays of frozen parameters

    def children(self, module: Mod) -> list[tuple[str, Mod]]:
        return list(module.children.items())

    def leaves(self, module: Mod) -> list[Leaf]:
        return [Leaf(n, a, param) for n, (a, param) in module.leaves.items()]

    def leaf(self, module: Mod, name: str) -> np.ndarray:
        return module.leaves[name][0]

    def type_name(self, module: Mod) -> str:
        return module.type_name

    def kind(self, module: Mod) -> str | None:
        return module.kind

    def settings(self, module: Mod) -> dict[str, Any]:
        return dict(module.settings)

    def step(self, module: Mod) -> Step:
        """A "Sequential" calls its children in order; ``flatten()`` flattens as Keras's
        ``Flatten``; "relu" keeps the layout; a module made with ``step=`` says its own;
        anything else is a call no one can see through."""
        if module.step is not None:
            return module.step
        if module.kind == "flatten":
            return Step(FLATTEN)
        return _STEPS.get(module.type_name, Step(UNKNOWN))

    def shape(self, leaf: np.ndarray) -> tuple[int, ...]:
        return leaf.shape

    def dtype(self, leaf: np.ndarray) -> str:
        return str(leaf.dtype)

    def device(self, leaf: np.ndarray) -> str:
        return "cpu"

    def trainable(self, leaf: np.ndarray) -> bool:
        return id(leaf) not in self.frozen

    def read(self, leaf: np.ndarray) -> np.ndarray:
        return leaf

    def write(self, leaf: np.ndarray, value: np.ndarray, index: Any = None) -> None:
        if self.fail_after is not None and self.writes >= self.fail_after:
            self.fail_after = None  # one failure, like a framework error halfway through
            raise RuntimeError("injected failure")
        self.writes += 1
        leaf[... if index is None else index] = value

    def share(self, leaf: Any, dst_owner: Mod, dst_name: str) -> None:
        dst_owner.leaves[dst_name] = (leaf, dst_owner.leaves[dst_name][1])


_STEPS = {"Sequential": Step(CHAIN), "relu": Step(KEEP)}


def dense(n_in: int, n_out: int, seed: int, backend: str = "flax", dtype: Any = np.float32) -> Mod:
    """A dense layer: kernel (in, out) natively (stored after its bias, to test the canonical
    order), or, for "torch", weight (out, in) then bias."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((n_in, n_out)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    if backend == "torch":
        return Mod("Linear", "dense", weight=np.ascontiguousarray(kernel.T), bias=bias)
    return Mod("Dense", "dense", bias=bias, kernel=kernel)


def conv(n_in: int, n_out: int, k: Kernel, seed: int, backend: str = "flax") -> Mod:
    """A conv layer: kernel (*k, in, out) channels-last (flax, keras), weight (out, in, *k) for
    "torch"; k is an int (1-D) or a tuple of kernel sizes."""
    ks = (k,) if isinstance(k, int) else tuple(k)
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(n_out).astype(np.float32)
    if backend == "torch":
        weight = rng.standard_normal((n_out, n_in, *ks)).astype(np.float32)
        return Mod("Conv", "conv", weight=weight, bias=bias)
    kernel = rng.standard_normal((*ks, n_in, n_out)).astype(np.float32)
    return Mod("Conv", "conv", kernel=kernel, bias=bias)


def flatten() -> Mod:
    """A layer without leaves that flattens its input (what a dense layer after a conv reads)."""
    return Mod("Flatten", "flatten")


def mlp(shared: bool = False, backend: str = "flax", seed: int = 0, dtype: Any = np.float32) -> Mod:
    """Dense(4->8), relu, Dense(8->8) [, relu, the same Dense again], relu, Dense(8->1); another
    ``seed`` gives other values."""
    mid = dense(8, 8, seed + 2, backend, dtype)
    layers = [
        dense(4, 8, seed + 1, backend, dtype),
        Mod("relu"),
        mid,
        Mod("relu"),
        mid if shared else dense(8, 8, seed + 3, backend, dtype),
        Mod("relu"),
        dense(8, 1, seed + 4, backend, dtype),
    ]
    return Mod("Sequential", **{str(i): m for i, m in enumerate(layers)})


def leaf(model: Mod, path: str) -> np.ndarray:
    """The native array at ``path`` ("2.kernel", "rnn.cell.bias")."""
    *mods, name = path.split(".")
    for seg in mods:
        model = model.children[seg]
    return model.leaves[name][0]


def values(model: Mod) -> dict[str, bytes]:
    """{path: raw bytes} of every native leaf: to prove that nothing was written."""
    out: dict[str, bytes] = {}

    def visit(module: Mod, prefix: str) -> None:
        for name, (a, _) in module.leaves.items():
            out[prefix + name] = a.tobytes()
        for seg, child in module.children.items():
            visit(child, f"{prefix}{seg}.")

    visit(model, "")
    return out


def lstm(n_in: int, hidden: int, seed: int, backend: str = "flax") -> Mod:
    """An LSTM layer: "torch" holds weight_ih_l0 (4H, in), weight_hh_l0 (4H, H) and both
    biases; "keras" its cell's kernel (in, 4H), recurrent_kernel (H, 4H) and one bias under
    ``cell``; "flax" is linen's LSTMCell: one dense per gate, ii..io without bias on the
    input, hi..ho with bias on the state."""
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if backend == "torch":
        return Mod(
            "LSTM",
            "lstm",
            weight_ih_l0=r(4 * hidden, n_in),
            weight_hh_l0=r(4 * hidden, hidden),
            bias_ih_l0=r(4 * hidden),
            bias_hh_l0=r(4 * hidden),
        )
    if backend == "keras":
        cell = Mod(
            "LSTMCell",
            kernel=r(n_in, 4 * hidden),
            recurrent_kernel=r(hidden, 4 * hidden),
            bias=r(4 * hidden),
        )
        return Mod("LSTM", "lstm", cell=cell)
    gates = {f"i{g}": Mod("Dense", "dense", kernel=r(n_in, hidden)) for g in "ifgo"}
    for g in "ifgo":
        gates[f"h{g}"] = Mod("Dense", "dense", kernel=r(hidden, hidden), bias=r(hidden))
    return Mod("LSTMCell", "lstm", **gates)
