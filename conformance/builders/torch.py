"""The deck's models in PyTorch, as the deck's PyTorch chapter builds them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn

import unitree as ut

name = label = "torch"
version = torch.__version__
names = {"sequential": "Sequential", "dense": "Linear", "relu": "ReLU"}
can_tie = True
deck_layers = (0, 2)


def devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's random state seeded for one build, then put back as it was: the caller's own
    random numbers go on as if the build never drew any."""
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        yield


def _run(build: Callable[[], nn.Module], X: np.ndarray, device: str, seed: int) -> nn.Module:
    with _seeded(seed):
        net = build().to(device)
        # the deck's first call: LazyLinear takes its shapes, and its values, on the device
        net(torch.as_tensor(X, device=device))
    return net


def deck_mlp(device: str, X: np.ndarray, *, seed: int = 0) -> nn.Module:
    return _run(
        lambda: nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1)), X, device, seed
    )


mlp = deck_mlp  # the deck's torch model is already dense, ReLU, dense


def deck_tied(
    device: str, X: np.ndarray, tied: bool = True, *, seed: int = 0
) -> tuple[nn.Module, tuple[int, int]]:
    def build() -> nn.Module:
        shared = nn.LazyLinear(8)
        other = shared if tied else nn.LazyLinear(8)
        return nn.Sequential(
            nn.LazyLinear(8), nn.ReLU(), shared, nn.ReLU(), other, nn.ReLU(), nn.LazyLinear(1)
        )

    return _run(build, X, device, seed), (2, 4)


wrap = ut.wrap


def forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    net = tree.native
    device = next(net.parameters()).device
    with torch.no_grad():
        return net(torch.as_tensor(X, device=device)).cpu().numpy()


def loss(y: torch.Tensor) -> torch.Tensor:
    return y.sum()


def native_value(tree: ut.ParamTree, i: int, leaf: str) -> np.ndarray:
    return getattr(tree.native[i], leaf).detach().cpu().numpy()


def is_parameter(obj: object) -> bool:
    return isinstance(obj, nn.Parameter)


def is_tensor(obj: object) -> bool:
    return isinstance(obj, torch.Tensor) and not isinstance(obj, nn.Parameter)


class PortModel(nn.Module):
    """The port model of conformance/builder.py."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.norm = nn.LayerNorm(8, eps=1e-5)
        self.conv = nn.Conv1d(8, 4, 3)
        self.fc = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8, eps=1e-5, momentum=0.1)
        self.tied_a = nn.Linear(8, 8)
        self.tied_b = self.tied_a
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.lstm(self.emb(x))[0])
        h = self.conv(h.transpose(1, 2)).flatten(1)  # (B, C, T) flattened channels-first
        h = torch.relu(self.bn(self.fc(h)))
        h = torch.relu(self.tied_a(h))
        return self.out(torch.relu(self.tied_b(h)))


def port_model(device: str, *, seed: int = 0) -> nn.Module:
    with _seeded(seed), torch.no_grad():
        net = PortModel().to(device).eval()
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def port_forward(tree: ut.ParamTree, X: np.ndarray) -> np.ndarray:
    net = tree.native
    device = next(net.parameters()).device
    with torch.no_grad():
        return net(torch.as_tensor(X, device=device)).cpu().numpy()


def random_model(spec: tuple, device: str, *, seed: int = 0) -> nn.Module:
    """A random architecture of tests/safety: ``spec`` is ``(shape, layers)``, the input shape
    channels-first and each layer one of ``("conv", in, out, k, dims)``, ``("bn", c, dims)``,
    ``("ln", c)``, ``("dense", in, out)``, ``("flatten",)`` or ``("tie", i)`` (the very layer at
    position i again). A Sequential of those, paths its positions, every parameter and buffer
    set to random values drawn from ``seed``, in inference mode. The other builders build the
    same spec with the same paths."""
    rng = np.random.default_rng(seed)
    layers: list[nn.Module] = []
    with _seeded(seed):  # torch's own init, which the values below replace, draws too
        for kind, *a in spec[1]:
            if kind == "conv":
                layers.append((nn.Conv1d, nn.Conv2d)[a[3] - 1](a[0], a[1], a[2]))
            elif kind == "bn":
                layers.append((nn.BatchNorm2d if a[1] == 2 else nn.BatchNorm1d)(a[0], eps=1e-5))
            elif kind == "ln":
                layers.append(nn.LayerNorm(a[0], eps=1e-5))
            elif kind == "dense":
                layers.append(nn.Linear(a[0], a[1]))
            elif kind == "flatten":
                layers.append(nn.Flatten())
            else:
                layers.append(layers[a[0]])
    net = nn.Sequential(*layers).to(device).eval()
    with torch.no_grad():
        for key, t in net.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                lo, hi = (0.5, 2.0) if key.endswith("running_var") else (-1.0, 1.0)
                t.copy_(torch.as_tensor(rng.uniform(lo, hi, tuple(t.shape)).astype(np.float32)))
            else:  # num_batches_tracked
                t.fill_(int(rng.integers(0, 1000)))
    return net


def native_state(tree: ut.ParamTree) -> dict[str, tuple[int, np.ndarray]]:
    """Torch's own view of the model: {name: (identity, copy of the value)} for every
    occurrence of every parameter and buffer, ties included (``keep_vars=True``)."""
    state = tree.native.state_dict(keep_vars=True)
    return {k: (id(t), t.detach().cpu().numpy().copy()) for k, t in state.items()}
