"""The performance figures of DESIGN §7, each a ratio against the framework's own operation
measured side by side in this run. Run by ``nox -s bench``; never a timed test.

    python benchmarks/run.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

FRAMEWORKS = ["torch", "tensorflow", "keras", "jax", "flax", "mxnet"]


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


def main() -> None:
    parser = argparse.ArgumentParser()
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

    import torch
    from torch import nn

    import unitree as ut

    layers = 5000  # a weight and a bias each: 10,000 tensors
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])
    n = len(list(model.parameters()))
    native = best(lambda: list(model.named_parameters()), args.repeat)
    first = best(lambda: list(ut.wrap(model).named_parameters()), args.repeat)
    tree = ut.wrap(model)
    again = best(lambda: list(tree.named_parameters()), args.repeat)
    report(
        f"wrap + named_parameters, {n:,} tensors",
        first,
        native,
        2.0,
        f"{first * 1e3:.1f} ms vs torch {native * 1e3:.1f} ms",
    )
    report("second traversal (cached) / torch", again, native, 2.0, f"{again * 1e3:.1f} ms")

    p = ut.wrap(nn.Linear(256, 256))["weight"]
    shared = np.shares_memory(p.numpy(), p.native.detach().numpy())
    print(f"{'p.numpy() shares memory with the torch tensor':<44} {shared}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
