"""Porting between flax (linen and NNX) and PyTorch, and canonical checkpoints, layer by layer.

Each flax layer sits in a one-layer ``Sequential`` (path ``0``) beside its PyTorch twin in one,
with the same hyper-parameters. Both sides get random values (norm scales, biases and batch-norm
statistics too: a port that mixed two leaves up must not pass on default inits), set through
each framework's own API; the expectation is the other framework's output on the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import nnx
from unitree_checks import PORT_ULPS, assert_close, assert_differ

import unitree as ut

torch.set_num_threads(1)  # tiny layers: threads only cost here
RNG = np.random.default_rng(0)  # the inputs made at import, below


@pytest.fixture(autouse=True)
def fresh_rng() -> None:
    """Each test draws the same values, whatever ran before it."""
    global RNG
    RNG = np.random.default_rng(1)


def floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@dataclass
class Case:
    """One layer: its linen and NNX versions, its PyTorch twin, and an input (flax layout)."""

    linen: Callable[[], nn.Module]
    nnx: Callable[[nnx.Rngs], nnx.Module]
    torch: Callable[[], torch.nn.Module]
    x: np.ndarray
    channels: bool = False  # channels-last in flax, channels-first in torch: transpose
    call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    # what PyTorch must leave zero for the NNX layer to hold it (NNX's GRU: no b_hn)
    nnx_zero: Callable[[torch.nn.Module], None] | None = None
    # how a flatten inside a flax __call__ orders its output: unitree cannot see it, so says
    layouts: dict[str, str] | None = None


def _first(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)[0]  # LSTM / GRU: the whole sequence out


def _attend(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x, x, x, need_weights=False)[0]


def _no_candidate_bias(gru: torch.nn.Module) -> None:
    h = gru.hidden_size
    with torch.no_grad():
        gru.bias_hh_l0[2 * h :] = 0


def _flat(x: Any) -> Any:
    return x.reshape(x.shape[0], -1)


T = torch.nn
CASES = {
    "dense": Case(
        lambda: nn.Dense(3),
        lambda r: nnx.Linear(4, 3, rngs=r),
        lambda: T.Linear(4, 3),
        floats(2, 4),
    ),
    "conv1d": Case(
        lambda: nn.Conv(4, (3,), padding="VALID"),
        lambda r: nnx.Conv(3, 4, (3,), padding="VALID", rngs=r),
        lambda: T.Conv1d(3, 4, 3),
        floats(2, 7, 3),
        channels=True,
    ),
    "conv2d": Case(
        lambda: nn.Conv(4, (3, 2), strides=(2, 1), padding="VALID"),
        lambda r: nnx.Conv(3, 4, (3, 2), strides=(2, 1), padding="VALID", rngs=r),
        lambda: T.Conv2d(3, 4, (3, 2), stride=(2, 1)),
        floats(2, 6, 5, 3),
        channels=True,
    ),
    "conv3d": Case(
        lambda: nn.Conv(2, (2, 2, 2), padding="VALID"),
        lambda r: nnx.Conv(3, 2, (2, 2, 2), padding="VALID", rngs=r),
        lambda: T.Conv3d(3, 2, 2),
        floats(2, 3, 4, 3, 3),
        channels=True,
    ),
    "grouped_conv": Case(
        lambda: nn.Conv(6, (3, 3), feature_group_count=2, padding="VALID"),
        lambda r: nnx.Conv(4, 6, (3, 3), feature_group_count=2, padding="VALID", rngs=r),
        lambda: T.Conv2d(4, 6, 3, groups=2),
        floats(2, 5, 5, 4),
        channels=True,
    ),
    "depthwise_conv": Case(  # feature_group_count = in: each input channel alone, 2 outputs each
        lambda: nn.Conv(6, (3, 3), feature_group_count=3, padding="VALID"),
        lambda r: nnx.Conv(3, 6, (3, 3), feature_group_count=3, padding="VALID", rngs=r),
        lambda: T.Conv2d(3, 6, 3, groups=3),
        floats(2, 5, 5, 3),
        channels=True,
    ),
    "conv_transpose": Case(
        lambda: nn.ConvTranspose(4, (3, 2), strides=(2, 1), padding="VALID"),
        lambda r: nnx.ConvTranspose(3, 4, (3, 2), strides=(2, 1), padding="VALID", rngs=r),
        lambda: T.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1)),
        floats(2, 4, 3, 3),
        channels=True,
    ),
    "embedding": Case(
        lambda: nn.Embed(10, 4),
        lambda r: nnx.Embed(10, 4, rngs=r),
        lambda: T.Embedding(10, 4),
        RNG.integers(0, 10, (2, 5)),
    ),
    "layer_norm": Case(  # flax's default epsilon is 1e-6, PyTorch's 1e-5: say it on one side
        lambda: nn.LayerNorm(),
        lambda r: nnx.LayerNorm(4, rngs=r),
        lambda: T.LayerNorm(4, eps=1e-6),
        floats(2, 3, 4),
    ),
    "batch_norm": Case(  # flax's momentum 0.9 is PyTorch's 0.1; inference: running statistics
        lambda: nn.BatchNorm(use_running_average=True, momentum=0.9),
        lambda r: nnx.BatchNorm(4, momentum=0.9, use_running_average=True, rngs=r),
        lambda: T.BatchNorm1d(4).eval(),
        floats(3, 4),
    ),
    "group_norm": Case(
        lambda: nn.GroupNorm(num_groups=2),
        lambda r: nnx.GroupNorm(4, num_groups=2, rngs=r),
        lambda: T.GroupNorm(2, 4, eps=1e-6),
        floats(2, 5, 4),
        channels=True,
    ),
    "lstm": Case(
        lambda: nn.RNN(nn.LSTMCell(5)),
        lambda r: nnx.RNN(nnx.LSTMCell(4, 5, rngs=r)),
        lambda: T.LSTM(4, 5, batch_first=True),
        floats(2, 3, 4),
        call=_first,
    ),
    "optimized_lstm": Case(  # NNX's is fused (dense_i, dense_h: 4 gates each); linen's is not
        lambda: nn.RNN(nn.OptimizedLSTMCell(5)),
        lambda r: nnx.RNN(nnx.OptimizedLSTMCell(4, 5, rngs=r)),
        lambda: T.LSTM(4, 5, batch_first=True),
        floats(2, 3, 4),
        call=_first,
    ),
    "gru": Case(
        lambda: nn.RNN(nn.GRUCell(5)),
        lambda r: nnx.RNN(nnx.GRUCell(4, 5, rngs=r)),
        lambda: T.GRU(4, 5, batch_first=True),
        floats(2, 3, 4),
        call=_first,
        nnx_zero=_no_candidate_bias,
    ),
    # a dense layer fed by a flattened conv output: flax flattens (H, W, C), torch (C, H, W);
    # the flatten is a function inside Sequential's call, so the port is told which it is
    "conv_flatten_dense": Case(
        lambda: nn.Sequential([nn.Conv(3, (2, 2), padding="VALID"), _flat, nn.Dense(5)]),
        lambda r: nnx.Sequential(
            nnx.Conv(2, 3, (2, 2), padding="VALID", rngs=r), _flat, nnx.Linear(12, 5, rngs=r)
        ),
        lambda: T.Sequential(T.Conv2d(2, 3, 2), T.Flatten(), T.Linear(12, 5)),
        floats(2, 3, 3, 2),
        channels=True,
        layouts={"0.2": "channels_last"},
    ),
    "attention": Case(
        lambda: nn.MultiHeadDotProductAttention(num_heads=2),
        lambda r: nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=r),
        lambda: T.MultiheadAttention(8, 2, batch_first=True),
        floats(2, 3, 8),
        call=_attend,
    ),
}


# -- each framework's own API: build, randomize, run ---------------------------------------------
def _random_like(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name in ("var", "running_var"):  # variances stay positive
        return RNG.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.4 * RNG.standard_normal(shape)).astype(np.float32)


def torch_model(case: Case, random: bool = True) -> torch.nn.Sequential:
    model = T.Sequential(case.torch())
    if random:
        with torch.no_grad():
            for name, t in model.state_dict().items():
                if t.is_floating_point():
                    t.copy_(torch.from_numpy(_random_like(name.rpartition(".")[2], tuple(t.shape))))
    return model


def torch_out(case: Case, model: torch.nn.Sequential) -> np.ndarray:
    x = torch.from_numpy(case.x)
    if case.channels:
        x = x.movedim(-1, 1)
    with torch.no_grad():
        y = case.call(model[0], x)
    return (y.movedim(1, -1) if case.channels and y.ndim > 2 else y).numpy()


class Linen:
    """A linen model is its module and its variables; writes make new ones: tree.variables."""

    @staticmethod
    def tree(case: Case, random: bool = True, seed: int = 0) -> ut.ParamTree:
        module = nn.Sequential([case.linen()])
        variables = module.init(jax.random.key(seed), case.x)
        if random:
            variables = jax.tree_util.tree_map_with_path(
                lambda path, a: _random_like(path[-1].key, a.shape), variables
            )
        return ut.wrap(module, variables)

    @staticmethod
    def out(case: Case, tree: ut.ParamTree) -> np.ndarray:
        return np.asarray(tree.native.apply(tree.variables, case.x))


class NNX:
    """An NNX model holds its variables: a write replaces the array in the nnx.Variable."""

    @staticmethod
    def tree(case: Case, random: bool = True, seed: int = 0) -> ut.ParamTree:
        model = nnx.Sequential(case.nnx(nnx.Rngs(seed)))
        if random:
            for path, var in nnx.iter_graph(model):
                if isinstance(var, (nnx.Param, nnx.BatchStat)):
                    var[...] = _random_like(str(path[-1]), var[...].shape)
        return ut.wrap(model)

    @staticmethod
    def out(case: Case, tree: ut.ParamTree) -> np.ndarray:
        return np.asarray(tree.native(case.x))


APIS = {"linen": Linen, "nnx": NNX}


def close(flax_y: np.ndarray, torch_y: np.ndarray) -> None:
    """One function computed by flax and by torch, each summing in its own order: equal up to
    float32 rounding of the largest output (and the same shape)."""
    assert_close(flax_y, torch_y, ulps=PORT_ULPS)


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(params=list(APIS))
def api(request: pytest.FixtureRequest) -> Any:
    return APIS[request.param]


@pytest.mark.parametrize("name", list(CASES))
def test_port_both_ways_and_round_trip(api: Any, name: str, tmp_path: Path) -> None:
    """(a) torch -> flax, (b) flax -> torch, each with equal outputs on the same input; (c) a
    checkpoint of the flax layer loads onto another flax layer (every canonical value equal)
    and onto torch (equal outputs). One test: jax compiles each layer's ops once."""
    case = CASES[name]
    src = torch_model(case)
    if api is NNX and case.nnx_zero:
        case.nnx_zero(src[0])
    into = api.tree(case, seed=1)
    report = ut.port(src, into, layouts=case.layouts)
    assert report.settings == report.skipped == []
    assert all(p.src == p.dst and p.rule == "path" for p in report.pairs)
    close(api.out(case, into), torch_out(case, src))  # (a)

    tree = api.tree(case)
    dst = torch_model(case)
    ut.port(tree, dst, layouts=case.layouts)
    want = api.out(case, tree)
    close(want, torch_out(case, dst))  # (b)

    ut.save(tree, tmp_path / "m.safetensors")
    fresh = api.tree(case, random=False, seed=2)
    ut.load(fresh, tmp_path / "m.safetensors")
    assert_same_state(fresh.state_dict(), tree.state_dict())  # (c), onto flax
    ut.load(ut.wrap(src), tmp_path / "m.safetensors")
    close(want, torch_out(case, src))  # (c), onto torch


