"""Many threads reading one tree at once, none writing: each sees what one thread alone sees.

The reads are the traversals, lookups, ``p.numpy()``, ``state_dict()``, the picture and
``ut.summary``; on a warm tree (read once before) and on a fresh one, whose first read (the
lazy structure read) the threads race for from a barrier. The interpreter switches threads
every microsecond meanwhile, to interleave them far more often than it would.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Callable

import pytest
from unitree.conformance.builders import RICH

import unitree as ut

THREADS, REPEATS, ROUNDS = 8, 20, 5


def model(b: ModuleType, device: str, which: str) -> Any:
    return b.port_model(device) if which == "port" else b.random_model(RICH, device)


Read = Callable[[ut.ParamTree, list[str]], Any]

# each read as a thread reports it: plain data, equal between two trees of one model. A read
# gets the tree and the paths of every leaf occurrence (known beforehand, as a user knows them)
READS: list[Read] = [
    # lookups by path, first: on a fresh tree they read the structure with no traversal before
    lambda t, paths: [(k, t[k].path, t[k].paths) for _ in range(10) for k in paths],
    lambda t, paths: (t[-1].path, [(k, p.paths) for k, p in t[-1].named_parameters()]),
    lambda t, paths: [(k, p.paths) for k, p in t.named_parameters()],
    lambda t, paths: [(k, p.paths) for k, p in t.named_buffers()],
    lambda t, paths: [(k, n.path, n.type_name) for k, n in t.named_modules()],
    lambda t, paths: t.ties(),
    lambda t, paths: [p.path for p in t.select("*")],
    lambda t, paths: [(k, t[k].type_name) for k, _ in t.named_modules(remove_duplicate=False)],
    lambda t, paths: str(t),
    lambda t, paths: str(ut.summary(t)),
    lambda t, paths: [(k, t[k].numpy().tobytes()) for k in paths],
    lambda t, paths: {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in t.state_dict().items()},
]


def differences(got: list[Any], want: list[Any]) -> list[str]:
    """For each read that differs: its index in READS and its first differing item."""
    out = []
    for j, (x, y) in enumerate(zip(got, want)):
        if x != y:
            pairs = zip(x, y) if isinstance(x, list) and isinstance(y, list) else [(x, y)]
            first = next(((a, b) for a, b in pairs if a != b), (x, y))
            out.append(f"READS[{j % len(READS)}]: {first[0]!r:.300} instead of {first[1]!r:.300}")
    return out


def leaf_paths(tree: ut.ParamTree) -> list[str]:
    return [k for k, _ in tree.named_parameters(remove_duplicate=False)] + [
        k for k, _ in tree.named_buffers(remove_duplicate=False)
    ]


def identities(tree: ut.ParamTree, paths: list[str]) -> list[int]:
    """The Param objects at every path: one per storage, the same for every thread."""
    return [id(tree[k]) for k in paths]


def read_all(tree: ut.ParamTree, paths: list[str], start: int = 0) -> list[Any]:
    """Every read, beginning at READS[start] (threads start at different ones), in READS order."""
    n = len(READS)
    out: list[Any] = [None] * n
    for i in range(start, start + n):
        out[i % n] = READS[i % n](tree, paths)
    return out


def in_threads(work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` in THREADS threads released together by a barrier; every result, or the
    first error of any thread with its traceback."""
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} of {THREADS} threads failed; the first:\n{errors[0]}"
    return results


@pytest.fixture(autouse=True)
def switch_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("which", ["port", "random"])
def test_threads_read_a_warm_tree(builder: ModuleType, device: str, which: str) -> None:
    tree = builder.wrap(model(builder, device, which))
    paths = leaf_paths(tree)
    want, ids = read_all(tree, paths), identities(tree, paths)

    def work(i: int) -> list[str]:
        bad = []
        for r in range(REPEATS):
            bad += differences(read_all(tree, paths, i + r), want)
            assert identities(tree, paths) == ids
        return bad

    bad = [x for xs in in_threads(work) for x in xs]
    assert not bad, f"{len(bad)} reads differed from one thread's; the first: {bad[0]}"


@pytest.mark.parametrize("which", ["port", "random"])
def test_threads_race_for_the_first_read(builder: ModuleType, device: str, which: str) -> None:
    """Every thread's first call is a lookup by path: they race for the lazy structure read,
    and read what the first ones to finish hand them while the others still read it."""
    native = model(builder, device, which)
    reference = builder.wrap(native)  # another tree of the same model, read alone
    paths = leaf_paths(reference)
    want = read_all(reference, paths)

    def work(tree: ut.ParamTree, i: int) -> tuple[list[str], list[int]]:
        bad = [x for r in range(2) for x in differences(read_all(tree, paths, r * i), want)]
        return bad, identities(tree, paths)

    for _ in range(ROUNDS):
        tree = builder.wrap(native)  # never read yet
        seen = in_threads(lambda i, tree=tree: work(tree, i))
        bad = [x for xs, _ in seen for x in xs]
        assert not bad, f"{len(bad)} reads differed from one thread's; the first: {bad[0]}"
        assert all(ids == seen[0][1] for _, ids in seen)  # one Param per storage for all
