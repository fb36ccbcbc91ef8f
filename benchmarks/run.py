"""The performance figures (docs/architecture.md), each a ratio against the framework's own operation
measured side by side in this run. Run by ``nox -s bench``; never a timed test.

    python benchmarks/run.py [BACKEND] [--runs N]

BACKEND (torch, keras, flax, gluon) adds that framework's figures, from
``bench_<backend>.py``, run in that framework's own environment.

Every figure is run RUNS times (at least 5), in turns with the framework's own operation
so that both see the same load, and printed as the min/median/max of the per-round ratios
with its target; a target holds when the median does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "mxnet"]
SEED = 0  # every random value of every benchmark: the same models on every run


RUNS = 7  # rounds of every figure: this machine is shared and noisy, so each figure is a spread


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(fn: Callable[[], object], repeat: int) -> float:
    return min(timed(fn) for _ in range(repeat))


def paired(
    ours: Callable[[], object], theirs: Callable[[], object], runs: int
) -> tuple[list[float], list[float]]:
    """The times of ``ours`` and ``theirs``, run in turns after one warm-up each, so that both
    see the same load on the machine."""
    ours(), theirs()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        times[1].append(timed(theirs))
        times[0].append(timed(ours))
    return times


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """min/median/max of ``values`` times ``scale``."""
    v = sorted(x * scale for x in values)
    return "/".join(f"{x:.{digits}f}" for x in (v[0], statistics.median(v), v[-1]))


def figure(name: str, ratios: list[float], target: float, what: str) -> bool:
    """Print one figure: its ratios' min/median/max, its target, and whether the median holds it."""
    holds = statistics.median(ratios) <= target
    verdict = "holds" if holds else "OVER TARGET"
    print(f"{name:<46} {spread(ratios)}x  (target <= {target}x: {verdict})   {what}", flush=True)
    return holds


def compare(
    name: str,
    ours: Callable[[], object],
    theirs: Callable[[], object],
    target: float,
    baseline: str,
    runs: int,
    unit: tuple[str, float] = ("ms", 1e3),
) -> list[float]:
    """Time ``ours`` against ``theirs`` in turns and print the figure; returns ours' times."""
    t_ours, t_theirs = paired(ours, theirs, runs)
    label, scale = unit
    what = f"{spread(t_ours, scale)} {label} vs {baseline} {spread(t_theirs, scale)} {label}"
    figure(name, [a / b for a, b in zip(t_ours, t_theirs)], target, what)
    return t_ours


def import_time(module: str) -> tuple[float, list[str]]:
    """Wall time of ``import module`` in a fresh interpreter, and the frameworks it pulled in."""
    code = (
        "import sys, time, json; t = time.perf_counter(); import "
        + module
        + "; t = time.perf_counter() - t; "
        f"print(json.dumps([t, [m for m in {FRAMEWORKS!r} if m in sys.modules]]))"
    )
    # Bytecode caching on, as for any installed package: the first run wrote the .pyc files.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return tuple(json.loads(out.stdout))  # type: ignore[return-value]


def traversal(
    label: str,
    baseline: str,
    native: Callable[[], object],
    wrap: Callable[[], Any],
    runs: int,
) -> None:
    """wrap + named_parameters against the framework's own traversal (``baseline``), then a
    second, cached traversal against it too."""
    compare(
        f"{label}wrap + named_parameters",
        lambda: list(wrap().named_parameters()),
        native,
        2.0,
        baseline,
        runs,
    )
    tree = wrap()
    list(tree.named_parameters())
    compare(
        f"{label}second traversal (cached)",
        lambda: list(tree.named_parameters()),
        native,
        2.0,
        baseline,
        runs,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", nargs="?", choices=["torch", "keras", "flax", "gluon"])
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    runs = max(5, args.runs)

    import_time("unitree"), import_time("numpy")  # the first runs write the .pyc files
    ratios, ours, theirs, pulled = [], [], [], []
    for _ in range(runs):
        t_numpy, _ = import_time("numpy")
        t_unitree, pulled = import_time("unitree")
        ours.append(t_unitree)
        theirs.append(t_numpy)
        ratios.append(t_unitree / t_numpy)
    what = f"{spread(ours, 1e3, 1)} ms vs {spread(theirs, 1e3, 1)} ms"
    figure("import unitree / import numpy", ratios, 1.5, what)
    print(f"{'frameworks imported by import unitree':<46} {pulled or 'none'}")

    if args.backend:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        importlib.import_module(f"bench_{args.backend}").main(runs)


if __name__ == "__main__":
    main()
