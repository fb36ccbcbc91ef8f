"""Checkpoints and ports of a 1 GiB model (16 dense layers of 4096 x 4096 float32), against the
frameworks' own operations on the same tensors, in turns in one run.

- ``checkpoint`` (torch's environment): ``ut.save`` against a raw write of the same bytes with
  fsync; ``ut.load`` against safetensors' ``load_file`` followed by torch's ``load_state_dict``,
  and its peak extra memory against one tensor plus the undo budget.
- ``ports`` (Flax's environment, which has torch and Keras on jax too): ``ut.port`` torch ->
  linen, torch -> NNX, torch -> Keras, Keras -> torch against the fastest native
  transpose-copy of the same tensors in the same round (torch's ``w.t().contiguous()``,
  numpy's ``ascontiguousarray(w.T)``, jax's jitted ``w.T``), Keras -> linen (the same layouts:
  no tensor needs a change) against a plain copy; the peak extra memory of each against the
  model, and the copies each tensor went through.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
from run import SEED, compare, figure, spread, timed

import unitree as ut

GIB, MIB = 1 << 30, 1 << 20
WIDTH = 4096  # 16 dense layers of 4096 x 4096 float32: 1 GiB of weights
LAYERS = GIB // (WIDTH * WIDTH * 4)
UNDO_BUDGET = 64 << 20  # unitree._write.Journal.BUDGET


def torch_model(seed: int = SEED) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    with torch.no_grad():
        return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """The highest resident set size above the one before while the block runs: the kernel's
    high-water mark, reset first (``/proc/self/clear_refs``), where it can be; else sampled
    every 2 ms by a thread."""
    peak = [0]
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        yield peak
        peak[0] = _status("VmHWM") - before
        return
    except OSError:
        pass
    start, done = rss(), threading.Event()

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


def timed_peak(fn: Callable[[], object]) -> tuple[float, int]:
    with peak_rss() as peak:
        t = timed(fn)
    return t, peak[0]


# -- copies per tensor -------------------------------------------------------------------------
# The operations that copy a whole tensor, as Python's profiler names them: C functions of numpy
# and torch by qualified name, Python functions by (module, name): jax's conversions of host
# arrays (``device_put`` may adopt a fresh host buffer instead) and unitree's tiled copy.
COPYING_C = {
    "array",  # numpy.array
    "ascontiguousarray",  # a copy only of an array that is not C-contiguous
    "ndarray.copy",
    "Tensor.copy_",  # bound methods are named by the object's class
    "Parameter.copy_",
    "Tensor.clone",
    "Tensor.contiguous",
}
COPYING_PY = {
    ("jax._src.api", "device_put"),
    ("jax._src.numpy.lax_numpy", "asarray"),
    ("jax._src.numpy.lax_numpy", "array"),
    ("unitree._param", "contiguous"),
}


def copies(fn: Callable[[], object], tensors: int) -> str:
    """The calls to copying operations (``COPYING_C``, ``COPYING_PY``) while ``fn`` runs,
    outermost only (jax's ``asarray`` calling ``array`` is one copy), per tensor, by operation;
    a jax array that shares the host buffer it was made from (adopted, not copied) is not
    counted. A dtype conversion (``astype``) is not counted: no port here changes a dtype."""
    counts: Counter[str] = Counter()
    adopted = [0]
    depth = [0]  # > 0 inside a counted Python function
    made_from: list[Any] = [None]  # the host array the counted jax call was given

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and depth[0] == 0:
            name = getattr(arg, "__qualname__", "")
            if name in COPYING_C:
                counts[name] += 1
        elif event == "call":
            if depth[0]:
                depth[0] += 1
                return
            where = (frame.f_globals.get("__name__", ""), frame.f_code.co_name)
            if where in COPYING_PY:
                depth[0] = 1
                first = frame.f_locals.get(frame.f_code.co_varnames[0])
                made_from[0] = first if where[0].startswith("jax") else None
                counts[where[1]] += 1
        elif event == "return" and depth[0]:
            depth[0] -= 1
            if depth[0] == 0 and isinstance(made_from[0], np.ndarray) and arg is not None:
                if np.shares_memory(np.asarray(arg), made_from[0]):
                    counts[frame.f_code.co_name] -= 1  # adopted: no copy
                    adopted[0] += 1
                made_from[0] = None

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    total = sum(counts.values())
    what = ", ".join(f"{name} {n}" for name, n in counts.most_common() if n)
    if adopted[0]:
        what += f"; jax adopted {adopted[0]} host buffers, no copy"
    return f"{total / tensors:.2f} copies per tensor ({what or 'none'})"


# -- checkpoints (torch) ---------------------------------------------------------------------
def checkpoint(runs: int) -> None:
    """``ut.save`` / ``ut.load`` of the 1 GiB torch model against safetensors and raw writes."""
    from safetensors.torch import load_file, save_file

    model = torch_model()
    tree = ut.wrap(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    arrays = [v.detach().numpy() for v in state.values()]
    size = sum(a.nbytes for a in arrays)
    largest = max(a.nbytes for a in arrays)
    with tempfile.TemporaryDirectory(dir=os.environ.get("UNITREE_BENCH_DIR")) as folder:
        ours = os.path.join(folder, "ut.safetensors")
        theirs = os.path.join(folder, "st.safetensors")
        raw = os.path.join(folder, "raw.bin")

        def raw_write() -> None:
            with open(raw, "wb") as f:
                for a in arrays:
                    f.write(a.data)
                f.flush()
                os.fsync(f.fileno())

        compare(
            "ut.save / raw write of the bytes + fsync",
            lambda: ut.save(tree, ours),
            raw_write,
            1.1,
            f"{size / GIB:.2f} GiB: raw",
            runs,
            ("s", 1),
        )
        save_file(state, theirs)
        compare(
            "ut.load / load_file + load_state_dict",
            lambda: ut.load(tree, ours),
            lambda: model.load_state_dict(load_file(theirs)),
            1.3,
            "safetensors + torch",
            runs,
            ("s", 1),
        )
        peaks = [timed_peak(lambda: ut.load(tree, ours))[1] for _ in range(runs)]
        bound = largest + UNDO_BUDGET
        figure(
            "ut.load: peak extra RSS / (largest tensor + undo budget)",
            [p / bound for p in peaks],
            1.0,
            f"{spread(peaks, 1 / MIB, 0)} MiB; largest tensor {largest / MIB:.0f} MiB, "
            f"budget {UNDO_BUDGET / MIB:.0f} MiB, model {size / MIB:.0f} MiB",
        )


# -- ports (flax environment: torch, flax, Keras on jax) ----------------------------------------
def _flax_models() -> tuple[Any, Any, Any]:
    """The 1 GiB model in linen (zeros), NNX and Keras (their own initializers)."""
    import jax
    import jax.numpy as jnp
    import keras
    from flax import linen, nnx

    net = linen.Sequential([linen.Dense(WIDTH) for _ in range(LAYERS)])
    shapes = jax.eval_shape(net.init, jax.random.key(SEED), jnp.ones((1, WIDTH)))
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    rngs = nnx.Rngs(SEED)
    nnx_model = nnx.Sequential(*[nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(LAYERS)])
    keras.utils.set_random_seed(SEED)
    keras_model = keras.Sequential([keras.layers.Dense(WIDTH) for _ in range(LAYERS)])
    keras_model.build((None, WIDTH))
    return ut.wrap(net, variables), ut.wrap(nnx_model), ut.wrap(keras_model)


def native_transposes(model: Any) -> dict[str, Callable[[], object]]:
    """Each framework's own transpose-copy of the model's tensors (biases copied)."""
    import jax

    tensors = [p.detach() for p in model.parameters()]
    views = [t.numpy() for t in tensors]
    transpose = jax.jit(lambda a: a.T)
    copy = jax.jit(lambda a: a + 0)

    def with_jax() -> None:
        for v in views:
            (transpose(v) if v.ndim == 2 else copy(v)).block_until_ready()

    def with_torch() -> None:
        for t in tensors:
            t.t().contiguous() if t.ndim == 2 else t.clone()

    return {
        "torch": with_torch,
        "numpy": lambda: [np.ascontiguousarray(v.T) for v in views],
        "jax": with_jax,
    }


def ports(runs: int) -> None:
    model = torch_model()
    torch_tree = ut.wrap(model)
    linen_tree, nnx_tree, keras_tree = _flax_models()
    size = sum(p.numel() * 4 for p in model.parameters())
    tensors = 2 * LAYERS
    natives = native_transposes(model)
    views = [p.detach().numpy() for p in model.parameters()]
    cases: dict[str, tuple[Callable[[], object], str]] = {
        "torch -> linen": (lambda: ut.port(torch_tree, linen_tree), "transpose"),
        "torch -> nnx": (lambda: ut.port(torch_tree, nnx_tree), "transpose"),
        "torch -> keras (jax)": (lambda: ut.port(torch_tree, keras_tree), "transpose"),
        "keras (jax) -> torch": (lambda: ut.port(keras_tree, torch_tree), "transpose"),
        "keras (jax) -> linen, no change": (lambda: ut.port(keras_tree, linen_tree), "copy"),
    }
    for port, _ in cases.values():  # warm-up: code loaded on first use, caches
        port()
    times: dict[str, list[float]] = {name: [] for name in [*natives, "copy", *cases]}
    peaks: dict[str, list[int]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, fn in natives.items():
            times[name].append(timed(fn))
        times["copy"].append(timed(lambda: [v.copy() for v in views]))
        for name, (port, _) in cases.items():
            t, peak = timed_peak(port)
            times[name].append(t)
            peaks[name].append(peak)
    fastest = [min(times[n][r] for n in natives) for r in range(runs)]
    each = ", ".join(f"{n} {spread(times[n])}" for n in natives)
    print(
        f"{'native transpose-copies of the 1 GiB, s':<46} {each}; plain copy {spread(times['copy'])}"
    )
    for name, (port, against) in cases.items():
        base = fastest if against == "transpose" else times["copy"]
        what = "the fastest native transpose-copy" if against == "transpose" else "a plain copy"
        figure(
            f"ut.port {name}: time",
            [a / b for a, b in zip(times[name], base)],
            1.2,
            f"{spread(times[name])} s vs {what} {spread(base)} s",
        )
        figure(
            f"ut.port {name}: peak extra RSS / model",
            [p / size for p in peaks[name]],
            1.1,
            f"{spread(peaks[name], 1 / MIB, 0)} MiB for a {size / MIB:.0f} MiB model; "
            + copies(port, tensors),
        )
