"""The tree picture (the deck's drawing of a model) and the summary table."""

from __future__ import annotations

import math
from typing import Any

from ._dtypes import numpy_dtype
from ._paths import keystr
from ._read import View


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "(uninitialized)" if shape is None else str(tuple(shape))


Branch = tuple[str, list["Branch"]]  # (text, the branches below it)


def render(label: str, branches: list[Branch]) -> str:
    """``label`` and the branches below it, drawn with box characters."""
    lines = [label]

    def visit(items: list[Branch], indent: str) -> None:
        for i, (text, below) in enumerate(items):
            last = i == len(items) - 1
            lines.append(indent + ("└─ " if last else "├─ ") + text)
            visit(below, indent + ("   " if last else "│  "))

    visit(branches, "")
    return "\n".join(lines)


def draw(view: View) -> str:
    """The deck's picture of the node of ``view``: native class names,
    canonical leaves, each tied leaf marked after its first appearance.

    >>> print(tree)
    Sequential
    ├─ 0: Linear
    │  ├─ weight (8, 4)
    │  └─ bias (8,)
    ├─ 1: ReLU (no params)
    └─ 2: Linear
       ├─ weight (1, 8)
       └─ bias (1,)
    """
    adapter = view.adapter
    first: dict[int, str] = {}  # id(Param) -> the path it was first drawn at

    def branches(native: Any, pre: str) -> list[Branch]:
        out: list[Branch] = []
        for name, _, p in view.own_leaves(native):
            text = f"{name} {shape_text(p.shape)}" + (" [buffer]" if p.is_buffer else "")
            if id(p) in first:
                text += f" = {first[id(p)]}"
            else:
                first[id(p)] = pre + name
            out.append((text, []))
        for seg, child in adapter.children(native):
            below = branches(child, f"{pre}{seg}.")
            out.append(
                (f"{seg}: {adapter.type_name(child)}" + ("" if below else " (no params)"), below)
            )
        return out

    return render(adapter.type_name(view.module), branches(view.module, ""))


class Summary:
    """``ut.summary(tree)``: one row per parameter and buffer (ties once), then totals.

    ``frozen`` marks a parameter the framework computes no gradient for
    (``requires_grad=False``, Keras's ``trainable=False``...). ``str(summary)``
    and the REPL show a plain-text table; with ``rich`` installed,
    ``rich.print(summary)`` draws it as a rich table.
    """

    columns = ("path", "type", "shape", "dtype", "count", "frozen", "tied with")

    def __init__(self, view: View) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.params = self.frozen = self.buffers = self.bytes = 0
        owners = {path: view.adapter.type_name(native) for path, native in view.modules()}
        for paths, p in view.unique():
            shape = p.shape
            count = 0 if shape is None else math.prod(shape)
            kind = owners.get(paths[0][:-1], "")
            frozen = not p.is_buffer and not p.trainable
            if p.is_buffer:
                kind += " [buffer]"
                self.buffers += count
            else:
                self.params += count
                self.frozen += count if frozen else 0
            self.bytes += count * numpy_dtype(p.dtype).itemsize
            self.rows.append(
                (
                    keystr(paths[0]),
                    kind,
                    shape_text(shape),
                    p.dtype,
                    f"{count:,}",
                    "frozen" if frozen else "",
                    ", ".join(map(keystr, paths[1:])),
                )
            )

    @property
    def footer(self) -> str:
        frozen = f" ({self.frozen:,} frozen)" if self.frozen else ""
        return (
            f"parameters: {self.params:,}{frozen}   buffers: {self.buffers:,}   "
            f"size: {_human(self.bytes)}"
        )

    def __str__(self) -> str:
        table = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.columns))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, self.footer])

    __repr__ = __str__

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(*self.columns, caption=self.footer)
        for row in self.rows:
            table.add_row(*row)
        return table


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError
