"""Checkpoints and the command line, on the framework-free adapter."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from unitree_fake import FakeAdapter, Mod, dense, leaf, lstm, mlp, values

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
    with ut._files.Checkpoint(path) as ckpt:
        assert ckpt.metadata["backend"] == "flax" and ckpt.metadata["unitree_format_version"] == "1"
        assert json.loads(ckpt.metadata["ties"]) == [["2.weight", "4.weight"], ["2.bias", "4.bias"]]


def test_load_round_trip_and_all_or_nothing(make, tied, model, tmp_path):
    path = tmp_path / "m.safetensors"
    src = make(tied)
    ut.save(src, str(path))
    bigger = make(Mod("Sequential", **dict(model.children), **{"8": dense(1, 2, 9)}))
    before = {k: v.copy() for k, v in bigger.state_dict().items()}
    with pytest.raises(ut.StateDictError, match=r"8\.weight: missing"):
        ut.load(bigger, path)
    for k, v in bigger.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert ut.load(bigger, path, strict=False) == (["8.weight", "8.bias"], [])
    np.testing.assert_array_equal(bigger["2.weight"].numpy(), src["2.weight"].numpy())
    dst = make(mlp(shared=True, seed=7))
    assert ut.load(dst, path) == ([], [])
    assert all(np.array_equal(dst[k].numpy(), v) for k, v in src.state_dict().items())


def test_a_tied_paths_other_keys_load_as_torch_would(make, tied, model, tmp_path):
    """A file stores a tied tensor once, under its first path: its other paths are keys all
    the same, as in torch's state_dict (they used to read as missing, and a model lacking
    them loaded 'strictly')."""
    path = tmp_path / "m.safetensors"
    src = make(tied)
    ut.save(src, path)
    untied = make(model)  # separate layers at 2 and 4: each takes the tied tensor
    assert ut.load(untied, path) == ([], [])
    np.testing.assert_array_equal(untied["4.weight"].numpy(), src["2.weight"].numpy())
    np.testing.assert_array_equal(untied["4.bias"].numpy(), src["2.bias"].numpy())
    shorter = make(Mod("Sequential", **{k: v for k, v in mlp().children.items() if k != "4"}))
    with pytest.raises(ut.StateDictError, match=r"4\.weight: unexpected"):
        ut.load(shorter, path)
    assert ut.load(shorter, path, strict=False) == ([], ["4.weight", "4.bias"])


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


def _header(path) -> dict:
    """The raw safetensors header, in the order it was written."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0  # the data starts aligned
    return json.loads(raw[8 : 8 + n])


def test_save_writes_the_header_in_traversal_order(tmp_path):
    model = mlp(shared=True, backend="torch")
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    path = tmp_path / "m.safetensors"
    ut.save(tree, path, metadata={"note": "hello"})
    header = _header(path)
    meta = header.pop("__metadata__")
    assert list(header) == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    offset = 0
    for key, entry in header.items():  # the tensors follow one another in the same order
        a = leaf(model, key)
        assert entry["dtype"] == "F32" and entry["shape"] == list(a.shape)
        assert entry["data_offsets"] == [offset, offset + a.nbytes]
        offset += a.nbytes
    # "pt": PyTorch's names and layouts, what transformers' from_pretrained requires
    assert meta["note"] == "hello" and meta["format"] == "pt"
    assert meta["unitree_format_version"] == "1" and meta["backend"] == "torch"
    assert json.loads(meta["ties"]) == [["2.weight", "4.weight"], ["2.bias", "4.bias"]]
    assert sorted(json.loads(meta["paths"])) == sorted(
        f"{i}.{leaf_}" for i in (0, 2, 4, 6) for leaf_ in ("weight", "bias")
    )
    stored = load_file(path)
    assert set(stored) == set(header)
    for key, value in stored.items():
        np.testing.assert_array_equal(value, leaf(model, key))


