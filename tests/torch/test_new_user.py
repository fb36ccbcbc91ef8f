"""What a new user meets first, on PyTorch: public functions take the model itself, one dtype
policy everywhere, the command line reads what ut.load reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unitree as ut
from unitree._cli import main


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_load_and_summary_take_the_model_itself(tmp_path):
    """These raised a bare AttributeError on an nn.Module; ut.port already took models."""
    src, dst = mlp(0), mlp(1)
    ut.save(src, tmp_path / "m.safetensors")
    assert ut.load(dst, tmp_path / "m.safetensors") == ([], [])
    assert same(src, dst)
    assert "0.weight  Linear  (8, 4)  float32  32" in repr(ut.summary(src))
    src[0].weight.requires_grad_(False)
    row = next(r for r in str(ut.summary(src)).splitlines() if r.startswith("0.weight"))
    assert row.split()[-1] == "frozen"
    assert ut.load(dst[2], tmp_path / "m.safetensors", strict=False).missing_keys == [
        "weight",
        "bias",
    ]  # a native submodule is wrapped on its own: its paths are its own


def test_load_state_dict_has_the_dtype_policy_of_load_and_port(tmp_path):
    """A float64 state_dict used to be rounded silently into a float32 model by
    load_state_dict, while ut.load and ut.port refused the same cast."""
    src, dst = mlp(0).double(), mlp(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = {k: v.numpy() for k, v in src.state_dict().items()}
    with pytest.raises(ut.StateDictError, match=r"0\.weight: dtype float64 in the source, float32"):
        ut.wrap(dst).load_state_dict(sd)
    torch.save(src.state_dict(), tmp_path / "f64.pt")
    with pytest.raises(ut.StateDictError, match="pass cast=True"):
        ut.load(dst, tmp_path / "f64.pt")
    with pytest.raises(ut.PortError, match="pass cast=True"):
        ut.port(src, dst)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    ut.wrap(dst).load_state_dict(sd, cast=True)
    assert torch.equal(dst[0].weight, src[0].weight.float())  # what torch's copy_ would give


def test_show_and_diff_read_a_pytorch_file(tmp_path, capsys):
    """`unitree show model.pt` said the header length was over safetensors' limit."""
    src = mlp(0)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    ut.save(src, tmp_path / "model.safetensors")
    assert main(["show", str(tmp_path / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "model.pt (PyTorch state_dict)"
    assert "weight (8, 4) float32" in out and "4 tensors, 49 values, 196 bytes" in out
    assert main(["diff", str(tmp_path / "model.pt"), str(tmp_path / "model.safetensors")]) == 0
    assert "0.weight: max abs diff 0" in capsys.readouterr().out
    torch.save(mlp(1).state_dict(), tmp_path / "other.pt")
    assert main(["diff", str(tmp_path / "model.pt"), str(tmp_path / "other.pt")]) == 1


def test_show_of_a_tied_pytorch_file_marks_the_tie_and_counts_it_once(tmp_path, capsys):
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    src = nn.Sequential(nn.Linear(4, 8), shared, shared)
    torch.save(src.state_dict(), tmp_path / "tied.pt")  # torch stores the tied tensors once
    ut.save(src, tmp_path / "tied.safetensors")
    outputs = []
    for name in ("tied.pt", "tied.safetensors"):
        assert main(["show", str(tmp_path / name)]) == 0
        outputs.append(capsys.readouterr().out.splitlines()[1:])
    assert outputs[0] == outputs[1]  # the same tree, whichever file holds it
    assert "   ├─ weight (8, 8) float32 = 1.weight" in outputs[0]
    assert outputs[0][-1] == "4 tensors, 112 values, 448 bytes"
    untied = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    assert ut.load(untied, tmp_path / "tied.pt") == ([], [])  # as torch's own load would
    assert torch.equal(untied[2].weight, shared.weight)


def test_a_file_is_read_by_what_it_holds_not_by_its_name(tmp_path):
    """A torch.save'd file named .safetensors, or a safetensors file named .pt, used to fail."""
    src, dst = mlp(0), mlp(1)
    torch.save(src.state_dict(), tmp_path / "torch.safetensors")
    torch.save(src.state_dict(), tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    ut.save(src, tmp_path / "safe.pt")
    for name in ("torch.safetensors", "legacy.ckpt", "safe.pt"):
        dst = mlp(1)
        assert ut.load(dst, tmp_path / name) == ([], []), name
        assert same(src, dst), name
        assert main(["show", str(tmp_path / name)]) == 0
