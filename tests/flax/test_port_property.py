"""Property: ``ut.port`` between random architectures either reproduces the source's outputs or
refuses with a ``PortError``; it never returns with different outputs.

Random architectures (``random_archs``: dense and conv layers, norms, and the parameterless
steps between them: activations as layers, functions or folded into the layer, pooling,
dropout in inference, flatten in either order, reshape) are built natively in PyTorch, Keras
(on jax), flax linen and flax NNX from one seeded spec each, and every ordered pair of the four
is ported in this one process with ``ut.port(src, dst)`` (strict, the default). The expected
value is the source model's own output on the same input; the destination's own output after
the port, put channels first as the source's, must equal it within float32 rounding
(``rtol=1e-4``, ``atol=1e-4 * max(1, max|expected|)``), or the port must have raised a
``PortError`` and left the destination's outputs as they were. Destinations that are no twin
of the source (a mutation: another padding, dilation, padding mode, swapped names, another
reshape order) must be refused, or ported with the same outputs.

Each pair counts what it tried, ported with equal outputs, refused (by the kind of the first
reason), and FAILED: ported with different outputs, or refused after writing. The test asserts
that nothing FAILED, that nothing but a ``PortError`` came out of ``ut.port``, and, so that it
cannot pass by refusing everything, that at least ``FLOOR`` (30%) of the twin architectures of
every pair port. ``pytest -s`` prints the counts; ``UNITREE_PROPERTY_REPORT=path.json`` (or
``.md``) writes them, with every port's outcome in the JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import random_archs as ra
import torch

os.environ.setdefault("KERAS_BACKEND", "jax")  # what nox sets; keras reads it at import
torch.set_num_threads(1)  # tiny models: threads only cost here

FRAMEWORKS = ("torch", "keras", "linen", "nnx")
PAIRS = [(a, b) for a in FRAMEWORKS for b in FRAMEWORKS if a != b]
SPECS = [ra.random_spec(seed) for seed in range(30)]  # 30 twins and 8-10 mutations per pair
FLOOR = 0.3  # of each pair's twins must port: the test cannot pass by refusing everything
LABEL = "flax environment: torch, keras (jax), linen, nnx"
TALLIES: dict[tuple[str, str], ra.Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """After the pairs: the table printed, and written where UNITREE_PROPERTY_REPORT says."""
    yield
    tallies = [TALLIES[p] for p in PAIRS if p in TALLIES]
    if tallies:
        print(f"\n{LABEL}\n{ra.table(tallies)}")
        if os.environ.get("UNITREE_PROPERTY_REPORT"):
            ra.write_report(os.environ["UNITREE_PROPERTY_REPORT"], LABEL, tallies)


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_port_reproduces_or_refuses(src: str, dst: str) -> None:
    TALLIES[(src, dst)] = tally = ra.run_pair(src, dst, SPECS)
    ra.assert_pair(tally, FLOOR)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(ra.HAND_SPECS))
def test_builders_compute_the_spec(framework: str, name: str) -> None:
    """Each builder computes the spec's function in every spelling it draws (both flatten
    orders among them): known values set through the framework's own API, against numpy
    (PyTorch's meaning). Independent of unitree: a twin is a twin before any port is tried."""
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
