"""The layout of the activations between the layers of a torch model (docs/architecture.md,
"The canonical tables").

PyTorch's maps are (C, H, W) and its ``Flatten`` flattens them in that order: what a torch
model holds is canonical, unless the model reorders a map before it flattens it (a permute in
a custom module, or in a ``forward`` of its own). The read follows the activations through
torch's own modules (``nn.Sequential``, ``nn.Flatten``, ``nn.Unflatten``, activations,
poolings, norms) and says where it cannot see (``View.unknown``): a ``Linear`` reading a conv's
output through a module whose ``forward`` it cannot read, its input a multiple > 1 of the
channels. An unknown layout keeps torch's own (the ``channels_first`` default), so the tree's
state_dict and checkpoints are torch's own state_dict whatever the read could see.

Every expectation is torch's own: its state_dict, its outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import unitree as ut
from unitree._tree import view_of


class Permute(nn.Module):
    """A user's permute module, as ports from Keras write it: its forward is its own."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class Net(nn.Module):
    """A CNN written as a class: ``torch.flatten`` in its forward (PyTorch's tutorials)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Pooled(nn.Module):
    """A ResNet's head: global pooling, then a Linear on the channels alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class OwnSequential(nn.Sequential):
    """A Sequential whose forward is its own (it flattens channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x).permute(0, 2, 3, 1)
        return self[2](self[1](x))


class PlainSequential(nn.Sequential):
    """A Sequential subclass that keeps Sequential's forward (torchvision's blocks)."""


S = nn.Sequential
# Models whose every layout the read sees, each with the shape of one input (channels first).
DECIDED: dict[str, tuple[Any, tuple[int, ...]]] = {
    "flatten": (
        lambda: S(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)),
        (3, 6, 6),
    ),
    "norm_pool_dropout": (
        lambda: S(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(36, 5),
        ),
        (3, 6, 6),
    ),
    "adaptive_pool": (
        lambda: S(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(16, 5)),
        (3, 6, 6),
    ),
    "flatten_spatial_then_all": (
        lambda: S(nn.Conv2d(3, 4, 3), nn.Flatten(2), nn.Flatten(), nn.Linear(64, 5)),
        (3, 6, 6),
    ),
    "nested_and_subclassed": (
        lambda: S(PlainSequential(nn.Conv2d(3, 4, 3), nn.GELU()), nn.Flatten(), nn.Linear(64, 5)),
        (3, 6, 6),
    ),
    "padding_upsampling_identity": (
        lambda: S(
            nn.ZeroPad2d(1),
            nn.Conv2d(3, 2, 3),
            nn.Upsample(scale_factor=2),
            nn.Identity(),
            nn.Flatten(),
            nn.LayerNorm(288),
            nn.Linear(288, 5),
        ),
        (3, 6, 6),
    ),
    "norm_on_the_flatten": (
        lambda: S(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, 5)),
        (3, 6),
    ),
    # the mirror: a Linear whose output is unflattened to (C, L) for a conv
    "decoder": (
        lambda: S(nn.Linear(4, 12), nn.ReLU(), nn.Unflatten(1, (3, 4)), nn.Conv1d(3, 2, 3)),
        (4,),
    ),
    "pooled_head": (Pooled, (3, 6, 6)),
    "mlp_with_a_forward_of_its_own": (Mlp, (6,)),
}
# Models where a Linear reads a conv's output through a forward the read cannot see: the
# layout of those leaves is unknown.
UNKNOWN: dict[str, tuple[Any, tuple[int, ...], set[str]]] = {
    "custom_forward": (Net, (3, 6, 6), {"fc.weight"}),
    "permute_module": (
        lambda: S(nn.Conv2d(3, 4, 3), Permute(0, 2, 3, 1), nn.Flatten(), nn.Linear(64, 5)),
        (3, 6, 6),
        {"3.weight"},
    ),
    "sequential_with_a_forward_of_its_own": (
        lambda: S(OwnSequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 5))),
        (3, 6, 6),
        {"0.2.weight"},
    ),
    "flatten_merging_the_channels": (
        lambda: S(nn.Conv2d(3, 4, 3), nn.Flatten(1, 2), nn.Flatten(), nn.Linear(64, 5)),
        (3, 6, 6),
        {"3.weight"},
    ),
    "norm_after_a_permute_module": (
        lambda: S(
            nn.Conv1d(3, 4, 3), Permute(0, 2, 1), nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, 5)
        ),
        (3, 6),
        {"3.weight", "3.bias", "3.running_mean", "3.running_var", "4.weight"},
    ),
    # the mirror: unflattened to (L, C), then permuted to (C, L) for the conv
    "decoder_with_a_permute_module": (
        lambda: S(nn.Linear(4, 12), nn.Unflatten(1, (4, 3)), Permute(0, 2, 1), nn.Conv1d(3, 2, 3)),
        (4,),
        {"0.weight", "0.bias"},
    ),
}


def build(make: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = make().eval()
    with torch.no_grad():  # running statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def unknown_of(tree: ut.ParamTree) -> dict[str, Any]:
    view = view_of(tree)
    return {
        ".".join(map(str, path)): u
        for path, p in view.leaves()
        if (u := view.unknown(p)) is not None
    }


def runs(model: nn.Module, shape: tuple[int, ...]) -> None:
    """The model is a model: it runs on an input of that shape (so the case is no typo)."""
    with torch.no_grad():
        model(torch.randn(2, *shape, generator=torch.Generator().manual_seed(3)))


def assert_torch_state(tree: ut.ParamTree, model: nn.Module) -> None:
    """The tree's state_dict is torch's own, key by key and bit by bit."""
    ours, theirs = tree.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(np.asarray(ours[key]), value.numpy(), err_msg=key)


@pytest.mark.parametrize("name", DECIDED)
def test_a_model_whose_layouts_the_read_sees_has_nothing_unknown(name: str) -> None:
    make, shape = DECIDED[name]
    model = build(make, 0)
    runs(model, shape)
    tree = ut.wrap(model)
    assert unknown_of(tree) == {}
    assert_torch_state(tree, model)


@pytest.mark.parametrize("name", UNKNOWN)
def test_a_linear_read_through_a_forward_of_its_own_is_unknown(name: str) -> None:
    make, shape, keys = UNKNOWN[name]
    model = build(make, 0)
    runs(model, shape)
    tree = ut.wrap(model)
    unknown = unknown_of(tree)
    assert set(unknown) == keys
    for key, u in unknown.items():
        layer = key.rpartition(".")[0]
        assert u.default == "channels_first"  # torch's own order: nothing changes
        assert repr(layer) in u.reason  # names the layer
        assert set(u.candidates) == {"channels_first", "channels_last"}
    assert_torch_state(tree, model)  # the default: torch's own state_dict


def test_the_reason_names_both_layers_and_what_lies_between() -> None:
    u = unknown_of(ut.wrap(build(UNKNOWN["permute_module"][0], 0)))["3.weight"]
    assert "'3'" in u.reason and "'0'" in u.reason and "Permute" in u.reason
    u = unknown_of(ut.wrap(build(Net, 0)))["fc.weight"]
    assert "'fc'" in u.reason and "'conv'" in u.reason and "the call of Net" in u.reason


@pytest.mark.parametrize("name", [*UNKNOWN, "flatten", "decoder"])
def test_a_checkpoint_round_trips_exactly(name: str, tmp_path: Path) -> None:
    """ut.save then ut.load into the same architecture with other values: torch's own
    state_dict, bit for bit, and the same outputs as the model saved."""
    make, shape = (UNKNOWN.get(name) or DECIDED[name])[:2]
    saved, loaded = build(make, 0), build(make, 1)
    path = tmp_path / "model.safetensors"
    ut.save(saved, path)
    ut.load(loaded, path)
    for key, value in saved.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(x).numpy(), saved(x).numpy())


def test_a_torch_state_dict_file_loads_into_a_model_with_an_unknown_layout(tmp_path: Path) -> None:
    """torch.save's own file reads as it is: an unknown layout is read as torch's own."""
    saved, loaded = build(Net, 0), build(Net, 1)
    path = tmp_path / "model.pt"
    torch.save(saved.state_dict(), path)
    ut.load(loaded, path)
    for key, value in saved.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
