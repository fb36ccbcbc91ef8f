"""Module variants of torch models (DESIGN §4 and §10, "Kinds"): wrappers that only forward to
a model are transparent, a weight-normed layer's canonical leaf is its effective weight, and a
registered third-party layer type is read with its own rules.

Every expectation is torch's own answer: the model's output on the same input, torch's own
``load_state_dict``, torch's own assignment to a parametrized weight, the names torch gives
the plain model's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn
from unitree_checks import PORT_ULPS, assert_close, assert_differ, assert_read_once
from unitree_variants import STYLES, Conv1D, Foreign, hugging_face_conv1d, weight_normed

import unitree as ut
from unitree import layouts
from unitree._adapter import KindTable


def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def inputs(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


def run(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def names(model: Any) -> list[str]:
    return [path for path, _ in ut.wrap(model).named_parameters()]


# -- wrappers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One process, gloo on the CPU: what DistributedDataParallel needs to be built."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("process_group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _compiled(m: nn.Module) -> nn.Module:
    return torch.compile(m, backend="eager")  # dynamo only: no compiler needed to run it


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "DataParallel": nn.DataParallel,
    "DistributedDataParallel": lambda m: nn.parallel.DistributedDataParallel(m),
    "torch.compile": _compiled,
}


@pytest.fixture(params=list(WRAPPERS))
def wrapper(request: pytest.FixtureRequest) -> Callable[[nn.Module], nn.Module]:
    if request.param == "DistributedDataParallel":
        request.getfixturevalue("process_group")
    return WRAPPERS[request.param]


def test_the_wrappers_are_what_torch_makes_them(wrapper: Callable[[nn.Module], nn.Module]):
    # the wrapper's own paths carry its prefix: those are the ones a tree must not show
    wrapped = wrapper(net(0))
    assert set(dict(wrapped.named_parameters())) & {"module.0.weight", "_orig_mod.0.weight"}


def test_a_wrapped_model_has_the_plain_models_paths(wrapper, monkeypatch):
    plain = net(0)
    tree = ut.wrap(wrapper(plain))
    assert names(tree) == [name for name, _ in plain.named_parameters()]
    assert list(tree.state_dict()) == list(plain.state_dict())
    assert tree.native is plain
    assert_read_once(ut.wrap(wrapper(plain)), monkeypatch)


def test_a_wrapped_submodule_has_the_plain_submodules_paths(wrapper, monkeypatch):
    inner = net(0)
    model = nn.Sequential(wrapper(inner), nn.Linear(3, 2))
    plain = nn.Sequential(inner, model[1])
    assert names(model) == [name for name, _ in plain.named_parameters()]
    assert ut.wrap(model)["0"].native is inner
    assert_read_once(ut.wrap(model), monkeypatch)


def test_a_wrapped_models_checkpoint_loads_into_the_plain_model_and_back(wrapper, tmp_path):
    x = inputs(5, 4)
    src = wrapper(net(0))
    ut.save(src, tmp_path / "wrapped.safetensors")
    dst = net(1)
    assert_differ(run(dst, x), run(src, x))
    ut.load(dst, tmp_path / "wrapped.safetensors")
    assert_close(run(dst, x), run(src, x))

    plain = net(2)
    ut.save(plain, tmp_path / "plain.safetensors")
    wrapped = wrapper(net(3))
    ut.load(wrapped, tmp_path / "plain.safetensors")
    assert_close(run(wrapped, x), run(plain, x))


def test_a_wrapped_model_ports_as_its_checkpoint_loads(wrapper):
    x = inputs(5, 4)
    src, dst = wrapper(net(0)), net(1)
    report = ut.port(src, dst)
    assert [(p.src, p.dst) for p in report.pairs] == [("0", "0"), ("2", "2")]
    assert_close(run(dst, x), run(src, x))

    src, dst = net(2), wrapper(net(3))
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x))


def test_a_wrapper_with_state_of_its_own_is_not_transparent():
    class Tagged(nn.DataParallel):  # a subclass that keeps a tensor of its own
        def __init__(self, module: nn.Module) -> None:
            super().__init__(module)
            self.scale = nn.Parameter(torch.ones(1))

    tree = ut.wrap(Tagged(net(0)))
    assert names(tree)[0] == "scale"
    assert "module.0.weight" in names(tree)


# -- weight norm ----------------------------------------------------------------------------
def normed_net(seed: int, style: str) -> nn.Sequential:
    """A net whose two layers are weight-normed: per output row (dim=0), and as a whole."""
    model = net(seed)
    weight_normed(model[0], style)
    weight_normed(model[2], style, dim=None)
    return model


def effective(layer: nn.Module) -> torch.Tensor:
    """The weight torch uses in the forward pass, as torch computes it."""
    if hasattr(layer, "parametrizations"):
        return layer.weight.detach()
    layer(torch.zeros(1, layer.in_features))  # the legacy hook sets layer.weight
    return layer.weight.detach()


@pytest.mark.parametrize("style", STYLES)
def test_a_weight_normed_layer_shows_its_effective_weight(style, monkeypatch):
    model = normed_net(0, style)
    tree = ut.wrap(model)
    assert names(tree) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [name for name, _ in tree.named_modules()] == ["", "0", "1", "2"]
    for i in (0, 2):
        assert_close(tree[f"{i}.weight"].numpy(), effective(model[i]).numpy())
        assert tree[f"{i}.weight"].shape == tuple(model[i].weight.shape)
    assert_read_once(ut.wrap(model), monkeypatch)


@pytest.mark.parametrize("style", STYLES)
def test_writing_the_weight_writes_g_and_v_as_torch_does(style):
    x = inputs(5, 4)
    model = normed_net(0, style)
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    ut.wrap(model)["0.weight"].set(w)

    # torch's own: assigning a parametrized weight (right_inverse), or applying the legacy norm
    if style == "parametrization":
        twin = normed_net(5, style)
        twin[0].weight = torch.from_numpy(w)
        g, v = twin[0].parametrizations.weight.original0, twin[0].parametrizations.weight.original1
        got = model[0].parametrizations.weight.original0, model[0].parametrizations.weight.original1
    else:
        twin = net(5)
        with torch.no_grad():
            twin[0].weight.copy_(torch.from_numpy(w))
        weight_normed(twin[0], style)
        weight_normed(twin[2], style, dim=None)
        g, v = twin[0].weight_g, twin[0].weight_v
        got = model[0].weight_g, model[0].weight_v
    assert_close(got[0].detach().numpy(), g.detach().numpy())
    assert_close(got[1].detach().numpy(), v.detach().numpy())
    with torch.no_grad():
        twin[0].bias.copy_(model[0].bias)
        twin[2].load_state_dict(model[2].state_dict())
    assert_close(run(model, x), run(twin, x), ulps=PORT_ULPS)
    assert_close(effective(model[0]).numpy(), w)


@pytest.mark.parametrize("style", STYLES)
def test_a_weight_normed_layer_ports_onto_a_plain_one_and_back(style):
    x = inputs(5, 4)
    src, dst = normed_net(0, style), net(1)
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)

    src, dst = net(2), normed_net(3, style)
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)


@pytest.mark.parametrize("style", STYLES)
def test_a_weight_normed_models_checkpoint_loads_into_the_plain_model(style, tmp_path):
    x = inputs(5, 4)
    src = normed_net(0, style)
    ut.save(src, tmp_path / "normed.safetensors")
    dst = net(1)
    ut.load(dst, tmp_path / "normed.safetensors")
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)


def _legacy_file(tmp_path: Path, fmt: str) -> tuple[nn.Module, Path]:
    """A legacy weight-normed model and its torch state_dict (weight_g, weight_v) in a file."""
    old = normed_net(0, "legacy")
    state = old.state_dict()
    assert {"0.weight_g", "0.weight_v", "2.weight_g", "2.weight_v"} <= set(state)
    path = tmp_path / f"old.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return old, path


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_weight_g_weight_v_file_loads_as_torchs_load_state_dict_loads_it(fmt, tmp_path):
    x = inputs(5, 4)
    old, path = _legacy_file(tmp_path, fmt)
    theirs = normed_net(1, "parametrization")
    theirs.load_state_dict(old.state_dict())  # torch's own: its compatibility hook
    ours = normed_net(2, "parametrization")
    assert_differ(run(ours, x), run(theirs, x))
    ut.load(ours, path)
    assert_close(run(ours, x), run(theirs, x), ulps=PORT_ULPS)
    assert_close(run(ours, x), run(old, x), ulps=PORT_ULPS)


def test_a_weight_g_weight_v_state_dict_loads_as_torchs_load_state_dict_loads_it():
    x = inputs(5, 4)
    old = normed_net(0, "legacy")
    theirs, ours = normed_net(1, "parametrization"), normed_net(2, "parametrization")
    theirs.load_state_dict(old.state_dict())
    ut.wrap(ours).load_state_dict(old.state_dict())  # torch tensors, weight_g and weight_v
    assert_close(run(ours, x), run(theirs, x), ulps=PORT_ULPS)


def test_a_parametrized_models_torch_state_dict_loads_through_ut_load(tmp_path):
    x = inputs(5, 4)
    src = normed_net(0, "parametrization")
    state = src.state_dict()
    assert "0.parametrizations.weight.original0" in state
    torch.save(state, tmp_path / "new.pt")
    for dst in (normed_net(1, "parametrization"), normed_net(2, "legacy"), net(3)):
        ut.load(dst, tmp_path / "new.pt")
        assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)


def test_a_failed_load_puts_g_and_v_back_as_they_were(tmp_path):
    model = normed_net(0, "parametrization")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = ut.wrap(net(1)).state_dict()
    state = {k: np.array(v) for k, v in state.items()}
    state["2.bias"][0] = np.nan  # refused as it is read: after the weights were written
    with pytest.raises(ut.NonFiniteError):
        ut.wrap(model).load_state_dict(state, error_if_nonfinite=True)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # g and v exactly, not only w


def test_a_weight_normed_weight_has_no_gradient_of_its_own():
    model = normed_net(0, "parametrization")
    tree = ut.wrap(model)
    tree.backward(lambda y: y.sum(), inputs(5, 4).numpy())
    g = model[0].parametrizations.weight.original0
    assert g.grad is not None
    with pytest.raises(ut.UnsupportedError, match="original0"):
        tree["0.weight"].grad  # noqa: B018
    tree.zero_grad()
    assert g.grad is None and model[0].parametrizations.weight.original1.grad is None


def test_a_weight_normed_weight_cannot_be_tied():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    weight_normed(model[1], "parametrization")
    tree = ut.wrap(model)
    with pytest.raises(ut.UnsupportedError, match="weight-normed"):
        tree.tie("0.weight", "1.weight")
    with pytest.raises(ut.UnsupportedError, match="weight-normed"):
        tree.tie("1.weight", "0.weight")


def test_other_parametrizations_stay_native():
    class Doubled(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    layer = nn.Linear(4, 3)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Doubled())
    tree = ut.wrap(layer)
    assert names(tree) == ["bias", "parametrizations.weight.original"]


# -- registered third-party layer types -----------------------------------------------------
@pytest.fixture
def hf_conv1d(monkeypatch: pytest.MonkeyPatch) -> type[nn.Module]:
    return hugging_face_conv1d(monkeypatch)


def test_hugging_faces_conv1d_ports_onto_a_linear(hf_conv1d):
    x = inputs(5, 8)
    torch.manual_seed(0)
    src = nn.Sequential(hf_conv1d(8, 8), nn.ReLU(), hf_conv1d(4, 8))
    with torch.no_grad():
        for layer in src:
            for p in layer.parameters():
                p.normal_()
    dst = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    report = ut.port(src, dst)
    assert [p.kind for p in report.pairs] == ["dense", "dense"]
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)
    assert ut.wrap(src)["0.weight"].shape == (8, 8)
    assert ut.wrap(src)["2.weight"].shape == (4, 8)  # canonical: (out, in)


@pytest.fixture
def registry() -> Any:
    """The registrations as they were, after the test."""
    saved = dict(layouts.REGISTERED)
    yield
    layouts.REGISTERED.clear()
    layouts.REGISTERED.update(saved)
    KindTable.forget()


def test_a_class_registered_by_object_is_read_with_its_own_rules(registry):
    class Local(Conv1D):
        pass

    ut.register_layer(Local, "dense", {"weight": ("weight", layouts.TRANSPOSED), "bias": "bias"})
    x = inputs(5, 8)
    src, dst = nn.Sequential(Local(4, 8)), nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        src[0].bias.normal_()
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)


def test_a_registration_after_a_read_holds_from_the_next_read(registry):
    class Late(Conv1D):
        pass

    src = nn.Sequential(Late(4, 8))
    assert ut.wrap(src)["0.weight"].shape == (8, 4)  # unknown: native layout
    ut.register_layer(Late, "dense", {"weight": ("weight", layouts.TRANSPOSED)})
    assert ut.wrap(src)["0.weight"].shape == (4, 8)
    x = inputs(5, 8)
    dst = nn.Sequential(nn.Linear(8, 4))
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)


def test_an_unregistered_type_ports_only_onto_its_own_type():
    x = inputs(5, 8)
    src = nn.Sequential(Foreign(8, 4))
    with pytest.raises(ut.PortError, match="Foreign"):
        ut.port(src, nn.Sequential(nn.Linear(8, 4)))
    dst = nn.Sequential(Foreign(8, 4))
    ut.port(src, dst)
    assert_close(run(dst, x), run(src, x))


def test_a_tree_read_before_a_registration_reads_its_model_again(registry):
    class Late(Conv1D):
        pass

    src = nn.Sequential(Late(8, 8))  # square: only the rule tells the two layouts apart
    with torch.no_grad():
        src[0].bias.normal_()
    tree = ut.wrap(src)
    weight = src[0].weight.detach().numpy()
    np.testing.assert_array_equal(tree["0.weight"].numpy(), weight)  # unknown: native layout
    ut.register_layer(Late, "dense", {"weight": ("weight", layouts.TRANSPOSED)})
    np.testing.assert_array_equal(tree["0.weight"].numpy(), weight.T)
    x = inputs(5, 8)
    dst = nn.Sequential(nn.Linear(8, 8))
    ut.port(tree, dst)
    assert_close(run(dst, x), run(src, x), ulps=PORT_ULPS)
