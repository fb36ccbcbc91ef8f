"""The torch adapter against torch's own answers."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn
from unitree_checks import assert_close, assert_read_once

import unitree as ut

DEVICES = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 6)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.heads = nn.ModuleDict({"cls": nn.Linear(6, 3), "bn": nn.BatchNorm1d(6)})
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.lm_head.weight = self.wte.weight  # the GPT-2 tie
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.wte(ids)
        for block in self.blocks:
            h = block.norm(block.attn(h))
        return self.lm_head(h)  # the heads stay unused: their gradients stay None


def test_paths_match_torch():
    net = Net()
    tree = ut.wrap(net)
    assert [(k, p.shape) for k, p in tree.named_parameters()] == [
        (k, tuple(p.shape)) for k, p in net.named_parameters()
    ]
    assert [k for k, _ in tree.named_buffers()] == [k for k, _ in net.named_buffers()]
    assert [k for k, _ in tree.named_modules()] == [k for k, _ in net.named_modules()]
    assert [k for k, _ in tree.named_parameters(remove_duplicate=False)] == [
        k for k, _ in net.named_parameters(remove_duplicate=False)
    ]
    assert tree["blocks.1.norm.weight"].native is net.blocks[1].norm.weight
    assert tree.blocks[1].attn.bias.native is net.blocks[1].attn.bias
    assert tree.heads["cls"].type_name == "Linear" and tree.heads.cls.kind == "dense"


def test_state_dict_matches_torch_and_dedupes_ties():
    net = Net()
    tree = ut.wrap(net)
    sd = tree.state_dict()
    native = net.state_dict()
    assert "scratch" not in sd  # a non-persistent buffer, as torch leaves it out
    assert "lm_head.weight" not in sd and "lm_head.weight" in native  # ties once
    assert list(sd) == [k for k in native if k != "lm_head.weight"]
    for k, v in sd.items():
        np.testing.assert_array_equal(v, native[k].numpy(), err_msg=k)
    assert tree.ties() == [("wte.weight", "lm_head.weight")]
    assert tree["lm_head.weight"] is tree["wte.weight"]


def test_batchnorm_buffers():
    tree = ut.wrap(nn.Sequential(nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6)))
    assert [k for k, _ in tree[1].named_parameters()] == ["weight", "bias"]
    assert [(k, p.shape, p.dtype) for k, p in tree[1].named_buffers()] == [
        ("running_mean", (6,), "float32"),
        ("running_var", (6,), "float32"),
        ("num_batches_tracked", (), "int64"),
    ]
    counter = tree["1.num_batches_tracked"]
    assert not counter.trainable and counter.is_buffer and counter.numpy() == 0
    counter.set(np.int64(5))
    assert int(tree.native[1].num_batches_tracked) == 5
    with pytest.raises(TypeError, match=r"float64 into 1\.num_batches_tracked"):
        counter.set(np.float64(1.5))
    assert "num_batches_tracked () [buffer]" in str(tree)


def test_frozen_parameter_is_a_parameter_not_trainable():
    net = mlp()
    net[0].weight.requires_grad_(False)
    tree = ut.wrap(net)
    assert "0.weight" in dict(tree.named_parameters())
    assert not tree["0.weight"].trainable and tree["0.bias"].trainable


def test_lazy_modules_before_and_after_first_forward():
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    tree = ut.wrap(net)
    w = tree["0.weight"]
    assert w.shape is None and "weight (uninitialized)" in str(tree)
    with pytest.raises(
        ut.UninitializedError, match=r"0\.weight is not initialized.*Run the model once"
    ):
        w.numpy()
    with pytest.raises(ut.UninitializedError):
        tree.state_dict()
    with pytest.raises(ut.StateDictError, match="not initialized"):
        tree.load_state_dict(
            {
                "0.weight": np.zeros((8, 4)),
                "0.bias": np.zeros(8),
                "2.weight": np.zeros((1, 8)),
                "2.bias": np.zeros(1),
            }
        )
    net(torch.rand(2, 4))
    assert w.shape == (8, 4) and tree["0.weight"] is w
    assert tree[0].type_name == "Linear"
    np.testing.assert_array_equal(w.numpy(), net[0].weight.detach().numpy())


def test_numpy_is_a_read_only_view():
    net = mlp()
    a = ut.wrap(net)["0.weight"].numpy()
    assert np.shares_memory(a, net[0].weight.detach().numpy())
    assert not a.flags.writeable


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_writes_seen_by_aliases_and_torch(device):
    net = Net().to(device)
    tree = ut.wrap(net)
    storage = net.wte.weight.data_ptr()
    tree["lm_head.weight"][3, 2] = 100
    assert net.wte.weight[3, 2].item() == 100 and tree["wte.weight"][3, 2] == 100
    tree["wte.weight"].set(np.ones((10, 6), np.float32))
    assert net.lm_head.weight.data_ptr() == storage  # in place: same storage
    assert torch.equal(net.lm_head.weight.cpu(), torch.ones(10, 6))
    tree["blocks.0.norm.bias"].set(torch.full((6,), 3.0))  # a native tensor is accepted too
    assert net.blocks[0].norm.bias.sum().item() == 18
    assert tree["wte.weight"].device == device


def test_write_after_forward_fails_loudly_in_backward():
    net = mlp()
    tree = ut.wrap(net)
    y = net(torch.rand(2, 4)).sum()
    tree["2.weight"][0, 0] = 5  # bumps the version counter, unlike a raw numpy write
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_autograd(device):
    net = Net().to(device)
    ref = copy.deepcopy(net)  # deepcopy keeps the tie
    tree = ut.wrap(net)
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    assert all(p.grad is None for p in tree.parameters())

    def loss_fn(logits):
        return logits.square().mean()

    loss = tree.backward(loss_fn, ids)
    ref_loss = loss_fn(ref(torch.as_tensor(ids, device=device)))
    ref_loss.backward()
    assert_close(loss, ref_loss.item())  # a mean of squares: no cancellation
    for (k, p), (rk, rp) in zip(tree.named_parameters(), ref.named_parameters()):
        assert k == rk
        if rp.grad is None:  # the unused heads
            assert p.grad is None, k
        else:
            assert_close(p.grad, rp.grad.cpu().numpy(), err_msg=k)
    assert tree["heads.cls.weight"].grad is None
    tree.backward(loss_fn, ids)  # accumulates, as torch does
    assert_close(tree["wte.weight"].grad, 2 * ref.wte.weight.grad.cpu().numpy())


def test_tied_gradient_sums_both_uses():
    net = Net()
    untied = copy.deepcopy(net)
    untied.lm_head.weight = nn.Parameter(net.wte.weight.detach().clone())
    ids = np.array([[1, 2, 3]])
    t, u = ut.wrap(net), ut.wrap(untied)
    t.backward(lambda y: y.sum(), ids)
    u.backward(lambda y: y.sum(), ids)
    assert_close(t["wte.weight"].grad, u["wte.weight"].grad + u["lm_head.weight"].grad)


def test_backward_casts_numpy_inputs_and_checks_the_loss():
    tree = ut.wrap(mlp())
    x = np.random.default_rng(0).random((2, 4))  # float64 in, float32 model
    assert isinstance(tree.backward(lambda y: y.sum(), x), float)
    with pytest.raises(TypeError, match="torch scalar"):
        tree.backward(lambda y: y, x)


def test_tie_modules_natively():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    tree = ut.wrap(net)
    tree.tie(1, 2)
    assert net[2].weight is net[1].weight and net[2].bias is net[1].bias
    assert [k for k, _ in net.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert tree.ties() == [("1.weight", "2.weight"), ("1.bias", "2.bias")]
    with pytest.raises(
        ut.ShapeError, match=r"weight: \(8, 4\) float32 in 0, \(8, 8\) float32 in 1"
    ):
        tree.tie(0, 1)
    assert net[1].weight.shape == (8, 8)  # nothing changed


def test_tie_buffers_too():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    tree = ut.wrap(net)
    tree.tie(0, 1)
    assert net[1].running_mean is net[0].running_mean
    assert ("0.running_mean", "1.running_mean") in tree.ties()


def test_structure_changes_are_seen():
    net = mlp()
    tree = ut.wrap(net)
    old = tree[2].weight
    net[2] = nn.Linear(8, 3)
    assert tree[2].weight is not old and tree[2].weight.shape == (3, 8)
    net.extra = nn.Linear(1, 1)
    assert "extra.weight" in dict(tree.named_parameters())
    net.extra.weight = net[2].weight  # a new tie made natively
    assert tree["extra.weight"] is tree[2].weight and ("2.weight", "extra.weight") in tree.ties()


def test_second_traversal_is_cached(monkeypatch):
    net = Net()
    net.heads.cls.bias = None  # a None entry in _parameters
    assert_read_once(ut.wrap(net), monkeypatch)


def test_wrap_rejects_a_tensor():
    with pytest.raises(
        ut.UnsupportedModelError, match=r"Expected a torch\.nn\.Module, got torch\.Tensor"
    ):
        ut.wrap(torch.zeros(3))


def test_load_state_dict_accepts_torch_tensors_and_is_all_or_nothing():
    src, dst = mlp(), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    tree = ut.wrap(dst)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    bad = dict(src.state_dict())
    bad["2.weight"] = torch.zeros(2, 8)
    with pytest.raises(
        ut.StateDictError, match=r"2.weight: shape \(2, 8\) in the source, \(1, 8\) in the model"
    ):
        tree.load_state_dict(bad)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k])
    tree.load_state_dict(src.state_dict())
    x = torch.rand(3, 4)
    assert torch.equal(src(x), dst(x))


def test_a_load_into_a_model_with_an_inference_tensor_is_all_or_nothing(tmp_path):
    """A tensor made under ``torch.inference_mode`` refuses a write outside it: such a write can
    fail after validation, so the load journals, and the layer written before it is put back."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    ut.save(ut.wrap(src), tmp_path / "m.safetensors")
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.inference_mode():
        dst[2] = nn.Linear(8, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"[Ii]nference"):
        ut.load(dst, tmp_path / "m.safetensors")
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.inference_mode():  # where torch writes it
        ut.load(dst, tmp_path / "m.safetensors")
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_an_interrupt_during_a_load_comes_after_its_last_write(tmp_path, monkeypatch):
    """A load that keeps no undo copies cannot stop halfway: Ctrl-C (SIGINT, raised here as the
    second tensor is read into the model) is delivered once every tensor is written, with no
    note of a partial write."""
    import signal

    from unitree import _files

    torch.manual_seed(0)
    src, dst = mlp(), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    ut.save(ut.wrap(src), tmp_path / "m.safetensors")
    tree = ut.wrap(dst)
    real, calls = _files.Checkpoint.read_into, []

    def read_into(self, key, out):
        calls.append(key)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        real(self, key, out)

    monkeypatch.setattr(_files.Checkpoint, "read_into", read_into)
    with pytest.raises(KeyboardInterrupt) as e:
        ut.load(tree, tmp_path / "m.safetensors")
    assert len(calls) == 4 and not getattr(e.value, "__notes__", None)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_transposed_write_is_one_tiled_copy_that_autograd_sees():
    """A Flax-layout kernel (in, out) written into a torch Linear (out, in) large enough for
    the tiled copy: the values are the transpose, bit for bit, and the write bumps the version
    counter as ``copy_`` does, so a graph that saved the old weight fails in backward."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((300, 400)).astype(np.float32)  # (in, out)
    net = nn.Linear(300, 400, bias=False)
    x = torch.ones(2, 300, requires_grad=True)
    y = (net(x) ** 2).sum()  # saves the weight for backward
    version = net.weight._version
    ut.wrap(net)["weight"].set(kernel.T)  # a strided view, as a port from Flax gives
    np.testing.assert_array_equal(net.weight.detach().numpy(), kernel.T)
    assert net.weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("n", [8, 300])
def test_a_value_that_overlaps_the_parameter_is_read_before_it_is_overwritten(n):
    """``p.set(p.numpy().T)``, ``p[1:] = p.numpy()[:-1]``, ``load_state_dict`` of its own
    transposed view: numpy's assignment rule (the right side read whole first), for the small
    write torch makes and for the tiled one."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    net = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w))
    p = ut.wrap(net)["weight"]
    p.set(p.numpy().T)
    np.testing.assert_array_equal(net.weight.detach().numpy(), w.T)
    p[1:] = p.numpy()[:-1]
    np.testing.assert_array_equal(net.weight.detach().numpy(), np.concatenate([w.T[:1], w.T[:-1]]))
    before = net.weight.detach().numpy().copy()
    ut.wrap(net).load_state_dict({"weight": ut.wrap(net)["weight"].numpy().T})
    np.testing.assert_array_equal(net.weight.detach().numpy(), before.T)


