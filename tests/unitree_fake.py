"""A framework-free adapter over plain Python objects and numpy arrays.

It lets the core be tested in an environment with no framework at all, and
it plays the part of a channels-last backend ("flax" dense layers hold a
(in, out) kernel), so the canonical-layout tables are exercised too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unitree import Adapter, Leaf


class Mod:
    def __init__(self, type_name: str, kind: str | None = None, **items: Any) -> None:
        self.type_name, self.kind = type_name, kind
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

    def __init__(self) -> None:
        self.writes = 0
        self.fail_after: int | None = None  # fail once, on the write after this many

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

    def shape(self, leaf: np.ndarray) -> tuple[int, ...]:
        return leaf.shape

    def dtype(self, leaf: np.ndarray) -> str:
        return str(leaf.dtype)

    def device(self, leaf: np.ndarray) -> str:
        return "cpu"

    def trainable(self, leaf: np.ndarray) -> bool:
        return True

    def read(self, leaf: np.ndarray) -> np.ndarray:
        return leaf

    def write(self, leaf: np.ndarray, value: np.ndarray, index: Any = None) -> None:
        if self.fail_after is not None and self.writes >= self.fail_after:
            self.fail_after = None  # one failure, like a framework error halfway through
            raise RuntimeError("injected failure")
        self.writes += 1
        leaf[... if index is None else index] = value

    def share(self, src_owner: Mod, src_name: str, dst_owner: Mod, dst_name: str) -> None:
        dst_owner.leaves[dst_name] = src_owner.leaves[src_name]


def dense(n_in: int, n_out: int, seed: int) -> Mod:
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((n_in, n_out)).astype(np.float32)
    return Mod("Dense", "dense", bias=rng.standard_normal(n_out).astype(np.float32), kernel=kernel)


def mlp(shared: bool = False) -> Mod:
    """Dense(4->8), relu, Dense(8->8) [, relu, the same Dense again], relu, Dense(8->1)."""
    mid = dense(8, 8, 2)
    layers = [
        dense(4, 8, 1),
        Mod("relu"),
        mid,
        Mod("relu"),
        mid if shared else dense(8, 8, 3),
        Mod("relu"),
        dense(8, 1, 4),
    ]
    return Mod("Sequential", **{str(i): m for i, m in enumerate(layers)})
