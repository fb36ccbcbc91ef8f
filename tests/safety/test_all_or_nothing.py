"""All or nothing: a write of unitree that fails, at whatever step and for whatever reason,
leaves the native model exactly as it was: every value bit for bit, every native object the
same one (the builders' ``native_state``: the framework's own view), the same outputs.

Failures are injected into the adapter at every step of each multi-tensor write: raised
before the framework writes, or after it wrote (a framework that fails halfway through its
own update). Each operation then runs once without a failure, to show that it does change
the model: the unchanged model is the rollback's doing, not a write that never happened.

A write the adapter says cannot fail once its value is validated (``write_can_fail``: a host
tensor of torch, Keras or Flax) is not journaled by a load or a port without a check: such
tests declare the adapter's writes fallible, the premise of a framework failing halfway, and
one test shows what happens where that premise is false and a failure comes anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from unitree.conformance import backends
from unitree.conformance.builders import torch as torch_builder
from unitree.conformance.cases import TOKENS, X

import unitree as ut

BUILDERS = [
    pytest.param(b, d, id=f"{b.label}-{d}") for b in backends.selected() for d in b.devices()
]
State = dict[str, tuple[int, np.ndarray]]


class Injected(Exception):
    """The failure a test injects."""


def assert_same(before: State, after: State) -> None:
    assert list(after) == list(before)
    for key, (ident, value) in before.items():
        now_ident, now = after[key]
        assert now_ident == ident, f"{key}: another native object than before"
        assert (now.dtype, now.shape) == (value.dtype, value.shape), key
        assert now.tobytes() == value.tobytes(), f"{key}: changed"


def assert_changed(before: State, after: State) -> None:
    assert any(
        after[k][1].tobytes() != v.tobytes() or after[k][0] != i for k, (i, v) in before.items()
    ), "the operation changed nothing: the test would prove nothing"


def inject(
    monkeypatch: pytest.MonkeyPatch, target: Any, names: tuple[str, ...], at: int, after: bool
) -> list[int]:
    """Make the calls to ``target``'s methods ``names`` raise :class:`Injected` at call number
    ``at`` (counted over all of them, once): before the real call, or ``after`` it ran.
    Returns the running count of calls."""
    calls = [0]
    for name in names:
        real = getattr(target, name)

        def fake(*args: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            n = calls[0]
            calls[0] += 1
            if n == at and not after:
                raise Injected(f"call {n}")
            out = _real(*args, **kwargs)
            if n == at:
                raise Injected(f"call {n}, after it wrote")
            return out

        monkeypatch.setattr(target, name, fake)
    return calls


WRITES = ("write", "write_dlpack", "writable_view")  # every way a value reaches the framework


def every_step(
    b: ModuleType,
    make: Callable[[], ut.ParamTree],
    operation: Callable[[ut.ParamTree], Any],
    target: Callable[[ut.ParamTree], Any] = lambda tree: tree._adapter,
    names: tuple[str, ...] = WRITES,
) -> int:
    """Fail ``operation`` at its first step, then its second, ... until it runs through; after
    each failure the model is as it was, and the run that went through changed it. Both ways:
    a failure before the framework's own write, and one after it. Returns the step count."""
    counts = []
    for after in (False, True):
        tree = make()
        before, output = b.native_state(tree), b.port_forward(tree, TOKENS)
        for at in range(1000):
            with pytest.MonkeyPatch.context() as m:
                m.setattr(tree._adapter, "write_can_fail", lambda leaf: True)  # the premise
                calls = inject(m, target(tree), names, at, after)
                try:
                    operation(tree)
                except Injected:
                    assert_same(before, b.native_state(tree))
                    if at == 1:  # and it runs as before (once: a forward pass can be slow)
                        np.testing.assert_array_equal(b.port_forward(tree, TOKENS), output)
                    continue
            assert calls[0] == at, "the operation swallowed the injected failure"
            break
        assert_changed(before, b.native_state(tree))
        counts.append(at)
    assert counts[0] == counts[1] > 1
    return counts[0]


def refused(
    b: ModuleType, tree: ut.ParamTree, operation: Callable[[], Any], error: type, match: str
) -> None:
    """``operation`` raises ``error`` naming ``match``, and the model is as it was."""
    before = b.native_state(tree)
    with pytest.raises(error, match=match):
        operation()
    assert_same(before, b.native_state(tree))


# Models are built from seed 0 (the builders' default); what is written into them comes from
# a model built from seed 1: other values, so that a write that went through changed them.
OTHER = 1