def test_the_copy_threads_work_in_a_forked_child():
    """A child forked after the tiled copy ran in the parent (a DataLoader worker, a fork
    pool) has the pool's state but not its threads: it gets threads of its own."""
    import multiprocessing

    assert _forked_transposed_set()  # in the parent: its pool started
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply_async(_forked_transposed_set).get(timeout=60)


def _forked_transposed_set() -> bool:
    net = nn.Linear(512, 512, bias=False)
    w = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
    ut.wrap(net)["weight"].set(w.T)
    return bool(np.array_equal(net.weight.detach().numpy(), w.T))


def test_bfloat16_round_trip():
    net = nn.Linear(2, 3).to(torch.bfloat16)
    p = ut.wrap(net)["weight"]
    assert p.dtype == "bfloat16"
    np.testing.assert_array_equal(p.numpy().astype(np.float32), net.weight.float().detach().numpy())
    p[0, 1] = 1.5  # a float value into bfloat16: same kind of number
    assert net.weight[0, 1].item() == 1.5
    sd = ut.wrap(net).state_dict()
    zeros = {k: v.astype(np.float32) * 0 for k, v in sd.items()}
    with pytest.raises(ut.StateDictError, match="lossy cast"):  # float32 into bfloat16 rounds
        ut.wrap(net).load_state_dict(zeros)
    assert net.weight.abs().sum().item() > 0  # nothing written
    ut.wrap(net).load_state_dict(zeros, cast=True)  # rounding asked for
    assert net.weight.abs().sum().item() == 0


