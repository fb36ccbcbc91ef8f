"""``unitree.register_layer`` (unitree/_registry.py): a third-party layer type's kind and leaf
rules, found along each module class's MRO by class or by qualified name, with no framework
imported. The layer types here are plain Python classes, read by the framework-free fake
adapter through a kind table, as every adapter reads its own."""

from __future__ import annotations

import copy
import pickle
import sys
import types
from typing import Any

import numpy as np
import pytest
from unitree_fake import FakeAdapter, Mod

import unitree as ut
from unitree import layouts
from unitree._adapter import KindTable
from unitree._tree import ParamTree
from unitree.layouts import TRANSPOSED, Kind, Rule


@pytest.fixture(autouse=True)
def registry() -> Any:
    """The registrations as they were, after each test."""
    saved = dict(layouts.REGISTERED)
    yield
    layouts.REGISTERED.clear()
    layouts.REGISTERED.update(saved)
    KindTable.forget()


class Dense:
    """Stands for a framework's own dense layer class, which its kind table knows."""


class Proj(Mod):
    """A third-party layer: its weight ``w`` stored (in, out), its bias ``b``."""


class ByType(FakeAdapter):
    """The fake adapter, with kinds found by class as every real adapter finds them."""

    kinds = KindTable({})

    def kind(self, module: Mod) -> str | None:
        return self.kinds[type(module)]


def test_a_class_is_found_by_object_along_the_mro():
    class Third:
        pass

    class Sub(Third):
        pass

    table = KindTable({Dense: "dense"})
    assert table[Sub] is None
    ut.register_layer(Third, "dense", {"w": ("weight", TRANSPOSED), "b": "bias"})
    kind = table[Sub]  # the table forgot what it found before the registration
    assert kind == "dense" and type(kind) is Kind
    assert layouts.rules("torch", kind, ["w", "b"]) == {
        "w": Rule("weight", TRANSPOSED),
        "b": Rule("bias"),
    }
    assert layouts.rules("torch", "dense", ["weight"]) is None  # the kind's own: unchanged
    assert pickle.loads(pickle.dumps(kind)) == copy.deepcopy(kind) == "dense"
    assert table[Dense] == "dense"


def test_the_nearest_registered_or_known_base_decides():
    class Mine(Dense):
        pass

    class Theirs(Mine):
        pass

    table = KindTable({Dense: "dense", Theirs: "conv"})
    ut.register_layer(Mine, "embedding")
    assert (table[Dense], table[Mine], table[Theirs]) == ("dense", "embedding", "conv")
    ut.register_layer(Dense, "layer_norm")  # a registration at the same class wins
    assert table[Dense] == "layer_norm"


def test_a_qualified_name_is_found_once_its_module_is_imported(monkeypatch):
    module = types.ModuleType("thirdparty.layers")
    cls = type("Outer", (), {"__module__": module.__name__})
    inner = type("Inner", (cls,), {"__module__": module.__name__, "__qualname__": "Outer.Inner"})
    ut.register_layer("thirdparty.layers.Outer.Inner", "dense")
    table = KindTable({})
    assert not layouts.has_rules("torch")  # no model can hold it: the fast read stays
    monkeypatch.setitem(sys.modules, "thirdparty.layers", module)
    assert layouts.has_rules("torch")
    assert table[inner] == "dense"
    assert table[cls] is None


def test_hugging_faces_conv1d_ships_by_name():
    kind = layouts.REGISTERED["transformers.pytorch_utils.Conv1D"]
    assert kind == "dense"
    w = np.arange(6.0).reshape(2, 3)  # (in, out), as GPT-2 stores it
    rule = kind.rules["weight"]
    assert rule.canonical == "weight"
    np.testing.assert_array_equal(rule.transform.to_canonical(w), w.T)
    np.testing.assert_array_equal(rule.transform.to_native(w.T, w.shape), w)


def test_a_registered_type_is_read_and_ported_with_its_own_rules():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 2)), rng.standard_normal(2)  # (in, out)
    model = Mod("Sequential", **{"0": Proj("Proj", w=w.copy(), b=b.copy())})
    ut.register_layer(Proj, "dense", {"w": ("weight", TRANSPOSED), "b": "bias"})
    tree = ParamTree(ByType("torch"), model)
    assert list(tree.state_dict()) == ["0.weight", "0.bias"]
    np.testing.assert_array_equal(tree["0.weight"].numpy(), w.T)

    dst = Mod(
        "Sequential", **{"0": Mod("Linear", "dense", weight=np.zeros((2, 3)), bias=np.zeros(2))}
    )
    report = ut.port(tree, ParamTree(FakeAdapter("torch"), dst))
    assert [p.kind for p in report.pairs] == ["dense"]
    np.testing.assert_array_equal(dst.children["0"].leaves["weight"][0], w.T)
    np.testing.assert_array_equal(dst.children["0"].leaves["bias"][0], b)


def test_two_registrations_of_one_kind_keep_their_own_rules():
    class Other(Mod):
        pass

    ut.register_layer(Proj, "dense", {"w": ("weight", TRANSPOSED)})
    ut.register_layer(Other, "dense", {"w": "weight"})
    w = np.arange(6.0).reshape(3, 2)
    model = Mod("Sequential", **{"0": Proj("Proj", w=w.copy()), "1": Other("Other", w=w.copy())})
    tree = ParamTree(ByType("torch"), model)  # one read: its plans are cached per registration
    np.testing.assert_array_equal(tree["0.weight"].numpy(), w.T)
    np.testing.assert_array_equal(tree["1.weight"].numpy(), w)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((42, "dense"), "class or its qualified name"),
        (("Conv1D", "dense"), "no qualified class name"),
        (("a..B", "dense"), "no qualified class name"),
        ((Proj, ""), "non-empty string"),
        ((Proj, "lstm"), "whole subtree"),
        ((Proj, "attention"), "whole subtree"),
        ((Proj, "dense", {"w": 3}), "must be a canonical name"),
        ((Proj, "dense", {"w": ("weight", "transpose")}), "no layout transform"),
        ((Proj, "dense", {"w": "weight", "v": "weight"}), "'weight'"),
    ],
)
def test_a_registration_that_says_nothing_clear_is_refused(args, match):
    with pytest.raises(ut.ValueTypeError, match=match):
        ut.register_layer(*args)
    assert Proj not in layouts.REGISTERED


@pytest.mark.parametrize(
    ("g", "v", "axes"),
    [
        ((), (3, 4), (0, 1)),  # dim=None: one norm over everything
        ((3, 1), (3, 4), (1,)),  # dim=0: a norm per output row
        ((1, 4), (3, 4), (0,)),  # dim=1
        ((1, 1), (1, 4), (0, 1)),  # dim=0 of a single row: the whole norm, the same
        ((3, 4), (3, 4), None),
        ((3,), (3, 4), None),
    ],
)
def test_weight_norm_axes_are_torchs(g, v, axes):
    assert layouts.weight_norm_axes(g, v) == axes


def test_weight_norm_is_g_times_the_unit_direction():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 1)).astype(np.float32)
    want = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    got = layouts.weight_norm(g, v)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert layouts.weight_norm_keys("a.0.weight") == (
        ("a.0.weight_g", "a.0.weight_v"),
        ("a.0.parametrizations.weight.original0", "a.0.parametrizations.weight.original1"),
    )
