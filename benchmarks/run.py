"""The performance figures (docs/architecture.md), each a ratio against the framework's own operation
measured side by side in this run. Run by ``nox -s bench``; never a timed test.

    python benchmarks/run.py [BACKEND] [--repeat N]

BACKEND (torch, keras, flax, gluon) adds that framework's figures, from
``bench_<backend>.py``, run in that framework's own environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "mxnet"]
SEED = 0  # every random value of every benchmark: the same models on every run


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def import_time(module: str, repeat: int) -> tuple[float, list[str]]:
    """Best wall time of ``import module`` in a fresh interpreter, and the frameworks it pulled in."""
    code = (
        "import sys, time, json; t = time.perf_counter(); import "
        + module
        + "; t = time.perf_counter() - t; "
        f"print(json.dumps([t, [m for m in {FRAMEWORKS!r} if m in sys.modules]]))"
    )
    # Bytecode caching on, as for any installed package: the first run writes the .pyc files.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
            ).stdout
        )
        for _ in range(repeat + 1)
    ][1:]
    return min(r[0] for r in runs), runs[0][1]


def report(name: str, ours: float, theirs: float, target: float, what: str) -> None:
    ratio = ours / theirs
    verdict = "within target" if ratio <= target else "OVER TARGET"
    print(f"{name:<44} {ratio:6.2f}x  (target <= {target}x, {verdict})   {what}")


def traversal(
    label: str,
    baseline: str,
    native: Callable[[], object],
    wrap: Callable[[], Any],
    repeat: int,
    rounds: int | None = None,
) -> float:
    """wrap + named_parameters against the framework's own traversal (``baseline``), then a
    second, cached traversal; ``rounds`` for the first two when they are slow. Returns the
    time of wrap + named_parameters."""
    t_native = best(native, rounds or repeat)
    first = best(lambda: list(wrap().named_parameters()), rounds or repeat)
    tree = wrap()
    list(tree.named_parameters())
    again = best(lambda: list(tree.named_parameters()), repeat)
    what = f"{first * 1e3:.1f} ms vs {baseline} {t_native * 1e3:.1f} ms"
    report(f"{label}wrap + named_parameters", first, t_native, 2.0, what)
    report(f"{label}second traversal (cached)", again, t_native, 2.0, f"{again * 1e3:.1f} ms")
    return first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", nargs="?", choices=["torch", "keras", "flax", "gluon"])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    t_unitree, pulled = import_time("unitree", args.repeat)
    t_numpy, _ = import_time("numpy", args.repeat)
    report(
        "import unitree / import numpy",
        t_unitree,
        t_numpy,
        1.5,
        f"{t_unitree * 1e3:.1f} ms vs {t_numpy * 1e3:.1f} ms",
    )
    print(f"{'frameworks imported by import unitree':<44} {pulled or 'none'}")

    if args.backend:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        importlib.import_module(f"bench_{args.backend}").main(args.repeat)


if __name__ == "__main__":
    main()
