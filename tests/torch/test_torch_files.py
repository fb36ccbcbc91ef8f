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
    model = mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(ut.CheckpointError, match=r"evil\.pt: .*weights_only"):
        ut.load(ut.wrap(model), bad)
    assert not Payload.marker.exists()
    raw = tmp_path / "raw.bin"  # a plain pickle, not even torch's format
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ut.CheckpointError, match=r"raw\.bin: .*weights_only"):
        ut.load(ut.wrap(model), raw)
    assert not Payload.marker.exists()
    torch.testing.assert_close(model[0].weight, before, rtol=0, atol=0)


def test_not_a_state_dict(tmp_path):
    torch.save({"model": mlp().state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(ut.CheckpointError, match="expected a state_dict"):
        ut.load(ut.wrap(mlp()), tmp_path / "nested.pt")


def _refused(path, match: str) -> None:
    """ut.load refuses ``path`` with a CheckpointError naming it, and writes nothing."""
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ut.CheckpointError, match=match) as e:
        ut.load(ut.wrap(model), path)
    assert isinstance(e.value, ValueError) and path.name in str(e.value)
    assert len(str(e.value)) < 500  # torch's paragraphs cut down to the line that matters
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _positions(n: int) -> list[int]:
    return [0, 1, 4, 10, 30, 100, n // 3, n // 2, n - 200, n - 100, n - 22, n - 1]


@pytest.mark.parametrize("at", range(len(_positions(1000))))
def test_a_truncated_torch_file_is_refused(tmp_path, at):
    good = tmp_path / "good.pt"
    torch.save(mlp().state_dict(), good)
    raw = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[: _positions(len(raw))[at]])
    _refused(cut, r"cut\.pt: not a PyTorch state_dict file")


def test_a_corrupt_torch_file_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(mlp().state_dict(), good)
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2 :] = b"\xff" * (len(raw) - len(raw) // 2)  # the zip's directory is gone
    (tmp_path / "corrupt.pt").write_bytes(raw)
    _refused(tmp_path / "corrupt.pt", r"corrupt\.pt: not a PyTorch state_dict file")
    # a zip signature and nothing else: recognized by its magic, not its name
    (tmp_path / "magic.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    _refused(tmp_path / "magic.ckpt", r"magic\.ckpt: not a PyTorch state_dict file")


@pytest.mark.parametrize(
    "name, obj, match",
    [
        ("list.pt", [torch.zeros(8, 4)], "got a list"),
        ("tensor.pt", torch.zeros(8, 4), "got a Tensor"),
        ("nested.pt", {"model": {"0.weight": torch.zeros(8, 4)}}, "'model' holds dict"),
        ("number.pt", {"0.weight": torch.zeros(8, 4), "epoch": 3}, "'epoch' holds int"),
        ("int-keys.pt", {0: torch.zeros(8, 4)}, "the key 0 is not a string"),
        ("parent.pt", {"../0.weight": torch.zeros(8, 4)}, "invalid tensor name '../0.weight'"),
        ("slash.pt", {"0/weight": torch.zeros(8, 4)}, "invalid tensor name '0/weight'"),
        ("control.pt", {"0.wei\nght": torch.zeros(8, 4)}, "control character"),
    ],
)
def test_a_torch_file_that_is_not_a_flat_state_dict_is_refused(tmp_path, name, obj, match):
    torch.save(obj, tmp_path / name)
    _refused(tmp_path / name, match)


def test_a_directory_named_pt_is_refused(tmp_path):
    (tmp_path / "model.pt").mkdir()
    _refused(tmp_path / "model.pt", r"model\.pt is a directory, not a checkpoint file")
    _refused(tmp_path / "absent.pt", r"absent\.pt: no such checkpoint file")
