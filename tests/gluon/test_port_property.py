"""Property: ``ut.port`` between random architectures either reproduces the source's outputs or
refuses with a ``PortError``; it never returns with different outputs. MXNet Gluon against
PyTorch and Keras (on its torch backend), every ordered pair, in this one process, strict and
with ``check=``.

The same test as tests/flax/test_port_property.py (its docstring says what is built, compared,
counted and asserted), in the environment that has MXNet 1.9.1: Gluon's spellings add ``Dense``
with an activation folded in, ``Dense`` flattening an N-d input itself, and blocks people write
for a transpose or a reshape. Gluon models run on classic ``mx.nd`` arrays. Strict: at least
``FLOOR["strict"]`` (40%) of every pair's twins port (measured: 15 to 16 of 30); with check=,
every twin ports or is refused for one of ``random_archs.KNOWN_LIMITS``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import mxnet as mx
import pytest
import random_archs as ra
import torch
from mxnet import npx

os.environ.setdefault("KERAS_BACKEND", "torch")  # what nox sets; keras reads it at import
torch.set_num_threads(1)  # tiny models: threads only cost here

FRAMEWORKS = ("gluon", "torch", "keras")
PAIRS = [(a, b) for a in FRAMEWORKS for b in FRAMEWORKS if a != b]
SPECS = [ra.random_spec(seed) for seed in range(30)]  # 30 twins and 8-10 mutations per pair
FLOOR = {"strict": 0.4, "check": 1.0}  # of each pair's twins that must port (see above)
LABEL = "gluon environment: gluon, torch, keras (torch)"
TALLIES: dict[tuple[str, str, str], ra.Tally] = {}


@pytest.fixture(autouse=True)
def classic_arrays() -> Iterator[None]:
    """The builders make Gluon models of classic ``mx.nd`` arrays; restored after."""
    was = mx.util.is_np_array(), mx.util.is_np_shape()
    npx.reset_np()
    yield
    mx.util.set_np(shape=was[1], array=was[0])


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """After the pairs: the table printed, and written where UNITREE_PROPERTY_REPORT says."""
    yield
    tallies = [TALLIES[k] for m in ra.MODES for p in PAIRS if (k := (m, *p)) in TALLIES]
    if tallies:
        print(f"\n{LABEL}\n{ra.table(tallies)}")
        if os.environ.get("UNITREE_PROPERTY_REPORT"):
            ra.write_report(os.environ["UNITREE_PROPERTY_REPORT"], LABEL, tallies)


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
@pytest.mark.parametrize("mode", ra.MODES)
def test_port_reproduces_or_refuses(mode: str, src: str, dst: str) -> None:
    TALLIES[(mode, src, dst)] = tally = ra.run_pair(src, dst, SPECS, mode)
    ra.assert_pair(tally, FLOOR[mode])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(ra.HAND_SPECS))
def test_builders_compute_the_spec(framework: str, name: str) -> None:
    """Each builder computes the spec's function in every spelling it draws (both flatten
    orders, Gluon's flattening Dense among them): known values set through the framework's
    own API, against numpy (PyTorch's meaning). Independent of unitree."""
    specs = ra.hand_spellings(framework, name)
    for spec in specs:
        ra.check_builder(framework, spec)
    if name != "mlp":
        assert {ra.spelling(framework, s).flatten_other for s in specs} == {False, True}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_builders_compute_the_random_specs(framework: str) -> None:
    """The same for a third of the random specs the pairs port (their twins), and for every
    mutation the pairs build: each computes what the reference says it does (and no twin)."""
    for spec in SPECS[::3]:
        ra.check_builder(framework, spec)
    mutated = ra.mutations(SPECS, framework)
    for spec in SPECS:
        for mutation in mutated.get(spec.seed, []):
            ra.check_builder(framework, spec, mutation)
