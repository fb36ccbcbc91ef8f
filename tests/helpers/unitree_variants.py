"""Stand-ins for third-party layer types, for tests that may not import their packages.

transformers is not installed in the test environments and nothing is downloaded, so Hugging
Face's ``Conv1D`` is rewritten here as ``transformers/pytorch_utils.py`` writes it, and put in
a module of that name for the length of a test: unitree's shipped rule names the class by its
qualified name, ``transformers.pytorch_utils.Conv1D``.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
from torch import nn

__all__ = ["STYLES", "Conv1D", "Foreign", "hugging_face_conv1d", "weight_normed"]

STYLES = ["parametrization", "legacy"]  # torch's two weight norms


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 dense layer: y = x @ weight + bias, weight (nx, nf) = (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Foreign(nn.Module):
    """A third-party layer no table knows and nobody registered, with a Linear's leaves and
    shapes (weight (out, in), bias), computing something else: y = x @ weight[:, ::-1].T."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.flip(1).T + self.bias


def hugging_face_conv1d(monkeypatch: pytest.MonkeyPatch) -> type[nn.Module]:
    """A :class:`Conv1D` whose class is ``transformers.pytorch_utils.Conv1D``, in modules of
    those names (in ``sys.modules`` until the test ends)."""
    package = types.ModuleType("transformers")
    module = types.ModuleType("transformers.pytorch_utils")
    cls = type("Conv1D", (Conv1D,), {"__module__": module.__name__})
    module.Conv1D = cls  # type: ignore[attr-defined]
    package.pytorch_utils = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", package)
    monkeypatch.setitem(sys.modules, "transformers.pytorch_utils", module)
    return cls


def weight_normed(module: nn.Module, style: str, dim: int | None = 0) -> nn.Module:
    """``module`` with its weight weight-normed by torch: ``parametrizations.weight_norm``
    ("parametrization": g and v are ``parametrizations.weight.original0``/``original1``) or the
    deprecated ``torch.nn.utils.weight_norm`` ("legacy": ``weight_g``/``weight_v``)."""
    if style == "parametrization":
        return torch.nn.utils.parametrizations.weight_norm(module, dim=dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy weight_norm is deprecated
        return torch.nn.utils.weight_norm(module, dim=dim)
