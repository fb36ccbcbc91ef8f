"""The core on a framework-free adapter: paths, order, layouts, ties, writes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from unitree_fake import Mod, dense, mlp

import unitree as ut
from unitree.layouts import channels_last_kernel, inverse

PICTURE = """\
Sequential
├─ 0: Dense
│  ├─ weight (8, 4)
│  └─ bias (8,)
├─ 1: relu (no params)
├─ 2: Dense
│  ├─ weight (8, 8)
│  └─ bias (8,)
├─ 3: relu (no params)
├─ 4: Dense
│  ├─ weight (8, 8) = 2.weight
│  └─ bias (8,) = 2.bias
├─ 5: relu (no params)
└─ 6: Dense
   ├─ weight (1, 8)
   └─ bias (1,)"""


def test_paths_order_and_canonical_layout(make, model):
    tree = make(model)
    # bias is stored before kernel natively; canonical order is weight first, (out, in)
    assert [(k, p.shape) for k, p in tree.named_parameters()][:2] == [
        ("0.weight", (8, 4)),
        ("0.bias", (8,)),
    ]
    kernel = model.children["0"].leaves["kernel"][0]
    np.testing.assert_array_equal(tree["0.weight"].numpy(), kernel.T)
    assert np.shares_memory(tree["0.weight"].numpy(), kernel)  # a view, not a copy
    assert tree[0].weight is tree["0"].weight is tree["0.weight"] is tree[0]["weight"]
    assert tree[-1] is tree[6] and len(tree) == 7 and [n.path for n in tree][:2] == ["0", "1"]


def test_node_methods_are_relative(make, model):
    tree = make(model)
    assert [k for k, _ in tree[2].named_parameters()] == ["weight", "bias"]
    assert list(tree[2].state_dict()) == ["weight", "bias"]
    assert next(iter(tree.named_parameters(prefix="net")))[0] == "net.0.weight"
    assert [k for k, _ in tree.named_modules()] == ["", "0", "1", "2", "3", "4", "5", "6"]


def test_picture_marks_ties(make, tied):
    assert str(make(tied)) == PICTURE


def test_ties_and_identity(make, tied):
    tree = make(tied)
    assert tree[2].weight is tree[4].weight
    assert tree.ties() == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    assert tree[4].weight.paths == ("2.weight", "4.weight")
    once = ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    assert [k for k, _ in tree.named_parameters()] == once
    assert len(list(tree.named_parameters(remove_duplicate=False))) == 8
    assert list(tree.state_dict()) == once
    assert [n for n, _ in tree.named_modules()] == ["", "0", "1", "2", "3", "5", "6"]
    tree[4].weight[0, 1] = 5.0
    assert tree[2].weight[0, 1] == 5.0
    assert tied.children["2"].leaves["kernel"][0][1, 0] == 5.0  # canonical (0, 1) is native (1, 0)


def test_select(make, tied):
    tree = make(tied)
    assert [p.path for p in tree.select("*.bias")] == ["0.bias", "2.bias", "6.bias"]
    assert [p.path for p in tree.select("4.*")] == ["2.weight", "2.bias"]
    assert tree.select("nothing*") == []


def test_wrong_path_names_the_closest(make, model):
    tree = make(model)
    with pytest.raises(KeyError, match=r"'2\.wieght'.*'2\.weight'"):
        tree["2.wieght"]
    with pytest.raises(ut.PathError):
        tree[9]
    with pytest.raises(AttributeError):
        _ = tree[2].wieght
    assert not hasattr(tree[2], "kernel")  # native names are not paths
    assert "2.weight" in tree and "2.kernel" not in tree


def test_write_validation_changes_nothing(make, model):
    tree = make(model)
    p = tree["0.weight"]
    before = p.numpy().copy()
    with pytest.raises(ut.ShapeError, match=r"0\.weight.*\(8, 4\).*\(4, 8\)"):
        p.set(np.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"shape \(3,\).*0\.weight\[0\].*\(4,\)"):
        p[0] = np.zeros(3)
    with pytest.raises(TypeError, match="numeric"):
        p[0, 0] = "abc"
    with pytest.raises(TypeError, match="complex128"):
        p[0, 0] = 1j
    with pytest.raises(ut.ShapeError, match="out of"):
        p[8, 0] = 1.0
    np.testing.assert_array_equal(p.numpy(), before)
    p[1] = 2  # ints into float: same kind, broadcast over the row
    assert (p.numpy()[1] == 2).all() and (p.numpy()[0] == before[0]).all()


def test_numpy_is_read_only(make, model):
    a = make(model)["0.weight"].numpy()
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = 1


def test_load_state_dict_is_all_or_nothing(make, model, adapter):
    tree = make(model)
    sd = {k: v + 1 for k, v in tree.state_dict().items()}
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    bad = dict(sd, extra=np.zeros(1))
    del bad["6.bias"]
    bad["2.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ut.StateDictError) as e:
        tree.load_state_dict(bad)
    message = str(e.value)
    assert "6.bias: missing" in message and "extra: unexpected" in message
    assert "2.weight: shape (3, 3) in the source, (8, 8) in the model" in message
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # strict=False: skips the keys, still refuses a wrong shape
    with pytest.raises(ut.StateDictError, match=r"2\.weight: shape"):
        tree.load_state_dict(bad, strict=False)
    good = dict(sd, extra=np.zeros(1))
    del good["6.bias"]
    assert tree.load_state_dict(good, strict=False) == (["6.bias"], ["extra"])
    np.testing.assert_array_equal(tree["2.weight"].numpy(), sd["2.weight"])


def test_load_rolls_back_a_failure_halfway(make, model, adapter):
    tree = make(model)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    adapter.fail_after = adapter.writes + 3  # the fourth tensor write fails
    with pytest.raises(RuntimeError, match="injected"):
        tree.load_state_dict({k: v + 1 for k, v in before.items()})
    for k, v in tree.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_tied_keys_must_agree(make, tied):
    tree = make(tied)
    sd = tree.state_dict()
    sd["4.weight"] = sd["2.weight"] + 1
    with pytest.raises(ut.StateDictError, match=r"2\.weight and 4\.weight are one tied parameter"):
        tree.load_state_dict(sd)
    sd["4.weight"] = sd["2.weight"].copy()
    tree.load_state_dict(sd)  # both given and equal: fine
    del sd["2.weight"]
    tree.load_state_dict(sd)  # given under the alias only: fine


def test_dtype_rules(make, model, tmp_path):
    """One dtype policy for load_state_dict, ut.load and ut.port: lossless conversions only
    (float16 -> float32), any numeric one with cast=True; refused, nothing is written."""
    tree = make(model)
    sd = {k: v.copy() for k, v in tree.state_dict().items()}
    doubles = {k: v.astype(np.float64) + 1e-12 for k, v in sd.items()}  # rounds to float32
    with pytest.raises(
        ut.StateDictError,
        match=r"0.weight: dtype float64 in the source, float32 in the model \(a lossy cast: pass cast=True",
    ):
        tree.load_state_dict(doubles)
    assert all(np.array_equal(tree[k].numpy(), v) for k, v in sd.items())  # nothing written
    ut.save(make(mlp(dtype="float64")), tmp_path / "f64.safetensors")
    with pytest.raises(ut.StateDictError, match="a lossy cast: pass cast=True"):
        ut.load(tree, tmp_path / "f64.safetensors")
    with pytest.raises(ut.PortError, match="a lossy cast: pass cast=True"):
        ut.port(make(mlp(dtype="float64")), tree)
    assert all(np.array_equal(tree[k].numpy(), v) for k, v in sd.items())
    tree.load_state_dict(doubles, cast=True)  # rounded, as numpy's astype rounds
    assert all(np.array_equal(tree[k].numpy(), v.astype(np.float32)) for k, v in doubles.items())
    tree.load_state_dict({k: v.astype(np.float16) for k, v in sd.items()})  # lossless
    with pytest.raises(
        ut.StateDictError, match=r"0.weight: dtype complex128 in the source, float32 in the model"
    ):
        tree.load_state_dict(dict(sd, **{"0.weight": np.zeros((8, 4), np.int64) + 1j}))


def test_tie_modules_and_leaves(make, model):
    tree = make(model)
    tree.tie(2, 4)
    assert tree[2].weight is tree[4].weight
    assert tree.ties() == [("2.weight", "4.weight"), ("2.bias", "4.bias")]
    tree.tie("0.bias", "2.bias")  # one leaf: module 4 keeps the bias it had
    assert tree["2.bias"] is tree["0.bias"] is not tree["4.bias"]
    assert tree.ties() == [("0.bias", "2.bias"), ("2.weight", "4.weight")]
    with pytest.raises(
        ut.ShapeError, match=r"weight: \(8, 4\) float32 in 0, \(8, 8\) float32 in 2"
    ):
        tree.tie(0, 2)
    with pytest.raises(TypeError, match="two modules or two leaves"):
        tree.tie(0, "2.weight")


def test_structure_change_is_seen(make, model):
    tree = make(model)
    assert tree[6].weight.shape == (1, 8)
    model.children["6"] = dense(8, 3, 9)
    assert tree[6].weight.shape == (3, 8)
    assert dict((k, p.shape) for k, p in tree.named_parameters())["6.weight"] == (3, 8)


def test_a_change_right_after_the_first_read_is_seen(make, model):
    # the fingerprint of the first read is made on the next check, from what that read saw
    tree = make(model)
    first = dict(tree.named_parameters())
    model.children["6"] = dense(8, 3, 9)
    after = dict(tree.named_parameters())
    assert after["6.weight"].shape == (3, 8) and after["6.weight"] is not first["6.weight"]
    assert after["0.weight"] is first["0.weight"]


def test_params_survive_a_reread(make, model):
    tree = make(model)
    p = tree["0.weight"]
    model.children["7"] = Mod("relu")
    assert "7" in [k for k, _ in tree.named_modules()]
    assert tree["0.weight"] is p


def test_summary(make, tied, adapter):
    tree = make(tied)
    summary = ut.summary(tree)
    lines = str(summary).splitlines()
    assert lines[0].split() == ["path", "type", "shape", "dtype", "count", "frozen", "tied", "with"]
    assert lines[4].split() == ["2.weight", "Dense", "(8,", "8)", "float32", "64", "4.weight"]
    assert lines[-1] == "parameters: 121   buffers: 0   size: 484 B"
    assert repr(summary) == str(summary)  # a REPL shows the table, not an object address
    adapter.frozen.add(id(tree["0.weight"].native))  # requires_grad=False, trainable=False...
    lines = str(ut.summary(tree)).splitlines()
    assert lines[2].split() == ["0.weight", "Dense", "(8,", "4)", "float32", "32", "frozen"]
    assert lines[3].split() == ["0.bias", "Dense", "(8,)", "float32", "8"]
    assert lines[-1] == "parameters: 121 (32 frozen)   buffers: 0   size: 484 B"


def test_buffers(make):
    bn = Mod("BatchNorm", "batch_norm", scale=np.ones(3, np.float32)).buffer(
        "mean", np.zeros(3, np.float32)
    )
    tree = make(Mod("Sequential", **{"0": bn}))
    assert [k for k, _ in tree.named_parameters()] == ["0.weight"]
    assert [k for k, _ in tree.named_buffers()] == ["0.running_mean"]
    assert not tree["0.running_mean"].trainable and tree["0.running_mean"].is_buffer
    assert "running_mean (3,) [buffer]" in str(tree)


def test_kernel_permutations():
    assert channels_last_kernel(2) == (1, 0)
    assert channels_last_kernel(4) == (3, 2, 0, 1)  # HWIO -> OIHW
    k = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)  # (kh, kw, in, out)
    w = k.transpose(channels_last_kernel(4))
    assert w.shape == (7, 5, 2, 3) and w[6, 4, 1, 2] == k[1, 2, 4, 6]
    np.testing.assert_array_equal(w.transpose(inverse(channels_last_kernel(4))), k)


def test_errors_derive_from_builtins():
    assert issubclass(ut.PathError, KeyError) and issubclass(ut.PathError, ut.UnitreeError)
    assert issubclass(ut.ShapeError, ValueError) and issubclass(ut.StateDictError, ValueError)
    assert issubclass(ut.UnsupportedModelError, TypeError) and issubclass(
        ut.ValueTypeError, TypeError
    )
    assert str(ut.PathError("plain message")) == "plain message"  # not KeyError's quoted repr


def test_wrap_returns_a_tree_as_is(make, model):
    tree = make(model)
    assert ut.wrap(tree) is tree


def test_wrap_rejects_unknown_objects():
    with pytest.raises(
        TypeError, match=r"builtins\.object.*torch\.nn\.Module.*unitree-params\[torch\]"
    ):
        ut.wrap(object())


def test_a_framework_without_adapter_is_not_taken_for_another():
    # the most derived framework decides: a tf.Module that is also a torch module is TensorFlow's
    TorchModule = type("Module", (), {"__module__": "torch.nn.modules.module"})
    TFModule = type("Module", (TorchModule,), {"__module__": "tensorflow.python.module.module"})
    Mine = type("MyModel", (TFModule,), {"__module__": "__main__"})
    with pytest.raises(
        ut.UnsupportedModelError, match=r"__main__\.MyModel: TensorFlow has no adapter"
    ):
        ut.wrap(Mine())


def test_children_iteration_and_negative_positions(make, model):
    tree = make(model)
    assert len(tree) == 7 and len(tree[0]) == 0
    assert [n.path for n in tree] == ["0", "1", "2", "3", "4", "5", "6"]
    assert tree[-7] is tree[0]
    with pytest.raises(ut.PathError, match="Index -8 is out of range: the root has 7 children"):
        tree[-8]
    with pytest.raises(ut.PathError, match="Expected a path"):
        tree[1.5]
    assert [k for k, _ in tree[2].named_modules()] == [""]
    assert repr(tree[2]) == "<Node '2': Dense>" and repr(tree) == "<ParamTree '(root)': Sequential>"
    assert (
        repr(tree["2.weight"]) == "Param('2.weight', shape=(8, 8), dtype='float32', device='cpu')"
    )


def test_tie_refuses_a_buffer_for_a_parameter(make):
    a = Mod("Norm", scale=np.ones(3, np.float32))
    b = Mod("Norm").buffer("scale", np.ones(3, np.float32))
    tree = make(Mod("Sequential", a=a, b=b))
    with pytest.raises(
        ut.ShapeError, match=r"scale: \(3,\) float32 in 'a', \(3,\) float32 buffer in 'b'"
    ):
        tree.tie("a", "b")
    assert tree["a.scale"] is not tree["b.scale"]


def test_summary_draws_with_rich(make, tied):
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(ut.summary(make(tied)))
    text = console.export_text()
    assert "4.weight" in text and "parameters: 121" in text


def test_third_party_adapters_register_by_entry_point(monkeypatch, adapter):
    from unitree import _adapter

    Model = type("Model", (), {"__module__": "myframework.nn"})
    monkeypatch.setattr(_adapter, "_entry_points", lambda: {"myframework": "my_adapter_module"})
    monkeypatch.setitem(_adapter._loaded, "my_adapter_module", adapter)
    assert _adapter.adapter_for(Model()) is adapter


def test_a_capability_an_adapter_lacks_is_named(make, model):
    tree = make(model)  # the fake adapter keeps no gradients and runs no backward
    with pytest.raises(NotImplementedError, match="zero_grad is not supported by the flax adapter"):
        tree.zero_grad()
    with pytest.raises(NotImplementedError, match="backward is not supported"):
        tree.backward(lambda y: y, None)
    with pytest.raises(NotImplementedError, match=r"tree\.variables is for flax linen"):
        tree.variables  # noqa: B018


def test_wrap_of_a_tree_with_variables_refuses_instead_of_dropping_them(make, model):
    tree = make(model)
    assert ut.wrap(tree) is tree
    with pytest.raises(ut.UnsupportedModelError, match="a tree already holds its variables"):
        ut.wrap(tree, {"params": {}})


def test_the_gc_pause_is_shared_by_threads_and_keeps_a_users_choice(make, adapter):
    """Readers in several threads used to switch the process-wide collector on under each
    other, and a read turned it back on after a user's own gc.disable()."""
    import gc
    import threading

    first, second = mlp(seed=1), mlp(seed=2)
    inside = threading.Barrier(3)
    go = {id(first): threading.Event(), id(second): threading.Event()}
    seen: list[bool] = []
    children = adapter.children

    def slow_children(module):  # both readers wait inside their read of the root
        if id(module) in go:
            inside.wait(timeout=10)
            go[id(module)].wait(timeout=10)
            seen.append(gc.isenabled())
        return children(module)

    adapter.children = slow_children
    assert gc.isenabled()
    threads = [threading.Thread(target=make(m).state_dict) for m in (first, second)]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert not gc.isenabled()
    go[id(first)].set()
    threads[0].join()  # the first reader is done; the second is still reading
    go[id(second)].set()
    threads[1].join()
    assert seen == [False, False]  # the first one out did not switch it on under the second
    assert gc.isenabled()  # the last one out did
    adapter.children = children
    gc.disable()  # the user's choice outlives a read
    try:
        make(mlp(seed=3)).state_dict()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_assignment_rounds_but_never_overflows(make, model):
    """p.set(float64) rounds as numpy's assignment does; a value the dtype cannot hold used to
    become inf (or wrap) with only a numpy RuntimeWarning."""
    tree = make(model)
    p = tree["0.weight"]
    before = p.numpy().copy()
    p.set(np.full((8, 4), 0.1))  # float64: rounded to float32
    assert p.numpy().dtype == np.float32 and p.numpy()[0, 0] == np.float32(0.1)
    p.set(before)
    with pytest.raises(ut.ValueTypeError, match=r"0\.weight.*do not fit in float32"):
        p.set(np.full((8, 4), 1e300))
    with pytest.raises(ut.ValueTypeError, match="do not fit"):
        p[0, 0] = 1e39
    p.set(np.full((8, 4), np.inf))  # infinite already: an assignment, not an overflow
    p.set(before)
    assert np.array_equal(p.numpy(), before)
    counts = make(Mod("Net", **{"0": Mod("Counter", c=np.zeros(3, np.int32))}))
    with pytest.raises(ut.ValueTypeError, match="do not fit in int32"):
        counts["0.c"].set(np.array([1, 2, 2**40]))
    counts["0.c"].set(np.array([1, 2, 3]))  # int64 values that fit
    assert counts["0.c"].numpy().tolist() == [1, 2, 3]


