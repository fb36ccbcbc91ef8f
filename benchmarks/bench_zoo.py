"""``ut.port`` between a BERT-base-sized PyTorch model and its Flax twin (transformers'
``BertModel`` / ``FlaxBertModel`` of the default ``BertConfig``: hidden 768, 12 layers, about
420 MB of float32; built from the config, nothing downloaded) against transformers' own
conversions of the same models, side by side in one run:

- torch -> flax: ``ut.port(torch_model, flax_model)`` against
  ``convert_pytorch_state_dict_to_flax(torch_model.state_dict(), flax_model)`` then
  ``flax_model.params = ...``;
- flax -> torch: ``ut.port(flax_model, torch_model)`` against
  ``load_flax_weights_in_pytorch_model(torch_model, flax_model.params)``.

Time: min / median / max of the rounds (a warm-up first, which also checks that both write
the same values), the two alternated in each round. Memory: the peak resident set above the
one before, of one operation in a fresh interpreter that built both models (and warmed the
operation up on a tiny BERT, so that code loaded on first use is not counted).

    python benchmarks/bench_zoo.py [--runs N] [--profile]

``--profile`` prints cProfile's top functions by cumulative time for unitree's side of both
directions instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

from run import SEED, compare, figure, spread

import unitree as ut

os.environ.setdefault("USE_TF", "0")  # transformers would import tensorflow: seconds, 0.5 GB
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MIB = 1 << 20
TIME_TARGET = MEMORY_TARGET = 1.0
Op = Callable[[Any, Any], object]  # (torch model, flax model)


def models(tiny: bool = False) -> tuple[Any, Any]:
    """A torch BertModel and a FlaxBertModel of the same config, each its own random init."""
    import torch
    from transformers import BertConfig, BertModel, FlaxBertModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the deprecation notice, "All the weights ... were used"
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if tiny:
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            vocab_size=99,
        )
    else:
        config = BertConfig()
    torch.manual_seed(SEED)
    return BertModel(config).eval(), FlaxBertModel(config, seed=SEED + 1)


def hf_to_flax(tm: Any, fm: Any) -> None:
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    fm.params = convert_pytorch_state_dict_to_flax(tm.state_dict(), fm)


def hf_to_torch(tm: Any, fm: Any) -> None:
    from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

    load_flax_weights_in_pytorch_model(tm, fm.params)


# direction: (unitree's operation, transformers' operation, transformers' in words)
OPS: dict[str, tuple[Op, Op, str]] = {
    "torch -> flax": (
        lambda tm, fm: ut.port(tm, fm),
        hf_to_flax,
        "convert_pytorch_state_dict_to_flax",
    ),
    "flax -> torch": (
        lambda tm, fm: ut.port(fm, tm),
        hf_to_torch,
        "load_flax_weights_in_pytorch_model",
    ),
}


def measure_memory(direction: str, side: int) -> None:
    """In a fresh interpreter: the peak RSS above the one before of one operation, and what
    of it is still held when the operation returns (before any garbage collection), as JSON
    (``bench_checkpoint.peak_rss``: the kernel's high-water mark, or sampled)."""
    import bench_checkpoint

    op = OPS[direction][side]
    op(*models(tiny=True))  # code loaded on first use, caches filled: not the operation's
    tm, fm = models()
    gc.collect()
    before = bench_checkpoint.rss()
    with bench_checkpoint.peak_rss() as peak:
        op(tm, fm)
    held = bench_checkpoint.rss() - before
    print(json.dumps({"peak": peak[0], "held": held, "how": "peak RSS"}))


def memory(direction: str, side: int) -> tuple[int, int, str]:
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory", direction, str(side)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"the memory run of {direction} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["peak"], result["held"], result["how"]


def check(tm: Any, fm: Any) -> None:
    """The warm-up of all four, and the proof that unitree and transformers write the same
    values in both directions (each into a model holding other values first)."""
    import jax
    import numpy as np
    import torch

    ours_to_flax, theirs_to_flax, _ = OPS["torch -> flax"]
    ours_to_flax(tm, fm)
    ours = jax.tree_util.tree_leaves(fm.params)
    fm.params = jax.tree_util.tree_map(lambda x: x + 1, fm.params)
    theirs_to_flax(tm, fm)
    theirs = jax.tree_util.tree_leaves(fm.params)
    assert len(ours) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), "torch -> flax differs"
    del ours, theirs

    ours_to_torch, theirs_to_torch, _ = OPS["flax -> torch"]
    fm.params = jax.tree_util.tree_map(lambda x: x - 1, fm.params)  # not what torch holds
    ours_to_torch(tm, fm)
    ours = {k: v.clone() for k, v in tm.state_dict().items()}
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(1)
    theirs_to_torch(tm, fm)
    theirs = tm.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "flax -> torch differs"


