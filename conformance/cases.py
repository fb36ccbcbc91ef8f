"""Every example of the "Parameter Management" deck, written once against the public API.

A case is a function ``case(b, device)``: ``b`` is a builder module (see
``builder.py``), ``device`` one of ``b.devices()``. It raises
AssertionError when the backend disagrees with the deck. Expected values come
from outside unitree: the deck's printed output, the framework's own API
(``b.native_value``), or gradients computed by hand in numpy.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

import unitree as ut

from .builder import Builder

Case = Callable[[Builder, str], None]
CASES: list[Case] = []


def case(fn: Case) -> Case:
    CASES.append(fn)
    return fn


X = np.random.default_rng(0).random((2, 4), dtype=np.float32)  # the deck's torch.rand(2, 4)

# -- comparing float32 results -----------------------------------------------------------------

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7: float32's rounding, relative to a value's size
ULPS = 64  # the rounding a comparison allows by default, in EPS32 of its scale
# One function computed by two frameworks, each summing in its own order through several
# layers (an LSTM, norms that divide by a standard deviation): in EPS32 of the largest output.
# The port model differs by up to 17 of them over 30 seeds; a port that mixed values up, by
# the size of the output.
PORT_ULPS = 256


def assert_close(
    actual: object,
    desired: object,
    *,
    scale: object = None,
    ulps: float = ULPS,
    err_msg: str = "",
) -> None:
    """``actual`` is ``desired`` up to float32 rounding: ``|actual - desired| <= ulps * EPS32 *
    scale`` at every element (NaN is never close), and the shapes are equal.

    ``scale`` is the size of the values the computation combined, a number or an array that
    broadcasts against ``desired``: for a sum or a matmul, the sum of the absolute values of
    its terms, not the size of the result (cancellation leaves a tiny result with an error
    as large as the terms'). By default, the largest ``|desired|``. The best ``desired`` is the
    same computation in float64; ``ulps`` grows with the depth of the computation.
    """
    a, d = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    where = f"{err_msg}: " if err_msg else ""
    if a.shape != d.shape:
        raise AssertionError(f"{where}shape {a.shape}, expected {d.shape}")
    s = np.abs(d).max(initial=0.0) if scale is None else np.asarray(scale, np.float64)
    tol = np.broadcast_to(ulps * EPS32 * s, d.shape)
    err = np.abs(a - d)
    bad = ~(err <= tol)
    if bad.any():
        worst = np.unravel_index(
            np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), d.shape
        )
        raise AssertionError(
            f"{where}{int(bad.sum())} of {d.size} values differ by more than {ulps} float32 "
            f"roundings (EPS32 {EPS32:.3g}) of their scale; the worst at {worst}: actual "
            f"{a[worst]!r}, desired {d[worst]!r}, |difference| {err[worst]:.3g}, tolerance "
            f"{tol[worst]:.3g}"
        )


def assert_differ(
    actual: object, other: object, *, scale: object = None, rel: float = 1e-3, err_msg: str = ""
) -> None:
    """``actual`` differs from ``other`` by far more than rounding: somewhere by more than
    ``rel`` of ``scale`` (by default the largest magnitude of either), what a check that
    something changed asks for (an output before and after a write, two different models)."""
    a, o = np.asarray(actual, np.float64), np.asarray(other, np.float64)
    if scale is None:
        scale = max(np.abs(a).max(initial=0.0), np.abs(o).max(initial=0.0))
    diff = np.abs(a - o).max(initial=0.0)
    if not diff > rel * float(scale):
        where = f"{err_msg}: " if err_msg else ""
        raise AssertionError(
            f"{where}the values differ by at most {diff:.3g}, not more than {rel} of their "
            f"scale {float(scale):.3g}: nothing changed"
        )


TRAVERSAL = [("0.weight", (8, 4)), ("0.bias", (8,)), ("2.weight", (1, 8)), ("2.bias", (1,))]

PICTURE = """\
{sequential}
├─ 0: {dense}
│  ├─ weight (8, 4)
│  └─ bias (8,)
├─ 1: {relu} (no params)
└─ 2: {dense}
   ├─ weight (1, 8)
   └─ bias (1,)"""


def mlp_gradients(
    W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray, X: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """loss = sum(W2 relu(W1 x + b1) + b2) and its gradients, by hand, in float64."""
    W1, b1, W2, b2, X = (np.asarray(a, np.float64) for a in (W1, b1, W2, b2, X))
    H = X @ W1.T + b1
    A = np.maximum(H, 0)
    Y = A @ W2.T + b2
    dH = np.ones_like(Y) @ W2 * (H > 0)
    grads = [dH.T @ X, dH.sum(0), A.sum(0, keepdims=True), np.full(b2.shape, len(X), np.float64)]
    return float(Y.sum()), grads


def mlp_output(
    W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray, X: np.ndarray
) -> np.ndarray:
    """W2 relu(W1 x + b1) + b2 for each row x of X, in float64. On the absolute values of its
    arguments: the sums of the absolute values of the terms, the scale of float32's error."""
    W1, b1, W2, b2, X = (np.asarray(a, np.float64) for a in (W1, b1, W2, b2, X))
    return np.maximum(X @ W1.T + b1, 0) @ W2.T + b2


def deck_paths(b: Builder) -> list[str]:
    """The four parameter paths of the deck's toy model on ``b``: its two dense layers' positions."""
    i, j = b.deck_layers
    return [f"{i}.weight", f"{i}.bias", f"{j}.weight", f"{j}.bias"]


@case
def toy_model(b: Builder, device: str) -> None:
    """The deck's first example: ``net(X).shape`` is (2, 1); the tree wraps that net."""
    tree = b.wrap(b.deck_mlp(device, X))
    assert b.forward(tree, X).shape == (2, 1)
    assert tree.backend == b.name
    assert {p.device for p in tree.parameters()} == {device}


@case
def picture(b: Builder, device: str) -> None:
    """``print(tree)`` draws the deck's picture of the toy model (dense, ReLU, dense)."""
    tree = b.wrap(b.mlp(device, X))
    assert str(tree) == PICTURE.format(**b.names), str(tree)


@case
def direct_access(b: Builder, device: str) -> None:
    """``net[2].state_dict()``: the leaves of the last layer, reached by position, name or path."""
    tree = b.wrap(b.deck_mlp(device, X))
    j = b.deck_layers[1]
    layer = tree[j]
    assert layer is tree[str(j)] and layer.path == str(j) and layer.type_name == b.names["dense"]
    assert layer.weight is tree[f"{j}.weight"] is tree[j]["weight"]
    sd = layer.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == [("weight", (1, 8)), ("bias", (1,))]
    for leaf in ("weight", "bias"):
        np.testing.assert_array_equal(sd[leaf], b.native_value(tree, j, leaf))
        assert getattr(layer, leaf).dtype == "float32"
    for k in range(len(tree)):
        if k not in b.deck_layers:  # ReLU, Flatten: no parameters of their own
            assert list(tree[k].named_parameters()) == [], k


@case
def tensor_inside(b: Builder, device: str) -> None:
    """``type(net[2].bias), net[2].bias.data``: the framework's parameter, and the tensor in it."""
    tree = b.wrap(b.deck_mlp(device, X))
    j = b.deck_layers[1]
    bias = tree[j].bias
    assert b.is_parameter(bias.native), type(bias.native)
    assert b.is_tensor(bias.data), type(bias.data)
    np.testing.assert_array_equal(bias.numpy(), b.native_value(tree, j, "bias"))
    assert bias.trainable and not bias.numpy().flags.writeable


@case
def gradients(b: Builder, device: str) -> None:
    """``.grad`` is None before backward, and after it holds the gradient computed by hand."""
    tree = b.wrap(b.deck_mlp(device, X))
    assert all(p.grad is None for p in tree.parameters())
    values = [p.numpy() for p in tree.parameters()]
    want_loss, grads = mlp_gradients(*values, X)
    want = dict(zip(deck_paths(b), grads))
    # the same sums over the absolute values of their terms: the scale of float32's rounding
    # (the loss sums terms of either sign, and can be far smaller than they are)
    loss_scale, grad_scales = mlp_gradients(*map(np.abs, values), X)
    scale = dict(zip(deck_paths(b), grad_scales))
    loss = tree.backward(b.loss, X)
    assert_close(loss, want_loss, scale=loss_scale, err_msg="loss")
    assert [path for path, _ in tree.named_parameters()] == list(want)
    for path, p in tree.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, path
        assert_close(p.grad, want[path], scale=scale[path], err_msg=path)
    # as in torch: a second backward adds to the gradients, zero_grad() forgets them
    tree.backward(b.loss, X)
    for path, p in tree.named_parameters():
        assert_close(p.grad, 2 * want[path], scale=2 * scale[path], err_msg=path)
    j = b.deck_layers[1]
    tree[j].zero_grad()  # a subtree: only its own
    cleared = list(tree[j].parameters())
    assert all((p.grad is None) == (p in cleared) for p in tree.parameters())
    tree.zero_grad()
    assert all(p.grad is None for p in tree.parameters())
    tree.backward(b.loss, X)
    for path, p in tree.named_parameters():
        assert_close(p.grad, want[path], scale=scale[path], err_msg=path)


@case
def traversal(b: Builder, device: str) -> None:
    """``named_parameters()`` walks the tree: four dotted paths and shapes, in the model's order.

    The deck's own model is numbered by its own positions (Keras puts a Flatten first, Gluon
    puts the activation inside Dense); dense, ReLU, dense reads exactly as the deck prints it
    on every backend.
    """
    want = list(zip(deck_paths(b), [s for _, s in TRAVERSAL]))
    tree = b.wrap(b.deck_mlp(device, X))
    assert [(k, p.shape) for k, p in tree.named_parameters()] == want
    assert list(tree.parameters()) == [p for _, p in tree.named_parameters()]
    assert [(k, v.shape) for k, v in tree.state_dict().items()] == want
    assert [p.path for p in tree.select("*.bias")] == [want[1][0], want[3][0]]
    assert list(tree.named_buffers()) == [] and tree.ties() == []
    tree = b.wrap(b.mlp(device, X))
    assert [(k, p.shape) for k, p in tree.named_parameters()] == TRAVERSAL


@case
def tying(b: Builder, device: str) -> None:
    """The shared layer: one parameter set at both positions; a write through one is seen through both."""
    net, (i, j) = b.deck_tied(device, X)
    tree = b.wrap(net)
    assert tree[i].weight is tree[j].weight and tree[i].bias is tree[j].bias
    assert (f"{i}.weight", f"{j}.weight") in tree.ties() and (
        f"{i}.bias",
        f"{j}.bias",
    ) in tree.ties()
    assert tree[j].weight.paths == (f"{i}.weight", f"{j}.weight")
    assert f"{j}.weight" not in dict(tree.named_parameters())
    tree[i].weight[0, 0] = 100
    assert tree[j].weight[0, 0] == 100
    assert b.native_value(tree, j, "weight")[0, 0] == 100  # the framework sees it too


def tied_and_untied(b: Builder, device: str) -> tuple:
    """The deck's shared-layer model, and a copy with two separate layers holding the same values.

    The values are positive, as X is: every ReLU is active, so both uses of the shared layer
    contribute a gradient (a random init can leave the second use dead, and its part zero).
    """
    tied, (i, j) = b.deck_tied(device, X)
    untied, _ = b.deck_tied(device, X, tied=False)
    t, u = b.wrap(tied), b.wrap(untied)
    rng = np.random.default_rng(1)
    t.load_state_dict(
        {path: rng.uniform(0.1, 0.5, p.shape).astype(p.dtype) for path, p in t.named_parameters()}
    )
    u.load_state_dict({path: t[path].numpy() for path, _ in u.named_parameters()})
    return t, u, (i, j)


@case
def tied_gradients(b: Builder, device: str) -> None:
    """Gradients accumulate over both uses: tied grad == sum of an untied copy's grads at both positions."""
    t, u, (i, j) = tied_and_untied(b, device)
    # every value and input positive: no sum cancels, the largest value is the scale
    assert_close(b.forward(u, X), b.forward(t, X))
    t.backward(b.loss, X)
    u.backward(b.loss, X)
    for leaf in ("weight", "bias"):
        total = u[i][leaf].grad + u[j][leaf].grad
        assert_close(t[i][leaf].grad, total, err_msg=leaf)
        assert_differ(t[i][leaf].grad, u[i][leaf].grad, err_msg=leaf)  # not just the first use
    for path, p in u.named_parameters():
        if not path.startswith((f"{i}.", f"{j}.")):
            assert_close(t[path].grad, p.grad, err_msg=path)


@case
def tie(b: Builder, device: str) -> None:
    """``tree.tie(i, j)`` turns the untied copy into the deck's shared-layer model, natively."""
    t, u, (i, j) = tied_and_untied(b, device)
    if not b.can_tie:  # flax linen: sharing is in the module definition, not in the values
        before = u.state_dict()
        try:
            u.tie(i, j)
        except NotImplementedError as e:
            assert "definition" in str(e), e  # says how to share instead
        else:
            raise AssertionError(f"tie() on {b.label} should explain why it cannot share")
        assert u.ties() == [] and all(np.array_equal(v, u[k].numpy()) for k, v in before.items())
        return
    u[j].weight[0, 0] = -5  # j's own values are dropped: it takes i's
    u.tie(i, j)
    assert u[i].weight is u[j].weight and u.ties() == t.ties()
    assert [k for k, _ in u.named_parameters()] == [k for k, _ in t.named_parameters()]
    assert_close(b.forward(u, X), b.forward(t, X))  # positive values: no cancellation
    u[i].bias[0] = 7
    assert b.native_value(u, j, "bias")[0] == 7


def checkpoint_dir() -> Path:
    """``UNITREE_CHECKPOINTS``, shared by the environments of one run, or a fresh folder."""
    global _folder
    if os.environ.get("UNITREE_CHECKPOINTS"):
        folder = Path(os.environ["UNITREE_CHECKPOINTS"])
    elif _folder is None:
        folder = _folder = Path(tempfile.mkdtemp(prefix="unitree-checkpoints-"))
    else:
        folder = _folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_folder: Path | None = None


@case
def save_load(b: Builder, device: str) -> None:
    """A checkpoint written on this backend loads onto a fresh model here, and so does every
    checkpoint another backend left in the shared folder: the same outputs on the same input."""
    folder = checkpoint_dir()
    tree = b.wrap(b.mlp(device, X))
    stem = f"deck-mlp-{b.label}-{device.replace(':', '')}"
    ut.save(tree, folder / f"{stem}.safetensors")
    expected = {"X": X.tolist(), "Y": b.forward(tree, X).tolist()}
    (folder / f"{stem}.json").write_text(json.dumps(expected))
    loaded = []
    for path in sorted(folder.glob("deck-mlp-*.safetensors")):
        record = json.loads(path.with_suffix(".json").read_text())
        fresh = b.wrap(b.mlp(device, X, seed=1))  # other values than the saved model's
        assert ut.load(fresh, path) == ([], [])
        Xs = np.asarray(record["X"], np.float32)
        # two float32 runs, in other orders: the scale is the sums of the terms' magnitudes
        scale = mlp_output(*map(np.abs, fresh.state_dict().values()), np.abs(Xs))
        assert_close(b.forward(fresh, Xs), np.asarray(record["Y"]), scale=scale, err_msg=path.name)
        loaded.append(path.name)
    assert f"{stem}.safetensors" in loaded
    # what crossed between environments, for the run to check (nox's matrix session does)
    (folder / f"loaded-by-{b.label}-{device.replace(':', '')}.json").write_text(json.dumps(loaded))


# -- the port matrix: the same model on every backend, ported between any two --------------

TOKENS = np.random.default_rng(2).integers(0, 10, (2, 6))  # the port model's input
TIES = [("tied_a.weight", "tied_b.weight"), ("tied_a.bias", "tied_b.bias")]


def port(src: Builder, dst: Builder, device: str) -> None:
    """``ut.port`` from the port model on ``src`` to a fresh one on ``dst`` (random weights of
    its own): the same outputs on the same tokens, every canonical value equal, ties kept."""
    # other seeds: on one backend, two models with other values
    a, b = src.wrap(src.port_model(device, seed=0)), dst.wrap(dst.port_model(device, seed=1))
    want = src.port_forward(a, TOKENS)
    assert_differ(dst.port_forward(b, TOKENS), want)  # a port changes it
    # the port model flattens a conv output inside its call on every backend: no model says
    # in which order, so the port proves itself on the tokens and picks the layout that fits
    report = ut.port(a, b, check=TOKENS)
    assert report.check is not None and report.check.ok, report.check
    assert_close(dst.port_forward(b, TOKENS), want, ulps=PORT_ULPS)
    assert report.ties_kept == TIES and not report.ties_split, report
    assert b.ties() == TIES
    mine, theirs = a.state_dict(), b.state_dict()
    for key, value in mine.items():
        if key.endswith("bias_hh_l0") or key not in theirs:  # torch's batch-norm counter
            continue
        if key.endswith("bias_ih_l0"):  # Keras and Flax keep one LSTM bias: the sum of torch's
            other = key.replace("_ih_", "_hh_")
            scale = np.abs(value) + np.abs(mine[other])  # a sum of two: one rounding each
            value, theirs[key] = value + mine[other], theirs[key] + theirs[other]
            assert_close(theirs[key], value, scale=scale, ulps=2, err_msg=key)
            continue
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)  # copied: the same bits