# -- recurrent layers: the kind of the RNN wrapper is its cell's -------------------------------
class Compact(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.RNN(nn.GRUCell(5))(x)  # the cell is made here: linen names it GRUCell_0


def test_recurrent_subtree_is_visible_and_canonical() -> None:
    x = floats(2, 3, 4)
    linen = Linen.tree(CASES["lstm"])
    assert linen[0].kind == "lstm" and linen[0].type_name == "RNN"
    assert linen["0.cell"].kind == "lstm" and linen["0.cell.ii"].type_name == "Dense"
    assert linen["0.cell.ii.weight"].shape == (5, 4)  # the gate's dense layer: (out, in)
    assert linen["0.cell.hi.bias"].shape == (5,)
    assert list(ut.wrap(T.Sequential(T.LSTM(4, 5))).state_dict()) == list(linen.state_dict())
    fused = NNX.tree(CASES["optimized_lstm"])
    assert fused[0].kind == "lstm" and fused["0.cell.dense_i.weight"].shape == (20, 4)
    compact = ut.wrap(Compact(), Compact().init(jax.random.key(0), x))
    assert compact.GRUCell_0.kind == "gru" and compact["GRUCell_0.hn.weight"].shape == (5, 5)
    assert list(compact.state_dict()) == [
        f"GRUCell_0.{leaf}" for leaf in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    ]


# -- transposed conv padding: flax pads the dilated input, torch crops the output ------------------
@pytest.mark.parametrize(
    ("padding", "size", "stride", "torch_padding"),
    [
        ("SAME", 3, 1, {"padding": 1}),
        ("VALID", 2, 3, {"output_padding": 1}),  # the stride is longer than the kernel
        (((1, 2),), 3, 2, {"padding": 1, "output_padding": 1}),
    ],
)
def test_transposed_conv_padding_in_torch_terms(
    api: Any, padding: Any, size: int, stride: int, torch_padding: dict[str, int]
) -> None:
    case = Case(
        lambda: nn.ConvTranspose(2, (size,), strides=(stride,), padding=padding),
        lambda r: nnx.ConvTranspose(3, 2, (size,), strides=(stride,), padding=padding, rngs=r),
        lambda: T.ConvTranspose1d(3, 2, size, stride=stride, **torch_padding),
        floats(2, 5, 3),
        channels=True,
    )
    src, tree = torch_model(case), api.tree(case)
    ut.port(src, tree)  # strict: the settings agree
    close(api.out(case, tree), torch_out(case, src))


# -- settings: what changes results without being a parameter ---------------------------------
SETTINGS = {
    "eps": (CASES["layer_norm"], lambda: T.LayerNorm(4), "eps"),  # 1e-6 against torch's 1e-5
    "padding": (  # 'SAME' against torch's padding 0: the kernels are the same shape
        Case(
            lambda: nn.Conv(4, (3,), padding="SAME"),
            lambda r: nnx.Conv(3, 4, (3,), padding="SAME", rngs=r),
            lambda: T.Conv1d(3, 4, 3),
            floats(2, 7, 3),
        ),
        lambda: T.Conv1d(3, 4, 3),
        "padding",
    ),
}


@pytest.mark.parametrize("what", list(SETTINGS))
def test_a_settings_difference_is_an_error_or_in_the_report(api: Any, what: str) -> None:
    case, make_torch, setting = SETTINGS[what]
    src = T.Sequential(make_torch())
    tree = api.tree(case)
    before = tree.state_dict()
    with pytest.raises(ut.PortError, match=setting):
        ut.port(src, tree)
    assert_same_state(tree.state_dict(), before)  # nothing was written
    report = ut.port(src, tree, strict=False)
    assert len(report.settings) == 1 and setting in report.settings[0]
    np.testing.assert_array_equal(tree["0.weight"].numpy(), src[0].weight.detach().numpy())


def test_flax_settings_in_torch_terms() -> None:
    """The same vocabulary as the torch adapter's, read from linen fields and NNX attributes."""
    bn = ut.wrap(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))  # flax's default momentum: 0.99
    conv = nn.Conv(2, (3, 3), strides=2, padding=1, kernel_dilation=(1, 2), feature_group_count=1)
    x = np.ones((1, 6, 6, 1), np.float32)
    linen = ut.wrap(nn.Sequential([conv]), nn.Sequential([conv]).init(jax.random.key(0), x))
    torch_conv = ut.wrap(T.Sequential(T.Conv2d(1, 2, 3, stride=2, padding=1, dilation=(1, 2))))
    assert bn._adapter.settings(bn._native) == {
        "eps": 1e-5,
        "scale": True,
        "center": True,
        "momentum": 0.01,
    }
    assert linen._adapter.settings(linen[0]._module) == torch_conv._adapter.settings(
        torch_conv[0]._module
    )