def test_concurrent_readers_agree():
    tree = ut.wrap(Net())  # not read yet: the threads race to read it first

    def read(_: int) -> tuple[list, dict]:
        names = [(k, p.shape, p.paths) for k, p in tree.named_parameters()]
        return names, {k: float(v.sum()) for k, v in tree.state_dict().items()}

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(32)))
    assert all(r == results[0] for r in results)
    assert results[0][0][0] == ("wte.weight", (10, 6), ("wte.weight", "lm_head.weight"))


def test_unitree_conformance_writes_the_matrix(tmp_path, capsys):
    from unitree._cli import main

    report = tmp_path / "matrix.json"
    assert (
        main(["conformance", "--backend", "torch", "--device", "cpu", "--report", str(report)]) == 0
    )
    cells = json.loads(report.read_text())["cells"]
    assert {c["status"] for c in cells} == {"pass"} and len(cells) >= 10
    assert "| toy_model | pass |" in capsys.readouterr().out


NET_PICTURE = """\
Net
├─ scratch (2,) [buffer]
├─ wte: Embedding
│  └─ weight (10, 6)
├─ blocks: ModuleList
│  ├─ 0: Block
│  │  ├─ attn: Linear
│  │  │  ├─ weight (6, 6)
│  │  │  └─ bias (6,)
│  │  └─ norm: LayerNorm
│  │     ├─ weight (6,)
│  │     └─ bias (6,)
│  └─ 1: Block
│     ├─ attn: Linear
│     │  ├─ weight (6, 6)
│     │  └─ bias (6,)
│     └─ norm: LayerNorm
│        ├─ weight (6,)
│        └─ bias (6,)
├─ heads: ModuleDict
│  ├─ cls: Linear
│  │  ├─ weight (3, 6)
│  │  └─ bias (3,)
│  └─ bn: BatchNorm1d
│     ├─ weight (6,)
│     ├─ bias (6,)
│     ├─ running_mean (6,) [buffer]
│     ├─ running_var (6,) [buffer]
│     └─ num_batches_tracked () [buffer]
└─ lm_head: Linear
   └─ weight (10, 6) = wte.weight"""


def test_picture_of_a_nested_model():
    tree = ut.wrap(Net())
    assert str(tree) == NET_PICTURE
    assert str(tree.blocks[1]) == "\n".join(
        [
            "Block",
            "├─ attn: Linear",
            "│  ├─ weight (6, 6)",
            "│  └─ bias (6,)",
            "└─ norm: LayerNorm",
            "   ├─ weight (6,)",
            "   └─ bias (6,)",
        ]
    )


def test_load_torch_state_dict_of_a_tied_model():
    src, dst = Net(), Net()
    ut.wrap(dst).load_state_dict(src.state_dict())  # torch lists the tied weight under both paths
    assert torch.equal(dst.lm_head.weight, src.wte.weight) and dst.lm_head.weight is dst.wte.weight