def test_load_casts_only_when_lossless_unless_cast(make, model, tmp_path):
    tree = make(model)
    before = values(model)
    other = ut.ParamTree(FakeAdapter("torch"), mlp(backend="torch", seed=10))
    wide = {k: v.astype(np.float64) + 1e-12 for k, v in other.state_dict().items()}
    path = tmp_path / "wide.safetensors"
    save_file(wide, path)
    with pytest.raises(ut.StateDictError) as e:
        ut.load(tree, path, cast=False)
    assert "0.weight: dtype float64 in wide.safetensors, float32 in the model" in str(e.value)
    assert "cast=True" in str(e.value)
    assert values(model) == before
    assert ut.load(tree, path, cast=True) == ([], [])
    for key, value in wide.items():
        np.testing.assert_array_equal(tree[key].numpy(), value.astype(np.float32))
        assert tree[key].dtype == "float32"
    # float16 -> float32 is exact: no cast needed
    half = {k: v.astype(np.float16) for k, v in other.state_dict().items()}
    save_file(half, path)
    ut.load(tree, path)
    for key, value in half.items():
        np.testing.assert_array_equal(tree[key].numpy(), value.astype(np.float32))


def batch_norm(backend: str, seed: int) -> Mod:
    rng = np.random.default_rng(seed)
    w, b, mean, var = (rng.standard_normal(3).astype(np.float32) for _ in range(4))
    if backend == "torch":
        m = Mod("BatchNorm1d", "batch_norm", weight=w, bias=b)
        m.buffer("running_mean", mean).buffer("running_var", var)
        return m.buffer("num_batches_tracked", np.array(7, np.int64))
    return Mod("BatchNorm", "batch_norm", scale=w, bias=b).buffer("mean", mean).buffer("var", var)


def test_num_batches_tracked_is_optional_other_keys_are_not(tmp_path):
    torch_bn, flax_bn = batch_norm("torch", 1), batch_norm("flax", 2)
    torch_tree = ut.ParamTree(FakeAdapter("torch"), Mod("Net", bn=torch_bn))
    flax_tree = ut.ParamTree(FakeAdapter("flax"), Mod("Net", bn=flax_bn))
    a, b = tmp_path / "torch.safetensors", tmp_path / "flax.safetensors"
    ut.save(torch_tree, a)
    assert "bn.num_batches_tracked" in load_file(a)
    # an unexpected counter is no error under strict
    assert ut.load(flax_tree, a) == ([], ["bn.num_batches_tracked"])
    for flax_name, torch_name in (
        ("scale", "weight"),
        ("mean", "running_mean"),
        ("var", "running_var"),
    ):
        np.testing.assert_array_equal(flax_bn.leaves[flax_name][0], torch_bn.leaves[torch_name][0])
    # nor a missing one: the counter keeps its value
    flax_bn.leaves["mean"][0][...] = 5
    ut.save(flax_tree, b)
    assert ut.load(torch_tree, b) == (["bn.num_batches_tracked"], [])
    np.testing.assert_array_equal(torch_bn.leaves["running_mean"][0], 5)
    assert torch_bn.leaves["num_batches_tracked"][0] == 7
    # any other missing key is
    stored = load_file(b)
    del stored["bn.running_var"]
    save_file(stored, b)
    before = values(torch_bn)
    with pytest.raises(ut.StateDictError, match=r"bn\.running_var: missing") as e:
        ut.load(torch_tree, b)
    assert "num_batches_tracked" not in str(e.value)
    assert values(torch_bn) == before


