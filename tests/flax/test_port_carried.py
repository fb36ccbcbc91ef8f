"""What a port carries: parameters and persistent buffers, as a checkpoint holds; a tensor tied
to a ported one needs no destination of its own. The expectation is the source's own output."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn
from unitree_checks import PORT_ULPS, assert_close

import unitree as ut

VOCAB, DIM, T = 11, 8, 5


class TorchLM(nn.Module):
    """A causal mask and rotary-style frequencies as non-persistent buffers; the head tied to
    the embedding, as GPT-2's and most language models' are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.register_buffer("mask", torch.tril(torch.ones(T, T)), persistent=False)
        self.register_buffer("inv_freq", 1.0 / 10 ** torch.arange(DIM) / DIM, persistent=False)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) * self.inv_freq.cos()
        h = h + self.mask @ torch.tanh(self.proj(h))
        return self.head(h)


class NnxLM(nnx.Module):
    """The same function, as Flax writes it: the mask and frequencies computed, no head layer
    (``embed.attend``)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.proj = nnx.Linear(DIM, DIM, rngs=rngs)

    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        inv_freq = 1.0 / 10 ** jnp.arange(DIM) / DIM
        h = self.embed(ids) * jnp.cos(inv_freq)
        h = h + jnp.tril(jnp.ones((T, T))) @ jnp.tanh(self.proj(h))
        return self.embed.attend(h)


IDS = np.random.default_rng(0).integers(0, VOCAB, (2, T))


def torch_out(model: TorchLM) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).numpy()


def test_non_persistent_buffers_are_not_carried_and_a_tied_head_goes_through_its_embedding():
    t, n = TorchLM(), NnxLM(nnx.Rngs(1))
    report = ut.port(t, n)
    assert {(p.src, p.dst) for p in report.pairs} == {("embed", "embed"), ("proj", "proj")}
    assert ("embed.weight", "head.weight") in report.ties_kept
    text = str(report)
    assert "mask" in text and "inv_freq" in text and "non-persistent" in text
    assert "head: every tensor is tied to a ported one (head.weight = embed.weight)" in text
    assert_close(np.asarray(n(jnp.asarray(IDS))), torch_out(t), ulps=PORT_ULPS)


def test_back_into_the_tied_torch_model_keeps_the_tie():
    t, n = TorchLM(), NnxLM(nnx.Rngs(2))
    ut.port(n, t)
    assert t.head.weight is t.embed.weight
    assert_close(torch_out(t), np.asarray(n(jnp.asarray(IDS))), ulps=PORT_ULPS)


def test_an_untied_head_still_needs_a_destination():
    t = TorchLM()
    t.head.weight = nn.Parameter(t.embed.weight.detach().clone())
    n = NnxLM(nnx.Rngs(3))
    with pytest.raises(ut.PortError, match=r"source layer head .*no destination layer"):
        ut.port(t, n)
