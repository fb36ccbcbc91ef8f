"""PyTorch state_dict files (torch.save: .pt, .pth, .bin) read by ut.load, never unpickled."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import unitree as ut


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_a_torch_state_dict_file_loads_as_torch_would(tmp_path, suffix):
    src, dst = mlp(), mlp()
    path = tmp_path / f"m{suffix}"  # .ckpt: recognized by the zip signature, not the name
    torch.save(src.state_dict(), path)
    assert ut.load(ut.wrap(dst), path) == ([], [])
    x = torch.rand(3, 4)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_a_tied_model_saved_by_torch_loads_once_per_storage(tmp_path):
    shared = nn.Linear(8, 8)
    src = nn.Sequential(nn.Linear(4, 8), shared, shared)
    torch.save(src.state_dict(), tmp_path / "tied.pt")  # both aliases, one storage
    dst_shared = nn.Linear(8, 8)
    dst = nn.Sequential(nn.Linear(4, 8), dst_shared, dst_shared)
    tree = ut.wrap(dst)
    assert ut.load(tree, tmp_path / "tied.pt") == ([], [])
    np.testing.assert_array_equal(tree["2.weight"].numpy(), shared.weight.detach().numpy())


def test_bfloat16_and_the_lossless_rule(tmp_path):
    src = mlp().to(torch.bfloat16)
    torch.save(src.state_dict(), tmp_path / "bf16.pt")
    dst = mlp()  # float32: bfloat16 -> float32 loses nothing
    ut.load(ut.wrap(dst), tmp_path / "bf16.pt")
    torch.testing.assert_close(dst[0].weight, src[0].weight.float(), rtol=0, atol=0)
    torch.save(mlp().double().state_dict(), tmp_path / "f64.pt")
    before = dst[0].weight.detach().clone()
    with pytest.raises(ut.StateDictError, match=r"float64 in f64\.pt, float32 in the model"):
        ut.load(ut.wrap(dst), tmp_path / "f64.pt")
    torch.testing.assert_close(dst[0].weight, before, rtol=0, atol=0)  # nothing written
    ut.load(ut.wrap(dst), tmp_path / "f64.pt", cast=True)
    assert not torch.equal(dst[0].weight, before)


class Payload:
    def __reduce__(self):  # what a malicious pickle does: run code at load time
        return (os.system, (f"touch {Payload.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    Payload.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"0.weight": torch.zeros(8, 4), "x": Payload()}, bad)
    with pytest.raises(ut.CheckpointError, match="weights_only"):
        ut.load(ut.wrap(mlp()), bad)
    assert not Payload.marker.exists()
    raw = tmp_path / "raw.bin"  # a plain pickle, not even torch's format
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ut.CheckpointError):
        ut.load(ut.wrap(mlp()), raw)
    assert not Payload.marker.exists()


def test_not_a_state_dict(tmp_path):
    torch.save({"model": mlp().state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(ut.CheckpointError, match="expected a state_dict"):
        ut.load(ut.wrap(mlp()), tmp_path / "nested.pt")
