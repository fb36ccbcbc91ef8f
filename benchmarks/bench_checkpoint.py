"""Checkpoints and ports of a 1 GiB model, against safetensors and plain copies of the same bytes.

Used by ``bench_torch`` (save / load) and ``bench_flax`` (port torch -> flax).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
from run import SEED, best, report

import unitree as ut

GIB = 1 << 30
WIDTH = 4096  # 16 dense layers of 4096 x 4096 float32: 1 GiB of weights
LAYERS = GIB // (WIDTH * WIDTH * 4)


def torch_model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    with torch.no_grad():
        return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """The highest resident set size above the starting one while the block runs, sampled."""
    start, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss() - start)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], rss() - start)


def checkpoint(repeat: int) -> None:
    """``ut.save`` / ``ut.load`` of a 1 GiB torch model against safetensors' own functions."""
    from safetensors.numpy import load_file, save_file

    model = torch_model()
    tree = ut.wrap(model)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    size = sum(a.nbytes for a in arrays.values())
    rounds = max(2, min(repeat, 4))
    with tempfile.TemporaryDirectory(dir=os.environ.get("UNITREE_BENCH_DIR")) as folder:
        ours, theirs = (
            os.path.join(folder, "ut.safetensors"),
            os.path.join(folder, "st.safetensors"),
        )
        t_st = best(lambda: save_file(arrays, theirs), rounds)
        t_ut = best(lambda: ut.save(tree, ours), rounds)
        what = (
            f"{t_ut:.2f} s vs {t_st:.2f} s for {size / GIB:.2f} GiB (ours fsyncs, theirs does not)"
        )
        report("ut.save / safetensors save_file", t_ut, t_st, 1.2, what)
        t_st = best(lambda: load_file(theirs), rounds)
        t_ut = best(lambda: ut.load(tree, ours), rounds)
        what = f"{t_ut:.2f} s into the model vs {t_st:.2f} s into new arrays"
        report("ut.load / safetensors load_file", t_ut, t_st, 1.2, what)
        with peak_rss() as peak:
            ut.load(tree, ours)
        largest = max(a.nbytes for a in arrays.values())
        print(
            f"{'ut.load: peak extra memory':<44} {peak[0] / GIB:.2f} GiB "
            f"(model {size / GIB:.2f} GiB, largest tensor {largest / GIB:.3f} GiB)"
        )


def port(repeat: int, make_flax: Callable[[], Any]) -> None:
    """``ut.port`` of a 1 GiB torch model into Flax: peak extra memory (RSS) against the
    model's size; time against a numpy copy of the same bytes and against the plain
    conversion a user would write (transpose each kernel, hand it to jax)."""
    import jax.numpy as jnp

    model = torch_model()
    src = ut.wrap(model)
    dst = make_flax()
    size = sum(p.numel() * 4 for p in model.parameters())
    with peak_rss() as peak:
        t_port = time.perf_counter()
        port_report = ut.port(src, dst)
        t_port = time.perf_counter() - t_port
    crossed = f"{port_report.dlpack} of {port_report.tensors} tensors through DLPack"
    del port_report
    report(
        "ut.port torch -> flax: peak extra RSS / model",
        peak[0],
        size,
        1.2,
        f"{peak[0] / GIB:.2f} GiB for a {size / GIB:.2f} GiB model",
    )
    views = [p.detach().numpy() for p in model.parameters()]
    t_copy = best(lambda: [v.copy() for v in views], max(2, min(repeat, 4)))

    def by_hand() -> None:
        for v in views:
            a = jnp.asarray(np.ascontiguousarray(v.T) if v.ndim == 2 else v)
            a.block_until_ready()

    t_hand = best(by_hand, max(2, min(repeat, 4)))
    print(
        f"{'ut.port torch -> flax: time':<44} {t_port:.2f} s; numpy copy of the bytes "
        f"{t_copy:.2f} s ({t_port / t_copy:.1f}x); transpose + jnp.asarray by hand "
        f"{t_hand:.2f} s ({t_port / t_hand:.1f}x); {crossed} (the rest need a transpose)"
    )