def test_an_index_that_does_not_fit_names_the_path_on_read_and_write(make, model):
    """A read out of range was numpy's bare IndexError; p[array] = v crashed in the message."""
    tree = make(model)
    p = tree["0.weight"]  # (8, 4)
    before = p.numpy().copy()
    for index in [(8, 0), -9, "x"]:
        with pytest.raises(ut.ParamIndexError, match=r"Cannot read 0\.weight\[.*shape \(8, 4\)"):
            p[index]
    with pytest.raises(IndexError):  # as numpy's: the sequence protocol stops on it
        p[8]
    assert len(list(p)) == 8  # iteration over rows, as over an array
    with pytest.raises(ut.ParamIndexError, match=r"Cannot write 0\.weight\[8, 0\]"):
        p[8, 0] = 1.0
    p[np.array([0, 1])] = 1.0  # integer and boolean arrays index as numpy's
    p[np.ones(8, bool)] = 2.0
    assert np.all(p.numpy() == 2.0)
    with pytest.raises(ut.ParamIndexError, match=r"Cannot write 0\.weight\[array\(\[0, 9\]\)\]"):
        p[np.array([0, 9])] = 3.0
    p.set(before)
    assert np.array_equal(p.numpy(), before)


def test_load_state_dict_names_what_is_no_state_dict(make, model):
    """A list, a non-str key or a non-numeric value raised a bare AttributeError, or asked
    for cast=True, which could not help."""
    tree = make(model)
    before = {k: v.copy() for k, v in tree.state_dict().items()}
    with pytest.raises(ut.ValueTypeError, match="Expected a state dict, a mapping of paths"):
        tree.load_state_dict([1, 2])  # type: ignore[arg-type]
    sd = dict(before)
    sd[0] = np.zeros(3)  # type: ignore[index]
    sd["0.bias"] = np.array(["a"] * 8)
    sd["2.bias"] = None
    with pytest.raises(ut.StateDictError) as e:
        tree.load_state_dict(sd, cast=True)
    text = str(e.value)
    assert "0: a key must be a path (str), not int" in text
    assert (
        "0.bias: not a numeric array (ndarray" in text
        and "2.bias: not a numeric array (NoneType" in text
    )
    assert "cast=True" not in text
    assert all(np.array_equal(tree[k].numpy(), v) for k, v in before.items())
