"""The ``unitree`` command: show a checkpoint, diff two, run the conformance matrix."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UnitreeError
from ._files import TorchFile, open_checkpoint
from ._picture import Branch, render, shape_text


def show(path: str) -> str:
    """The picture of a checkpoint's tree: what ``ut.load`` reads, a safetensors file (from its
    header alone, no framework needed) or a PyTorch ``state_dict`` file (through torch)."""
    with open_checkpoint(path) as ckpt:
        header, alias, order = ckpt.header, ckpt.aliases(), ckpt.paths(aliases=True)
        if isinstance(ckpt, TorchFile):
            backend = "PyTorch state_dict"
        else:
            backend = ckpt.metadata.get("backend", "unknown backend")
            if not backend.isprintable():  # the file's words, never a terminal's escape codes
                backend = ascii(backend)
    # (is a module, name) -> the module's items, or the leaf's key: a file may hold a leaf and
    # a module of one name ("0" and "0.weight"), which a model could not, and shows both
    root: dict[tuple[bool, str], Any] = {}
    for key in order:
        node = root
        *parents, leaf = key.split(".")
        for seg in parents:
            node = node.setdefault((True, seg), {})
        node[(False, leaf)] = key

    def leaf(key: str) -> str:
        shape, dtype = header[alias.get(key, key)]
        return f"{shape_text(shape)} {dtype}" + (f" = {alias[key]}" if key in alias else "")

    def branches(node: dict[tuple[bool, str], Any]) -> list[Branch]:
        return [
            (name, branches(item)) if module else (f"{name} {leaf(item)}", [])
            for (module, name), item in node.items()
        ]

    stored = [entry for key, entry in header.items() if key not in alias]  # a tie once
    count = sum(int(np.prod(s)) for s, _ in stored)
    size = sum(int(np.prod(s)) * d.itemsize for s, d in stored)
    picture = render(f"{os.path.basename(path)} ({backend})", branches(root))
    return f"{picture}\n{len(stored)} tensors, {count:,} values, {size:,} bytes"


def _max_difference(x: np.ndarray, y: np.ndarray) -> float:
    """max |x - y|, computed in float64 (complex128 for complex values): bfloat16 and float8
    (numpy's kind "V", through ml_dtypes) too. NaN where one holds NaN the other does not."""
    if x.size == 0:
        return 0.0
    wide = np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64
    a, b = x.astype(wide), y.astype(wide)
    d = np.abs(a - b)
    d[np.isnan(a) & np.isnan(b)] = 0  # NaN on both sides is no difference
    return float(np.max(d))


def diff(a: str, b: str) -> tuple[str, bool]:
    """Per path, the max absolute difference; then the ties and the keys only one side has.
    A tied parameter is found under any of its paths. True if the two hold the same values."""
    lines, same = [], True
    with open_checkpoint(a) as left, open_checkpoint(b) as right:
        stored = {k: left.aliases().get(k, k) for k in left.paths(aliases=True)}
        theirs = {k: right.aliases().get(k, k) for k in right.paths(aliases=True)}
        for key, where in stored.items():
            if key not in theirs:
                continue
            other = theirs[key]
            if (key != where) != (key != other):  # stored in one file, an alias in the other
                lines.append(
                    f"{key}: "
                    + (f"tied to {where} in A" if key != where else "stored in A")
                    + ", "
                    + (f"tied to {other} in B" if key != other else "stored in B")
                )
                same = False
            if key != where and key != other:
                continue  # compared under the key it is stored at
            shape, dtype = left.header[where]
            other_shape, other_dtype = right.header[other]
            if shape != other_shape:
                lines.append(f"{key}: shape {shape} in A, {other_shape} in B")
                same = False
                continue
            delta = _max_difference(left[where], right[other])
            note = "" if dtype == other_dtype else f"  (dtype {dtype} in A, {other_dtype} in B)"
            lines.append(f"{key}: max abs diff {delta:.6g}{note}")
            same = same and delta == 0 and not note
        missing = [k for k in stored if k not in theirs]
        unexpected = [k for k in theirs if k not in stored]
    if missing:
        lines.append("only in A (missing from B): " + ", ".join(missing))
    if unexpected:
        lines.append("only in B (unexpected): " + ", ".join(unexpected))
    return "\n".join(lines), same and not missing and not unexpected


def conformance(
    backend: list[str] | None,
    device: str | None,
    report: str | None,
    merge: str | None = None,
    files: bool = False,
) -> int:
    """Run the deck's cases (``unitree.conformance``) on the backends installed here, or on
    ``backend``, and print the matrix; 1 if any cell failed."""
    if device is not None and not re.fullmatch(r"cpu|gpu|cuda:\d+|gpu:\d+", device):
        raise UnitreeError(
            f"Unknown device {device!r}: expected cpu, gpu, or a device name such as cuda:0 or gpu:0."
        )
    try:
        return _conformance(backend, device, report, merge, files)
    except ImportError as e:  # a backend named on the command line or in UNITREE_BACKENDS
        raise UnitreeError(
            f"A backend named to run cannot be imported here ({e}): install its framework, "
            "or leave it out (--backend, UNITREE_BACKENDS)."
        ) from None
    except ValueError as e:  # an unknown backend name
        raise UnitreeError(str(e)) from None


def _conformance(
    backend: list[str] | None,
    device: str | None,
    report: str | None,
    merge: str | None,
    files: bool,
) -> int:
    from .conformance import backends, matrix

    if merge:
        parts = sorted(Path(merge).glob("*.json"))
        if not parts:
            raise UnitreeError(
                f"No conformance reports (*.json) in {merge}: run the backend sessions first."
            )
        cells, versions = matrix.merge([p.read_text() for p in parts])
    else:
        named = backend or backends.named()
        names = named or backends.importable()
        if not names:
            raise UnitreeError(
                "No framework with a conformance builder is installed here: install one "
                "(pip install 'unitree-params[torch]'; [keras] with a Keras backend, [flax], "
                "[gluon]) or name one with --backend."
            )
        if files:  # the file twin's second pass: every port checkpoint saved by any environment
            cells = matrix.run_files(names, device, save=False)
        else:
            cells = matrix.run(names, device, strict=named is not None)
            cells += matrix.run_ports(device) + matrix.run_files(names, device)
        versions = matrix.versions(names)
    text = matrix.markdown(cells) + "\n" + versions
    print(text)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(
            matrix.as_json(cells, versions) if report.endswith(".json") else text + "\n"
        )
    return 1 if any(c.status == "fail" for c in cells) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unitree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="draw a checkpoint's tree: paths, shapes, dtypes, ties")
    p.add_argument("file")
    p = sub.add_parser(
        "diff",
        help="compare two checkpoints: max abs difference per path, missing and unexpected keys",
    )
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser(
        "conformance", help="run the deck's cases on every backend and device: print the matrix"
    )
    p.add_argument(
        "--backend",
        action="append",
        help="a backend to run (repeatable); default: UNITREE_BACKENDS, else all",
    )
    p.add_argument("--device", help="only this device: cpu, gpu, or a device name such as cuda:0")
    p.add_argument(
        "--report", help="also write the matrix to this file: Markdown, or JSON if it ends in .json"
    )
    p.add_argument(
        "--merge",
        metavar="DIR",
        help="draw one matrix from the JSON reports in DIR, one per environment, instead of running",
    )
    p.add_argument(
        "--files",
        action="store_true",
        help="only load every port checkpoint in UNITREE_CHECKPOINTS onto these backends",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(show(args.file))
            return 0
        if args.command == "diff":
            text, same = diff(args.a, args.b)
            print(text)
            return 0 if same else 1
        return conformance(args.backend, args.device, args.report, args.merge, args.files)
    except UnitreeError as e:
        print(f"unitree: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