def timings(tm: Any, fm: Any, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """Each direction's times, unitree's and transformers', alternated (who goes first too)."""
    times: dict[str, tuple[list[float], list[float]]] = {d: ([], []) for d in OPS}
    for r in range(rounds):
        for direction, (ours, theirs, _) in OPS.items():
            order = [(0, ours), (1, theirs)] if r % 2 == 0 else [(1, theirs), (0, ours)]
            for side, op in order:
                gc.collect()
                start = time.perf_counter()
                op(tm, fm)
                times[direction][side].append(time.perf_counter() - start)
    return times


def gpt2_load(runs: int) -> None:
    """``ut.load`` of GPT-2 small (transformers' ``GPT2LMHeadModel`` of the default config, its
    own random init: 124M parameters, about 475 MiB) against safetensors' ``load_file`` then
    torch's ``load_state_dict`` of the same tensors, and its peak extra memory."""
    import tempfile

    import bench_checkpoint
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    size = sum(v.nbytes for v in state.values())
    largest = max(v.nbytes for v in state.values())
    tree = ut.wrap(model)
    with tempfile.TemporaryDirectory(dir=os.environ.get("UNITREE_BENCH_DIR")) as folder:
        ours, theirs = (
            os.path.join(folder, "ut.safetensors"),
            os.path.join(folder, "st.safetensors"),
        )
        ut.save(tree, ours)
        save_file(state, theirs)  # the tied head stored once, as save_pretrained does
        compare(
            f"GPT-2 small ({size / MIB:.0f} MiB) ut.load",
            lambda: ut.load(tree, ours),
            lambda: model.load_state_dict(load_file(theirs), strict=False),
            1.3,
            "load_file + load_state_dict",
            runs,
            ("s", 1),
        )
        peaks = [bench_checkpoint.timed_peak(lambda: ut.load(tree, ours))[1] for _ in range(runs)]
        bound = largest + bench_checkpoint.UNDO_BUDGET
        figure(
            "GPT-2 small ut.load: peak extra RSS / (largest tensor + undo budget)",
            [p / bound for p in peaks],
            1.0,
            f"{spread(peaks, 1 / MIB, 0)} MiB; largest tensor {largest / MIB:.0f} MiB, "
            f"budget {bench_checkpoint.UNDO_BUDGET / MIB:.0f} MiB",
        )


def main(runs: int) -> None:
    rounds = max(5, runs)
    # memory first, each in its own interpreter, while this one holds no model
    mem = {d: [memory(d, side) for side in (0, 1)] for d in OPS}
    tm, fm = models()
    n = sum(p.numel() for p in tm.parameters())
    print(
        f"BERT-base (transformers BertModel / FlaxBertModel, default BertConfig): "
        f"{n:,} parameters, {n * 4 / MIB:.0f} MiB float32, {len(tm.state_dict())} tensors"
    )
    check(tm, fm)
    times = timings(tm, fm, rounds)

    header = (
        f"{'operation':<24} {'unitree s (min/med/max)':>24} {'transformers s':>20} "
        f"{'time':>7} {'memory':>20} {'target':>10}"
    )
    print(header)
    lines = []
    for direction, (_, _, theirs_name) in OPS.items():
        ours, theirs = times[direction]
        t_ratio = statistics.median(ours) / statistics.median(theirs)
        (m_ours, h_ours, how), (m_theirs, h_theirs, _) = mem[direction]
        m_ratio = m_ours / max(m_theirs, MIB)  # a theirs of next to nothing: per MiB
        holds = t_ratio <= TIME_TARGET and m_ratio <= MEMORY_TARGET
        memory_cell = f"{m_ours / MIB:.0f}/{m_theirs / MIB:.0f} MiB {m_ratio:.2f}x"
        print(
            f"{'ut.port ' + direction:<24} {spread(ours):>24} {spread(theirs):>20} "
            f"{t_ratio:6.2f}x {memory_cell:>20} "
            f"{'holds' if holds else 'OVER':>10}"
        )
        held = f"{h_ours / MIB:.0f} MiB vs {h_theirs / MIB:.0f} MiB"
        lines.append((direction, theirs_name, ours, theirs, m_ours, m_theirs, held, how))
    print(
        f"(target: time <= {TIME_TARGET}x and memory <= {MEMORY_TARGET}x transformers'; "
        f"{rounds} rounds after a warm-up; memory: peak extra RSS in a fresh process, "
        f"{lines[0][-1]})"
    )
    for direction, theirs_name, ours, theirs, m_ours, m_theirs, held, _ in lines:
        figure(
            f"BERT-base ut.port {direction}: time",
            [a / b for a, b in zip(ours, theirs)],
            TIME_TARGET,
            f"{spread(ours)} s vs {theirs_name} {spread(theirs)} s",
        )
        figure(
            f"BERT-base ut.port {direction}: peak extra RSS (one run)",
            [m_ours / max(m_theirs, MIB)],
            MEMORY_TARGET,
            f"{m_ours / MIB:.0f} MiB vs {m_theirs / MIB:.0f} MiB; still held on return {held}",
        )
    del tm, fm
    gc.collect()
    gpt2_load(rounds)
    import flax
    import jax
    import torch
    import transformers

    print(
        f"torch {torch.__version__}, jax {jax.__version__}, flax {flax.__version__}, "
        f"transformers {transformers.__version__}, python {sys.version.split()[0]}"
    )


def profile(top: int = 15) -> None:
    """cProfile of unitree's side of both directions (after a warm-up), top by cumulative."""
    import cProfile
    import pstats

    tm, fm = models()
    for direction, (ours, _, _) in OPS.items():
        ours(tm, fm)  # warm-up
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(ours, tm, fm)
        wall = time.perf_counter() - start
        print(f"\n== ut.port {direction}: {wall:.2f} s under the profiler ==")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", nargs=2, metavar=("DIRECTION", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        measure_memory(args.memory[0], int(args.memory[1]))
    elif args.profile:
        profile()
    else:
        main(args.runs)
