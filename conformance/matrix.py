"""Run the cases and draw the matrix: case x backend x device, pass / fail / not available here."""

from __future__ import annotations

import json
import traceback
from typing import Callable, NamedTuple

from . import backends, cases
from .builder import Builder

COLUMNS = ("cpu", "gpu")


class Cell(NamedTuple):
    case: str
    backend: str
    device: str  # "cpu" or "gpu": the matrix column
    status: str  # "pass", "fail", "not available here"
    detail: str  # the device that ran it, or the reason


def run(names: list[str], device: str | None = None, strict: bool = True) -> list[Cell]:
    """Every case on every backend in ``names`` and every device it sees (or only ``device``).

    ``strict``: a backend that fails to import raises; otherwise its cells
    say "not available here" with the reason.
    """
    cells: list[Cell] = []
    for name in names:
        try:
            b = backends.load(name)
        except ImportError as e:
            if strict:
                raise
            cells += [u for col in COLUMNS for u in _unavailable(name, col, str(e))]
            continue
        for col, here in columns(b, device).items():
            if not here:
                cells += _unavailable(b.label, col, unseen(b, col, device))
            for d in here:
                cells += [_run(c.__name__, b.label, d, c, b, d) for c in cases.CASES]
    return cells


def columns(b: Builder, device: str | None = None) -> dict[str, list[str]]:
    """The matrix columns ``device`` picks (every one by default), each with the devices ``b``
    sees in it; an empty list: not available here (``unseen`` says why)."""
    seen = [d for d in b.devices() if device in (None, d, column(d))]
    picked = COLUMNS if device is None else (column(device),)
    return {col: [d for d in seen if column(d) == col] for col in picked}


def unseen(b: Builder, col: str, device: str | None = None) -> str:
    """Why column ``col`` of ``b`` is not available here."""
    return f"no {device or col.upper()} visible to {b.label} here"


def cell(case: str, backend: str, device: str, error: BaseException | None = None) -> Cell:
    """The cell of ``case`` run on ``device``: a pass, or a fail that says where ``error`` came
    from. The pytest suite (tests/conformance) makes its cells here too."""
    if error is None:
        return Cell(case, backend, column(device), "pass", device)
    last = traceback.extract_tb(error.__traceback__)[-1]
    reason = f"{type(error).__name__}: {error} ({last.filename.rpartition('/')[2]}:{last.lineno})"
    return Cell(
        case, backend, column(device), "fail", f"{device}: {' '.join(reason.split())[:300]}"
    )


def _run(case: str, backend: str, device: str, fn: Callable[..., object], *args: object) -> Cell:
    try:
        fn(*args)
    except Exception as e:  # a failing case is a cell, not a crash
        return cell(case, backend, device, e)
    return cell(case, backend, device)


def in_process() -> list[Builder]:
    """Every builder whose framework imports in this process: the backends a port can join."""
    return [backends.load(name) for name in backends.importable()]


def run_ports(device: str | None = None) -> list[Cell]:
    """``port from S`` into D, for every two backends that import in this process (each to
    itself too), on every device both see."""
    here = in_process()
    cells = []
    for dst in here:
        for src in here:
            for d in dst.devices():
                if device in (None, d, column(d)) and d in src.devices():
                    cells.append(
                        _run(f"port from {src.label}", dst.label, d, cases.port, src, dst, d)
                    )
    return cells


def run_files(names: list[str], device: str | None = None, save: bool = True) -> list[Cell]:
    """The port model saved on each named backend (``save``), then every port checkpoint in the
    shared folder loaded onto each: ``file from S`` into D."""
    cells = []
    chosen = [backends.load(n) for n in names]
    for b in chosen:
        for d in b.devices():
            if save and device in (None, d, column(d)):
                saved = _run("file saved", b.label, d, cases.port_save, b, d)
                if saved.status == "fail":
                    cells.append(saved)
    for b in chosen:
        for d in b.devices():
            if device in (None, d, column(d)):
                for path in cases.port_files():
                    case = f"file from {cases.port_label(path)}"
                    cells.append(_run(case, b.label, d, cases.port_load, b, d, path))
    return cells


def _unavailable(backend: str, column: str, reason: str) -> list[Cell]:
    return [Cell(c.__name__, backend, column, "not available here", reason) for c in cases.CASES]