def source(b: ModuleType, device: str) -> dict[str, np.ndarray]:
    """A canonical state dict for the port model of ``b``, with other values than a fresh one."""
    tree = b.wrap(b.port_model(device, seed=OTHER))
    return {k: np.array(v) for k, v in tree.state_dict().items()}


# -- the multi-tensor writes, failing at every step ----------------------------------------------
@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_load_state_dict_fails_at_every_step(b: ModuleType, device: str) -> None:
    sd = source(b, device)
    steps = every_step(b, lambda: b.wrap(b.port_model(device)), lambda t: t.load_state_dict(sd))
    assert steps >= len(sd) - 2  # every tensor (torch's counters aside) is a step


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_load_fails_at_every_step(b: ModuleType, device: str, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ut.save(b.wrap(b.port_model(device, seed=OTHER)), path)
    every_step(b, lambda: b.wrap(b.port_model(device)), lambda t: ut.load(t, path))


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_load_fails_when_the_file_fails_at_every_tensor(
    b: ModuleType, device: str, tmp_path: Path
) -> None:
    """The file, not the framework, fails halfway: a read error at the n-th tensor, where the
    adapter's writes can fail too (so that the load journals: see the next test)."""
    from unitree import _files

    path = tmp_path / "m.safetensors"
    ut.save(b.wrap(b.port_model(device, seed=OTHER)), path)
    every_step(
        b,
        lambda: b.wrap(b.port_model(device)),
        lambda t: ut.load(t, path),
        target=lambda _: _files.Checkpoint,
        names=("read_into",),
    )


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_a_load_keeps_no_copy_where_writes_cannot_fail(
    b: ModuleType, device: str, tmp_path: Path
) -> None:
    """Where the adapter says a validated write cannot fail, a load journals nothing (one copy
    per tensor, not two); a failure that comes anyway (the file, here) says that the model is
    partly written, and a load of the same file then puts it right."""
    from unitree import _files

    path = tmp_path / "m.safetensors"
    ut.save(b.wrap(b.port_model(device, seed=OTHER)), path)
    tree = b.wrap(b.port_model(device))
    fallible = [p.path for p in tree.parameters() if tree._adapter.write_can_fail(p._leaf)]
    if fallible:  # this adapter journals: every_step above proved it all or nothing
        assert b.label == "gluon" or device != "cpu", fallible
        return
    expected = {
        k: v.copy() for k, v in b.wrap(b.port_model(device, seed=OTHER)).state_dict().items()
    }
    before = b.native_state(tree)
    with pytest.MonkeyPatch.context() as m:
        inject(m, _files.Checkpoint, ("read_into",), 2, False)
        with pytest.raises(Injected) as e:
            ut.load(tree, path)
    assert any("the model is partly written: " in n for n in e.value.__notes__)
    assert_changed(before, b.native_state(tree))  # as the note says: no copy, no undo
    ut.load(tree, path)
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_port_fails_at_every_step(b: ModuleType, device: str) -> None:
    src = torch_builder.wrap(torch_builder.port_model("cpu", seed=OTHER))
    # the port models flatten inside their calls: the check decides that layout
    every_step(b, lambda: b.wrap(b.port_model(device)), lambda t: ut.port(src, t, check=TOKENS))


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_tie_fails_at_every_step(b: ModuleType, device: str) -> None:
    if not b.can_tie:
        tree = b.wrap(b.deck_tied(device, X, tied=False)[0])
        refused(b, tree, lambda: tree.tie(2, 4), ut.UnsupportedError, "tie")
        return
    i, j = b.deck_tied(device, X, tied=False)[1]
    counts = []
    for after in (False, True):
        tree = b.wrap(b.deck_tied(device, X, tied=False)[0])
        before, output = b.native_state(tree), b.forward(tree, X)
        for at in range(10):
            with pytest.MonkeyPatch.context() as m:
                calls = inject(m, tree._adapter, ("share",), at, after)
                try:
                    tree.tie(i, j)
                except Injected:
                    assert_same(before, b.native_state(tree))
                    assert tree.ties() == []
                    np.testing.assert_array_equal(b.forward(tree, X), output)
                    continue
            assert calls[0] == at
            break
        assert tree[i].weight is tree[j].weight
        counts.append(at)
    assert counts == [2, 2]  # weight and bias


# -- refused before anything is written -----------------------------------------------------------
@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_load_state_dict_refuses_bad_entries(b: ModuleType, device: str) -> None:
    tree = b.wrap(b.port_model(device))
    sd = source(b, device)
    last = list(sd)[-1]
    bad = {
        "shape": ({**sd, last: np.zeros((3, 3, 3), np.float32)}, ut.StateDictError, "shape"),
        "dtype": ({**sd, last: sd[last].astype(np.complex64)}, ut.StateDictError, "dtype"),
        "text": ({**sd, last: np.full(sd[last].shape, "a")}, ut.StateDictError, "dtype"),
        "missing": (
            {k: v for k, v in sd.items() if k != "out.weight"},
            ut.StateDictError,
            "missing",
        ),
        "unexpected": ({**sd, "out.scale": sd[last]}, ut.StateDictError, "unexpected"),
    }
    for state, error, match in bad.values():
        refused(b, tree, lambda s=state: tree.load_state_dict(s), error, match)
    nan = {**sd, last: np.full_like(sd[last], np.nan)}
    refused(
        b,
        tree,
        lambda: tree.load_state_dict(nan, error_if_nonfinite=True),
        ut.NonFiniteError,
        "NaN",
    )


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_load_refuses_bad_files(b: ModuleType, device: str, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tree = b.wrap(b.port_model(device))
    sd = source(b, device)
    last = list(sd)[-1]
    files = {
        "shape": ({**sd, last: np.zeros((3, 3, 3), np.float32)}, ut.StateDictError, "shape"),
        "lossy": ({k: v.astype(np.float64) for k, v in sd.items()}, ut.StateDictError, "lossy"),
        "missing": (
            {k: v for k, v in sd.items() if k != "out.weight"},
            ut.StateDictError,
            "missing",
        ),
        "nan": ({**sd, last: np.full_like(sd[last], np.inf)}, ut.NonFiniteError, "infinite"),
    }
    for what, (state, error, match) in files.items():
        path = tmp_path / f"{what}.safetensors"
        save_file({k: np.array(v, order="C") for k, v in state.items()}, str(path))
        refused(b, tree, lambda p=path: ut.load(tree, p, error_if_nonfinite=True), error, match)


@pytest.mark.parametrize(("b", "device"), BUILDERS)
def test_port_refuses(b: ModuleType, device: str) -> None:
    tree = b.wrap(b.port_model(device))
    torch_tree = torch_builder.wrap(torch_builder.port_model("cpu", seed=OTHER))
    torch_tree["out.bias"].set(np.full(torch_tree["out.bias"].shape, np.nan, np.float32))
    refused(
        b,
        tree,
        # the port model flattens inside its call: the check decides that layout
        lambda: ut.port(torch_tree, tree, error_if_nonfinite=True, check=TOKENS),
        ut.NonFiniteError,
        "NaN",
    )
    other = torch_builder.wrap(torch_builder.deck_mlp("cpu", X))
    refused(b, tree, lambda: ut.port(other, tree), ut.PortError, "nothing was written")


# -- one tensor ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("b", "device"), BUILDERS)
@pytest.mark.parametrize("path", ["fc.weight", "fc.bias", "conv.weight"])
def test_set_and_setitem_refuse(b: ModuleType, device: str, path: str) -> None:
    tree = b.wrap(b.port_model(device))
    p = tree[path]
    good = np.ones(p.shape, np.float32)
    for value, error, match in [
        (np.ones((*p.shape, 2), np.float32), ut.ShapeError, "shape"),
        (np.ones(p.shape, np.complex64), ut.ValueTypeError, "kind"),
        ("text", ut.ValueTypeError, "numeric"),
        (np.full(p.shape, np.nan, np.float32), ut.NonFiniteError, "NaN"),
    ]:
        refused(b, tree, lambda v=value: p.set(v, error_if_nonfinite=True), error, match)
    for index, value, error in [
        ((99,), 1.0, ut.ShapeError),
        ((0,), np.ones(7, np.float32), ut.ShapeError),
        ((0,), "text", ut.ValueTypeError),
    ]:
        refused(b, tree, lambda i=index, v=value: p.__setitem__(i, v), error, "Nothing was written")
    # the framework fails: nothing was written
    for write in (lambda: p.set(good), lambda: p.__setitem__((0,), 2.0)):
        with pytest.MonkeyPatch.context() as m:
            inject(m, tree._adapter, WRITES, 0, False)
            refused(b, tree, write, Injected, "call 0")
    p.set(good)  # and without a failure it writes
    np.testing.assert_array_equal(p.numpy(), good)
