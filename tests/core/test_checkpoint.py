"""Checkpoints and the command line, on the framework-free adapter."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import unitree as ut
from unitree._cli import main


def test_save_is_canonical_and_stores_ties_once(make, tied, tmp_path):
    tree = make(tied)
    path = tmp_path / "m.safetensors"
    ut.save(tree, path)
    stored = load_file(path)
    assert sorted(stored) == sorted(
        ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    )
    np.testing.assert_array_equal(stored["0.weight"], tied.children["0"].leaves["kernel"][0].T)
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind
    with ut._checkpoint.Checkpoint(path) as ckpt:
        assert ckpt.metadata["backend"] == "flax" and ckpt.metadata["format_version"] == "1"
        assert json.loads(ckpt.metadata["ties"]) == [["2.weight", "4.weight"], ["2.bias", "4.bias"]]


def test_load_round_trip_and_all_or_nothing(make, tied, model, tmp_path):
    path = tmp_path / "m.safetensors"
    src = make(tied)
    ut.save(src, str(path))
    dst = make(model)  # untied: 4.* is missing from the file
    before = {k: v.copy() for k, v in dst.state_dict().items()}
    with pytest.raises(ut.StateDictError, match=r"4\.weight: missing"):
        ut.load(dst, path)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert ut.load(dst, path, strict=False) == (["4.weight", "4.bias"], [])
    np.testing.assert_array_equal(dst["2.weight"].numpy(), src["2.weight"].numpy())
    dst.tie(2, 4)
    assert ut.load(dst, path) == ([], [])


def test_load_refuses_what_it_cannot_read(make, model, tmp_path):
    tree = make(model)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 5)
    for bad in (garbage, tmp_path, tmp_path / "absent.safetensors"):
        with pytest.raises(ut.CheckpointError):
            ut.load(tree, bad)


def test_show_and_diff(make, tied, tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tree = make(tied)
    ut.save(tree, a)
    tree["6.bias"][0] = tree["6.bias"][0] + 0.5
    ut.save(tree, b)
    assert main(["show", str(a)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a.safetensors (flax)"
    assert "│  ├─ weight (8, 8) float32 = 2.weight" in out
    assert out[-1] == "6 tensors, 121 values, 484 bytes"
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "6.bias: max abs diff 0.5" in out and "0.weight: max abs diff 0" in out
    save_file({"0.weight": np.zeros((8, 4), np.float32), "x": np.zeros(1, np.float32)}, b)
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "only in A (missing from B): 0.bias" in out and "only in B (unexpected): x" in out
    assert main(["diff", str(a), str(a)]) == 0
    assert main(["show", str(tmp_path / "absent")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(
    make, model, tmp_path, monkeypatch
):
    path = tmp_path / "m.safetensors"
    tree = make(model)
    ut.save(tree, path)
    before = path.read_bytes()
    tree["0.bias"][0] = 42

    real = np.ascontiguousarray
    calls = []

    def broken(a, *args, **kwargs):  # fails on the third tensor, after half a file is written
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(a, *args, **kwargs)

    monkeypatch.setattr("unitree._checkpoint.np.ascontiguousarray", broken)
    with pytest.raises(OSError, match="disk full"):
        ut.save(tree, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]