def versions(names: list[str]) -> str:
    """One line naming what the matrix ran on."""
    import platform

    import numpy

    import unitree

    parts = [f"unitree {unitree.__version__}"]
    for name in names:
        try:
            b = backends.load(name)
            parts.append(f"{b.label} {b.version}")
        except ImportError:
            parts.append(f"{name} not installed")
    parts += [f"numpy {numpy.__version__}", f"python {platform.python_version()}"]
    return ", ".join(parts)


def column(device: str) -> str:
    """The matrix column of a device: "cpu" or "gpu"."""
    return "cpu" if device.startswith("cpu") else "gpu"


MARK = {"pass": "pass", "fail": "FAIL", "not available here": "n/a"}


def markdown(cells: list[Cell]) -> str:
    """The deck's cases (one row per case, one column per backend x device), then the port
    matrix (``ut.port`` from the row's backend into the column's) and its file twin (saved by
    the row's backend, loaded by the column's); the reasons and the counts under them."""
    deck = [c for c in cells if not c.case.startswith(("port from ", "file "))]
    ports = [c for c in cells if c.case.startswith("port from ")]
    files = [c for c in cells if c.case.startswith("file ")]
    out = _table(deck, "case", lambda c: c.case)
    order = {label: i for i, label in enumerate(dict.fromkeys(c.backend for c in cells))}
    ports.sort(key=lambda c: (order[c.backend], order.get(c.case.removeprefix("port from "), 0)))
    files.sort(key=lambda c: order[c.backend])
    if ports:
        out += ["", "Port matrix: `ut.port` from the row's model into the column's", ""]
        out += _table(ports, "from \\ into", lambda c: c.case.removeprefix("port from "))
    if files:
        out += ["", "File twin: `ut.save` on the row's backend, `ut.load` on the column's", ""]
        out += _table(files, "saved by \\ loaded by", lambda c: c.case.removeprefix("file from "))
    notes = dict.fromkeys(
        f"- {c.backend} {c.device}: not available here: {c.detail}"
        for c in deck
        if c.status == "not available here"
    )
    notes.update(
        dict.fromkeys(
            f"- port matrix n/a: not available here: {c.detail}"
            for c in ports
            if c.status == "not available here"
        )
    )
    notes.update(
        dict.fromkeys(
            f"- FAIL {c.case} on {c.backend} {c.detail}" for c in cells if c.status == "fail"
        )
    )
    counts = {s: sum(c.status == s for c in cells) for s in MARK}
    summary = f"{counts['pass']} passed, {counts['fail']} failed, {counts['not available here']} not available here"
    return "\n".join([*out, "", *notes, "", summary])


def _table(cells: list[Cell], corner: str, row_of: Callable[[Cell], str]) -> list[str]:
    heads = list(dict.fromkeys((c.backend, c.device) for c in cells))
    by = {(row_of(c), c.backend, c.device): c for c in cells}
    rows = list(dict.fromkeys(row_of(c) for c in cells))
    lines = [
        f"| {corner} | " + " | ".join(f"{b} {d}" for b, d in heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for row in rows:
        lines.append(
            f"| {row} | "
            + " | ".join(MARK[by[(row, *h)].status] if (row, *h) in by else "" for h in heads)
            + " |"
        )
    return lines


def as_json(cells: list[Cell], versions: str = "") -> str:
    return json.dumps({"versions": versions, "cells": [c._asdict() for c in cells]}, indent=1)


def merge(parts: list[str]) -> tuple[list[Cell], str]:
    """The cells and version lines of JSON reports written by separate environments (nox
    sessions). A cell run in several environments (torch to torch) fails if any run failed.
    A port between two backends that never shared an environment says so."""
    by: dict[tuple[str, str, str], Cell] = {}
    lines: list[str] = []
    for text in parts:
        part = json.loads(text)
        for c in map(lambda c: Cell(**c), part["cells"]):
            key = (c.case, c.backend, c.device)
            if key not in by or c.status == "fail" or by[key].status == "not available here":
                by[key] = c
        lines.append(part["versions"])
    labels = list(dict.fromkeys(c.backend for c in by.values() if c.case.startswith("port ")))
    for src in labels:
        for dst in labels:
            key = (f"port from {src}", dst, "cpu")
            if key not in by:
                by[key] = Cell(
                    *key,
                    "not available here",
                    "no environment holds both (numpy 1 vs 2, or one Keras backend per "
                    "process): the file twin covers this direction",
                )
    return list(by.values()), "\n".join(dict.fromkeys(lines))