X3 = floats(2, 3)


# -- ties ---------------------------------------------------------------------------------------
def tied_flax(api: Any) -> Any:
    if api is Linen:
        shared = nn.Dense(4)
        module = nn.Sequential([nn.Dense(4), nn.relu, shared, nn.relu, shared])
        return ut.wrap(module, module.init(jax.random.key(0), X3))
    rngs = nnx.Rngs(0)
    shared = nnx.Linear(4, 4, rngs=rngs)
    return ut.wrap(nnx.Sequential(nnx.Linear(3, 4, rngs=rngs), nnx.relu, shared, nnx.relu, shared))


def test_tied_pair_from_torch_stays_tied(api: Any) -> None:
    shared = T.Linear(4, 4)
    src = T.Sequential(T.Linear(3, 4), T.ReLU(), shared, T.ReLU(), shared)
    tree = tied_flax(api)
    report = ut.port(src, tree)
    assert report.ties_kept == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    assert report.ties_split == []
    assert tree[2].weight is tree[4].weight
    with torch.no_grad():
        want = src(torch.from_numpy(X3)).numpy()
    got = tree.native.apply(tree.variables, X3) if api is Linen else tree.native(X3)
    close(np.asarray(got), want)


# -- a failed write puts every value back -------------------------------------------------------
def test_failed_port_restores_the_arrays(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES["batch_norm"]
    tree = api.tree(case)
    before = {k: p.data for k, p in [*tree.named_parameters(), *tree.named_buffers()]}
    calls = []
    cls = type(tree._adapter)
    original, original_dlpack = cls.write, cls.write_dlpack

    def fail_third() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")

    def write(self: Any, leaf: Any, value: np.ndarray, index: Any = None) -> None:
        fail_third()
        original(self, leaf, value, index)

    def write_dlpack(self: Any, leaf: Any, tensor: Any) -> bool:  # torch's tensors cross here
        fail_third()
        return original_dlpack(self, leaf, tensor)

    monkeypatch.setattr(cls, "write", write)
    monkeypatch.setattr(cls, "write_dlpack", write_dlpack)
    # the premise: a write that can fail once validated (on the host it cannot: nothing is kept)
    monkeypatch.setattr(cls, "write_can_fail", lambda self, leaf: True)
    with pytest.raises(RuntimeError, match="disk full"):
        ut.port(torch_model(case), tree)
    monkeypatch.undo()
    after = {k: p.data for k, p in [*tree.named_parameters(), *tree.named_buffers()]}
    assert all(after[k] is before[k] for k in before)  # the very arrays: no copy was needed


# -- DLPack: a tensor whose layout needs no change crosses without numpy -------------------------
def test_tensors_that_need_no_change_cross_through_dlpack() -> None:
    """Biases and norm scales are offered torch <-> NNX through DLPack (on a GPU: no copy
    through the host; a jax array on the host takes numpy's one copy instead, and torch takes
    the DLPack tensor: checked here for values and for no aliasing); kernels, which need a
    transpose, through numpy."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1)

    class Model(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.layers = nnx.List([nnx.Linear(4, 3, rngs=rngs), nnx.LayerNorm(3, rngs=rngs)])

    model = Model(nnx.Rngs(0))
    tree = ut.wrap(model)
    report = ut.port(net, tree, strict=False)  # LayerNorm eps: 1e-5 against NNX 1e-6, reported
    assert report.tensors == 4 and report.dlpack == 3  # all but the kernel
    for (_, p), q in zip(tree.named_parameters(), net.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.detach().numpy())
    with torch.no_grad():  # jax holds arrays of its own, not views of torch's memory
        net[0].bias.add_(1.0)
    assert_differ(tree["layers.0.bias"].numpy(), net[0].bias.detach().numpy())
    back = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    assert ut.port(tree, back, strict=False).dlpack == 3
    for (_, p), q in zip(tree.named_parameters(), back.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.detach().numpy())
