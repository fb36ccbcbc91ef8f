"""``ut.save`` is atomic: killed at any moment, the target holds the old checkpoint or the new one.

``ut.save`` writes a temporary file next to the target (``.<name>.<random>.tmp``), fsyncs it and
renames it over the target. A child process saving in a loop is killed with SIGKILL at random
moments; after each kill the target must load, whole, with every tensor holding the old version's
value or every tensor the new one's. A writer killed mid-write leaves its temporary file behind:
nothing can remove it from a process that is gone, and ``ut.save`` does not sweep other
temporaries (one may belong to a writer still running). A save that ends, by success or by an
exception, leaves no temporary.
"""

from __future__ import annotations

import fnmatch
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from unitree_fake import FakeAdapter, Mod

import unitree as ut

ROOT = Path(__file__).resolve().parents[2]
TENSORS, SIZE = 8, 2**18  # 8 tensors of 1 MB (float32)
KILLS = 20

CHILD = r"""
import sys, time
import numpy as np
import unitree as ut
from unitree_fake import FakeAdapter, Mod

class Slow(FakeAdapter):
    # a short pause before each tensor is written: most of a save is spent half written
    def read(self, leaf):
        time.sleep(0.002)
        return leaf

path, first, count, size, n = sys.argv[1], *map(int, sys.argv[2:])
model = Mod("Net", **{f"w{i}": np.zeros(size, np.float32) for i in range(n)})
tree = ut.ParamTree(Slow("torch"), model)
print("ready", flush=True)
for version in range(first, first + count):
    for leaf, _ in model.leaves.values():
        leaf[...] = version
    ut.save(tree, path)
    print(version, flush=True)
"""


def model(value: float = -1) -> Mod:
    return Mod("Net", **{f"w{i}": np.full(SIZE, value, np.float32) for i in range(TENSORS)})


def version_of(path: Path) -> int:
    """The one version every tensor of the checkpoint holds: it must load whole, and agree."""
    m = model()
    assert ut.load(ut.ParamTree(FakeAdapter("torch"), m), path) == ([], [])
    found = set()
    for leaf, _ in m.leaves.values():
        seen = np.unique(leaf)
        assert len(seen) == 1, f"a torn tensor: {seen[:10]}"
        found.add(float(seen[0]))
    assert len(found) == 1, f"tensors from different saves: {sorted(found)}"
    value = found.pop()
    assert value == int(value) >= 0
    return int(value)


def child(path: Path, first: int, count: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "helpers")]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), *map(str, (first, count, SIZE, TENSORS))],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def temporaries(folder: Path, name: str) -> list[str]:
    """The other files in ``folder``: each must be a temporary of ``name``."""
    others = sorted(n for n in os.listdir(folder) if n != name)
    assert all(fnmatch.fnmatch(n, f".{name}.*.tmp") for n in others), others
    return others


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL")
def test_a_save_killed_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "m.safetensors"
    proc = child(path, 0, 1)  # version 0: one save run to its end, no kill
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.split() == ["0"]
    assert os.listdir(tmp_path) == [path.name]  # a clean save leaves no temporary
    assert version_of(path) == 0

    rng = random.Random(20240611)
    version, left = 0, 0  # left: kills that landed mid-write (a temporary stayed behind)
    for _ in range(KILLS):
        proc = child(path, version + 1, 10_000)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        done = [int(line) for line in out.split()]
        last = done[-1] if done else version  # the last save known to be complete
        found = version_of(path)
        # killed after the rename but before the print: the save it was doing is there, whole
        assert found in (last, last + 1), (found, last)
        before, left = left, len(temporaries(tmp_path, path.name))
        assert left in (before, before + 1)
        version = found
    print(
        f"{KILLS} kills, {left} mid-write (their temporaries left behind), last version {version}"
    )
    assert left >= 1  # the kills did land mid-write, not only between saves

    # a clean save over the survivors: the target is whole, their temporaries are not its own
    tree = ut.ParamTree(FakeAdapter("torch"), model(version + 1))
    ut.save(tree, path)
    assert version_of(path) == version + 1
    assert len(temporaries(tmp_path, path.name)) == left
    for name in temporaries(tmp_path, path.name):
        os.unlink(tmp_path / name)
    ut.save(tree, path)
    assert os.listdir(tmp_path) == [path.name]


class Failing(FakeAdapter):
    """Reads fail at the ``at``-th read: the save stops with half of the file written."""

    def __init__(self, at: int, error: BaseException) -> None:
        super().__init__("torch")
        self.at, self.error, self.reads = at, error, 0

    def read(self, leaf: np.ndarray) -> np.ndarray:
        self.reads += 1
        if self.reads == self.at:
            raise self.error
        return leaf


@pytest.mark.parametrize(
    "error", [RuntimeError("device lost"), KeyboardInterrupt()], ids=["exception", "interrupt"]
)
def test_a_save_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "m.safetensors"
    ut.save(ut.ParamTree(FakeAdapter("torch"), model(1)), path)
    old = path.read_bytes()
    with pytest.raises(type(error)):
        ut.save(ut.ParamTree(Failing(TENSORS // 2, error), model(2)), path)
    assert path.read_bytes() == old and version_of(path) == 1
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_first_save_leaves_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(RuntimeError):
        ut.save(ut.ParamTree(Failing(2, RuntimeError("device lost")), model()), path)
    assert os.listdir(tmp_path) == []


def test_a_clean_save_leaves_exactly_the_target(tmp_path):
    path = tmp_path / "m.safetensors"
    ut.save(ut.ParamTree(FakeAdapter("torch"), model(1)), path)  # a new file
    assert os.listdir(tmp_path) == [path.name] and version_of(path) == 1
    ut.save(ut.ParamTree(FakeAdapter("torch"), model(2)), str(path))  # over an existing one
    assert os.listdir(tmp_path) == [path.name] and version_of(path) == 2