def test_show_draws_paths_shapes_dtypes_ties_and_totals(tmp_path, capsys):
    model = Mod("Net", mlp=mlp(shared=True, backend="torch"), bn=batch_norm("torch", 1))
    path = tmp_path / "net.safetensors"
    ut.save(ut.ParamTree(FakeAdapter("torch"), model), path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "net.safetensors (torch)"
    text = "\n".join(out)
    for key, value in load_file(path).items():
        name = key.rpartition(".")[2]
        assert f"{name} {value.shape} {value.dtype}" in text, key
    # the tied paths are drawn where they are, pointing at the stored one
    assert "weight (8, 8) float32 = mlp.2.weight" in text
    assert "bias (8,) float32 = mlp.2.bias" in text
    stored = load_file(path)
    count = sum(v.size for v in stored.values())
    size = sum(v.nbytes for v in stored.values())
    assert out[-1] == f"{len(stored)} tensors, {count:,} values, {size:,} bytes"
    # in traversal order: mlp first, its layers in order, then bn
    assert [line[3:] for line in out[1:-1] if line[:3] in ("├─ ", "└─ ")] == ["mlp", "bn"]
    assert [line[6:] for line in out[1:-1] if line[:6] in ("│  ├─ ", "│  └─ ")] == [
        "0",
        "2",
        "4",
        "6",
    ]


def test_show_keeps_the_model_order_with_a_tied_leaf(tmp_path, capsys):
    model = Mod(
        "Net", a=dense(3, 3, 1, "torch"), b=dense(3, 3, 2, "torch"), c=dense(3, 3, 3, "torch")
    )
    tree = ut.ParamTree(FakeAdapter("torch"), model)
    tree.tie("a.weight", "c.weight")  # one leaf tied, not the whole module
    path = tmp_path / "m.safetensors"
    ut.save(tree, path)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "│  ├─ weight (3, 3) float32 = a.weight" not in out  # c is drawn last: no "│" before it
    assert [line[3:] for line in out[1:-1] if line[:3] in ("├─ ", "└─ ")] == ["a", "b", "c"]
    with ut._files.Checkpoint(path) as ckpt:
        assert json.loads(ckpt.metadata["paths"]) == [
            "a.weight",
            "a.bias",
            "b.weight",
            "b.bias",
            "c.weight",
            "c.bias",
        ]


def test_diff_reports_each_path_and_exits_1_only_on_differences(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tree = ut.ParamTree(FakeAdapter("torch"), mlp(backend="torch"))
    ut.save(tree, a)
    ut.save(tree, b)
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    # every path, in the model's order
    assert out == [
        f"{i}.{name}: max abs diff 0" for i in (0, 2, 4, 6) for name in ("weight", "bias")
    ]
    other = {k: v.copy() for k, v in load_file(a).items()}
    other["2.weight"][3, 1] -= 0.25
    other["0.bias"] = other["0.bias"].astype(np.float64)  # same values, another dtype
    del other["6.bias"]
    other["extra"] = np.zeros(2, np.float32)
    save_file(other, b)
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "2.weight: max abs diff 0.25" in out
    assert "0.bias: max abs diff 0  (dtype float32 in A, float64 in B)" in out
    assert "only in A (missing from B): 6.bias" in out
    assert "only in B (unexpected): extra" in out
    # a dtype difference alone is a difference
    only = {k: v.copy() for k, v in load_file(a).items()}
    only["0.bias"] = only["0.bias"].astype(np.float64)
    save_file(only, b)
    assert main(["diff", str(a), str(b)]) == 1


def test_a_codec_layer_is_saved_under_torch_names_and_loads_anywhere(tmp_path):
    cell = lstm(2, 3, 1, "flax")  # linen's per-gate cell: no torch leaf is a native leaf
    path = tmp_path / "lstm.safetensors"
    ut.save(ut.ParamTree(FakeAdapter("flax"), Mod("Net", rnn=cell)), path)
    header = _header(path)
    header.pop("__metadata__")
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert list(header) == [f"rnn.{n}" for n in names]
    stored = load_file(path)
    np.testing.assert_array_equal(
        stored["rnn.weight_ih_l0"], np.concatenate([leaf(cell, f"i{g}.kernel").T for g in "ifgo"])
    )
    # one bias per gate: it reads as bias_ih, as in Keras and NNX's fused cell; bias_hh is zero
    np.testing.assert_array_equal(
        stored["rnn.bias_ih_l0"], np.concatenate([leaf(cell, f"h{g}.bias") for g in "ifgo"])
    )
    np.testing.assert_array_equal(stored["rnn.bias_hh_l0"], 0)
    torch = lstm(2, 3, 2, "torch")
    assert ut.load(ut.ParamTree(FakeAdapter("torch"), Mod("Net", rnn=torch)), path) == ([], [])
    for n in names:
        np.testing.assert_array_equal(leaf(torch, n), stored[f"rnn.{n}"])
    keras = lstm(2, 3, 3, "keras")
    ut.load(ut.ParamTree(FakeAdapter("keras"), Mod("Net", rnn=keras)), path)
    np.testing.assert_array_equal(leaf(keras, "cell.kernel"), stored["rnn.weight_ih_l0"].T)
    np.testing.assert_array_equal(
        leaf(keras, "cell.bias"), stored["rnn.bias_ih_l0"] + stored["rnn.bias_hh_l0"]
    )


def test_diff_finds_a_tied_parameter_under_any_of_its_paths(make, tied, model, tmp_path, capsys):
    a, b = tmp_path / "tied.safetensors", tmp_path / "untied.safetensors"
    ut.save(make(tied), a)
    untied = make(model)
    untied.load_state_dict({k: make(tied)[k].numpy() for k, _ in untied.named_parameters()})
    ut.save(untied, b)
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "4.weight: tied to 2.weight in A, stored in B" in out
    assert "only in" not in out  # every path is in both, stored or tied
    assert "4.weight: max abs diff 0" in out  # compared under the key B stores it at
    assert main(["diff", str(a), str(a)]) == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_gives_a_new_file_the_permissions_open_would(tmp_path, make, model, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "by-open", "wb"):
            pass
        ut.save(make(model), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    want = os.stat(tmp_path / "by-open").st_mode & 0o777
    assert want == 0o666 & ~umask
    assert os.stat(tmp_path / "m.safetensors").st_mode & 0o777 == want


def test_save_over_a_file_keeps_its_permissions(tmp_path, make, model):
    path = tmp_path / "m.safetensors"
    ut.save(make(model), path)
    for mode in (0o644, 0o640, 0o600, 0o664):
        os.chmod(path, mode)
        ut.save(make(model), path)
        assert os.stat(path).st_mode & 0o777 == mode
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_a_dtype_safetensors_lacks_is_refused_before_writing(tmp_path):
    """complex128 used to raise a bare KeyError('complex128') from the middle of save."""
    z = np.zeros((2, 3), np.complex128)
    tree = ut.ParamTree(FakeAdapter("torch"), Mod("Net", **{"0": Mod("Linear", "dense", weight=z)}))
    with pytest.raises(ut.ValueTypeError, match=r"0\.weight.*safetensors has no complex128") as e:
        ut.save(tree, tmp_path / "m.safetensors")
    assert isinstance(e.value, ut.UnitreeError) and "nothing was written" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_bfloat16_needs_nothing_more_than_the_core(tmp_path, capsys):
    """ml_dtypes is a dependency of the core: bf16 works in an environment with no framework."""
    import ml_dtypes

    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    tree = ut.ParamTree(FakeAdapter("torch"), Mod("Net", **{"0": Mod("Linear", "dense", weight=w)}))
    assert tree["0.weight"].dtype == "bfloat16"
    assert tree.state_dict()["0.weight"].dtype == ml_dtypes.bfloat16
    path = tmp_path / "bf16.safetensors"
    ut.save(tree, path)
    assert main(["show", str(path)]) == 0
    assert "weight (2, 3) bfloat16" in capsys.readouterr().out
    other = ut.ParamTree(
        FakeAdapter("torch"), Mod("Net", **{"0": Mod("Linear", "dense", weight=w * 0)})
    )
    ut.load(other, path)
    assert other["0.weight"].numpy().tobytes() == w.tobytes()


def test_reading_works_where_the_os_has_no_pread(tmp_path, make, tied, model, monkeypatch):
    """Windows has neither os.pread nor os.preadv: a seek and a read, under a lock."""
    path = tmp_path / "m.safetensors"
    ut.save(make(tied), path)
    monkeypatch.delattr(os, "preadv", raising=False)
    monkeypatch.delattr(os, "pread", raising=False)
    with ut._files.Checkpoint(path) as ckpt:
        read = {k: ckpt[k] for k in ckpt.header}
    for key, value in load_file(path).items():
        assert read[key].tobytes() == value.tobytes(), key
    dst = make(mlp(shared=True, seed=5))
    ut.load(dst, path)
    assert all(np.array_equal(dst.state_dict()[k], v) for k, v in load_file(path).items())


def test_show_of_a_pytorch_file_without_torch_says_what_it_needs(tmp_path):
    """`unitree show model.pt` used to say the header length was over safetensors' limit.
    Run where torch cannot be imported, whatever this environment holds."""
    import subprocess
    import sys
    import zipfile

    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/data.pkl", b"")
    code = (
        "import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
        "from unitree._cli import main; sys.exit(main(['show', sys.argv[1]]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == 2, done
    assert "model.pt is a PyTorch file: reading it needs torch" in done.stderr
    assert "header" not in done.stderr and "Traceback" not in done.stderr


def test_diff_measures_bfloat16_float8_and_complex_values(tmp_path, capsys):
    """A difference in a bfloat16 or float8 tensor used to read 'max abs diff inf'."""
    import ml_dtypes

    a = {"b": np.array([1.0, 2.0], ml_dtypes.bfloat16), "f": np.array([1.0, 2.0], np.float32)}
    b = {"b": np.array([1.0, 2.5], ml_dtypes.bfloat16), "f": np.array([1.0, 1.5], np.float32)}
    a["c"], b["c"] = np.array([1 + 1j], np.complex64), np.array([1 + 3j], np.complex64)
    a["n"], b["n"] = np.array([np.nan, 1.0], np.float32), np.array([np.nan, 1.0], np.float32)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    assert main(["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "b: max abs diff 0.5" in lines and "f: max abs diff 0.5" in lines
    assert "c: max abs diff 2" in lines and "n: max abs diff 0" in lines
    f8 = {"x": np.array([1.0, 2.0], ml_dtypes.float8_e4m3fn)}
    save_file(f8, tmp_path / "f8.safetensors")
    save_file({"x": np.array([1.0, 3.0], np.float32)}, tmp_path / "f32.safetensors")
    main(["diff", str(tmp_path / "f8.safetensors"), str(tmp_path / "f32.safetensors")])
    assert "x: max abs diff 1  (dtype float8_e4m3fn in A, float32 in B)" in capsys.readouterr().out


def test_a_save_goes_where_open_would_and_fails_as_open_would(tmp_path, make, model):
    """A missing folder named the temporary file; '.' said 'device or resource busy'; a
    symbolic link was replaced by a file instead of writing its target."""
    tree = make(model)
    with pytest.raises(FileNotFoundError) as e:
        ut.save(tree, tmp_path / "nodir" / "m.safetensors")
    assert e.value.filename == str(tmp_path / "nodir" / "m.safetensors")
    with pytest.raises(IsADirectoryError):
        ut.save(tree, tmp_path)
    for bad in (3, None):
        with pytest.raises(ut.ValueTypeError, match="Expected a file path"):
            ut.save(tree, bad)  # type: ignore[arg-type]
        with pytest.raises(ut.ValueTypeError, match="Expected a file path"):
            ut.load(tree, bad)  # type: ignore[arg-type]
    target = tmp_path / "real.safetensors"
    ut.save(tree, target)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    ut.save(make(mlp(seed=3)), link)
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    assert load_file(target)["0.weight"].tolist() == make(mlp(seed=3))["0.weight"].numpy().tolist()
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real.safetensors"]


@pytest.mark.parametrize("order", [["0", "0.weight"], ["0.weight", "0"]])
def test_show_draws_a_leaf_and_a_module_of_one_name(tmp_path, capsys, order):
    """A file holding "0" and "0.weight" dropped one tensor, or crashed, in either order."""
    save_file(
        {k: np.zeros(i + 1, np.float32) for i, k in enumerate(order)}, tmp_path / "m.safetensors"
    )
    assert main(["show", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "0 (" in out and "weight (" in out and "2 tensors, 3 values, 12 bytes" in out


def test_conformance_refuses_what_it_cannot_run_in_one_line(monkeypatch, capsys):
    """An unknown backend, one that cannot be imported, or a device with no column printed a
    traceback, or ran nothing and exited 0."""
    import sys

    monkeypatch.setitem(sys.modules, "unitree.conformance.builders.keras", None)
    for args, words in [
        (["--backend", "nosuch"], "Unknown backend 'nosuch'; expected one of ['flax-linen'"),
        (["--backend", "keras"], "cannot be imported here"),
        (["--device", "tpu"], "Unknown device 'tpu': expected cpu, gpu"),
    ]:
        assert main(["conformance", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("unitree: ") and words in err and len(err.splitlines()) == 1, err


def test_a_checkpoint_of_a_newer_format_is_refused_not_guessed(tmp_path, make, model):
    tree = make(model)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    path = tmp_path / "future.safetensors"
    for meta in (
        {"format": "pt", "unitree_format_version": "99"},
        {"format": "unitree", "format_version": "99"},  # as unitree's first files said it
    ):
        save_file(dict(before), path, metadata=meta)
        with pytest.raises(
            ut.CheckpointError, match=r"format version '99'; this version of unitree reads"
        ):
            ut.load(tree, path)
        assert all(np.array_equal(tree[k].numpy(), v) for k, v in before.items())
    text = tmp_path / "notes.safetensors"
    text.write_text("these are notes, not tensors\n")
    with pytest.raises(ut.CheckpointError, match="not a safetensors file, or a damaged one"):
        ut.load(tree, text)


def test_conformance_exits_1_on_a_failing_cell_so_its_session_fails(monkeypatch, tmp_path, capsys):
    """A backend session used to run `unitree conformance` with exit status 1 allowed, and
    reported success with a failing column; nox now fails the session on that status."""
    from unitree.conformance import matrix

    cell = matrix.Cell("gradients", "keras-tensorflow", "cpu", "fail", "cpu: AssertionError: loss")
    monkeypatch.setattr(matrix, "run", lambda *a, **k: [cell])
    monkeypatch.setattr(matrix, "run_ports", lambda *a, **k: [])
    monkeypatch.setattr(matrix, "run_files", lambda *a, **k: [])
    monkeypatch.setattr(matrix, "versions", lambda names: "versions")
    report = tmp_path / "part.json"
    assert main(["conformance", "--backend", "keras", "--report", str(report)]) == 1
    assert "FAIL gradients on keras-tensorflow" in capsys.readouterr().out
    assert json.loads(report.read_text())["cells"][0]["status"] == "fail"  # the column is kept
    monkeypatch.setattr(matrix, "run", lambda *a, **k: [cell._replace(status="pass")])
    assert main(["conformance", "--backend", "keras"]) == 0


# -- copies: the tiled transposed copy, aligned buffers, memory-mapped views ---------------------
@pytest.mark.parametrize(
    "shape", [(300, 400), (257, 129), (4096, 16), (16, 4096), (1000, 70), (5, 7), (3, 40, 50)]
)
def test_contiguous_copies_a_transposed_view_exactly(shape):
    from unitree._param import contiguous, fresh

    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape[::-1]).astype(np.float32).T  # a strided view
    expected = np.ascontiguousarray(a)
    out = contiguous(a)
    assert out.flags.c_contiguous and out.dtype == a.dtype
    np.testing.assert_array_equal(out, expected)
    into = np.zeros(shape, np.float32)
    assert contiguous(a, into) is into
    np.testing.assert_array_equal(into, expected)
    f = fresh(a)
    assert f.ctypes.data % 64 == 0 and f.flags.c_contiguous and not np.shares_memory(f, a)
    np.testing.assert_array_equal(f, expected)


def test_a_stored_tensor_reads_as_the_file_holds_it(tmp_path):
    """``Checkpoint.stored`` reads what safetensors wrote, in any order, into a fresh array
    (``np.asarray``) or into a given one; a file cut short while it is read is an error."""
    from safetensors.numpy import save_file

    from unitree._files import Checkpoint

    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal((i + 1, 1000)).astype(np.float32) for i in range(40)}
    arrays["empty"] = np.zeros((0, 3), np.float32)
    arrays["half"] = rng.standard_normal(7).astype(np.float16)
    save_file(arrays, str(tmp_path / "m.safetensors"))
    with Checkpoint(tmp_path / "m.safetensors") as ckpt:
        for k in reversed(list(arrays)):
            stored = ckpt.stored(k)
            assert (stored.shape, stored.dtype) == (arrays[k].shape, arrays[k].dtype)
            np.testing.assert_array_equal(np.asarray(stored), arrays[k], err_msg=k)
            out = np.full(arrays[k].shape, 7, arrays[k].dtype)
            stored.read_into(out)
            np.testing.assert_array_equal(out, arrays[k], err_msg=k)
            turned = stored.T  # a file's layout transposed from canonical: read as its .T
            assert turned.turned and turned.shape == arrays[k].shape[::-1]
            np.testing.assert_array_equal(np.asarray(turned), arrays[k].T, err_msg=k)
        with pytest.raises(ValueError, match="not C-contiguous"):
            ckpt.stored("t3").read_into(np.zeros((1000, 4), np.float32).T)
        os.truncate(tmp_path / "m.safetensors", os.path.getsize(tmp_path / "m.safetensors") - 8)
        with pytest.raises(ut.CheckpointError, match="truncated"):
            np.asarray(ckpt.stored(list(arrays)[-1]))