def port_save(b: Builder, device: str) -> Path:
    """The port model on ``b`` saved in the shared folder, with its input and output."""
    tree = b.wrap(b.port_model(device))
    path = port_path(b, device)
    ut.save(tree, path)
    np.savez(path.with_suffix(".npz"), X=TOKENS, Y=b.port_forward(tree, TOKENS))
    return path


def port_path(b: Builder, device: str) -> Path:
    """Where ``port_save`` puts the port model of ``b`` on ``device``."""
    return checkpoint_dir() / f"port-{b.label}-{device.replace(':', '')}.safetensors"


def port_load(b: Builder, device: str, path: Path) -> None:
    """A port checkpoint saved by any backend, loaded onto a fresh port model on ``b``: the
    outputs the saver recorded, on the same tokens."""
    tree = b.wrap(b.port_model(device, seed=1))  # other values than the saved model's
    ut.load(tree, path)
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as record:
        assert_close(b.port_forward(tree, record["X"]), record["Y"], ulps=PORT_ULPS)
    assert tree.ties() == TIES


def port_files() -> list[Path]:
    """The port checkpoints in the shared folder, one per backend x device that saved one."""
    return sorted(checkpoint_dir().glob("port-*.safetensors"))


def port_label(path: Path) -> str:
    """``port-keras-jax-cpu.safetensors`` -> ``keras-jax cpu``."""
    label, _, device = path.stem.removeprefix("port-").rpartition("-")
    return f"{label} {device}"
