"""Property: ``ut.port`` between random architectures either reproduces the source's outputs or
refuses with a ``PortError``; it never returns with different outputs.

Random architectures (``random_archs``: dense and conv layers, norms, and the parameterless
steps between them: activations as layers, functions or folded into the layer, pooling,
dropout in inference, flatten in either order, reshape) are built natively in PyTorch, Keras
(on jax), flax linen and flax NNX from one seeded spec each, and every ordered pair of the four
is ported in this one process, in two modes: ``strict`` (``ut.port(src, dst)``, the default)
and ``check`` (the same with ``check=ut.Check(input in the source's layout, dst_inputs=the
same input in the destination's, dst_outputs=back into the source's layout)``). The expected
value is the source model's own output, run natively, on the check's input and on a held-out
one; the destination's own outputs after the port, put channels first as the source's, must
equal them within float32 rounding (``random_archs.close``), or the port must have raised a
``PortError`` and left the destination's outputs as they were. Destinations that are no twin
of the source (a mutation: another padding, dilation, padding mode, swapped names, another
reshape order) must be refused, or ported with the same outputs; swapped names (one order in
the names, another in the call) only a check can see, so under strict they are counted apart
("only check= sees") and not asserted.

Each pair counts what it tried, ported with equal outputs, refused (by the kind of the first
reason), and FAILED: ported with different outputs, refused after writing, or, with check=,
returned without a passing check. The test asserts that nothing FAILED, that nothing but a
``PortError`` came out of ``ut.port``, and, so that it cannot pass by refusing everything:
strict, at least ``FLOOR["strict"]`` of every pair's twins port (30%; measured: 11 of 30 in the
pairs with linen, whose ``@nn.compact`` submodules report no settings, 14 to 17 of 30 in the
others); check, every twin ports, or is refused for one of ``random_archs.KNOWN_LIMITS`` (the
library's limits this test knows, each by the spelling that meets it and its reason).
``pytest -s`` prints the counts; ``UNITREE_PROPERTY_REPORT=path.json`` (or ``.md``) writes them,
with every port's outcome in the JSON.
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
FLOOR = {"strict": 0.3, "check": 1.0}  # of each pair's twins that must port (see above)
LABEL = "flax environment: torch, keras (jax), linen, nnx"
TALLIES: dict[tuple[str, str, str], ra.Tally] = {}


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
