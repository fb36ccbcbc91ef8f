"""Linen paths follow the names Flax gives modules, and types the tables do not know pair by
name: what lets a model written the way Hugging Face writes its Flax twins port with the
defaults. Every expected value is the source model's own output on the same input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import linen as nn
from torch import nn as tnn

import unitree as ut

RNG = np.random.default_rng(0)
TOL = dict(rtol=1e-5, atol=1e-6)


def torch_out(model: tnn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(4, name="fc")(x))


class Blocks(nn.Module):
    """Hugging Face's layer collections: ``[Layer(name=str(i)) ...]`` in a setup."""

    named: bool = True

    def setup(self):
        if self.named:
            self.layers = [Block(name=str(i)) for i in range(3)]
        else:
            self.layers = [Block() for _ in range(3)]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class TorchBlock(tnn.Module):
    def __init__(self):
        super().__init__()
        self.fc = tnn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


class TorchBlocks(tnn.ModuleList):
    """Its blocks at 0, 1, 2: what Hugging Face's torch twin of a layer collection holds."""

    def __init__(self):
        super().__init__([TorchBlock() for _ in range(3)])

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


def test_a_list_of_modules_with_their_own_names_is_read_under_those_names():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    named = Blocks()
    variables = named.init(jax.random.PRNGKey(0), x)
    assert set(variables["params"]) == {"0", "1", "2"}  # Flax stores them by their names
    tree = ut.wrap(named, variables)
    assert [p for p, _ in tree.named_parameters()][:2] == ["0.fc.weight", "0.fc.bias"]
    assert tree["0.fc"].kind == "dense"  # a compact Dense given name="fc" keeps its kind

    auto = Blocks(named=False)
    auto_vars = auto.init(jax.random.PRNGKey(0), x)
    assert set(auto_vars["params"]) == {"layers_0", "layers_1", "layers_2"}
    assert next(iter(dict(ut.wrap(auto, auto_vars).named_parameters()))) == "layers.0.fc.weight"


def test_a_torch_modulelist_ports_into_a_named_flax_list_and_back():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    src, flax = TorchBlocks(), Blocks()
    tree = ut.wrap(flax, flax.init(jax.random.PRNGKey(1), x))
    report = ut.port(src, tree)
    assert [(p.src, p.dst, p.rule) for p in report.pairs] == [
        (f"{i}.fc", f"{i}.fc", "path") for i in range(3)
    ]
    np.testing.assert_allclose(np.asarray(flax.apply(tree.variables, x)), torch_out(src, x), **TOL)


class Compact(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8, name="proj")(x))
        return nn.Dense(3, name="out")(x)


class TorchCompact(tnn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.out = tnn.Linear(4, 8), tnn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.proj(x)))


def test_a_compact_submodule_given_a_name_keeps_its_kind_and_ports_both_ways():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    model = Compact()
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(2), x))
    assert [(p, n.kind) for p, n in tree.named_modules()][1:] == [
        ("proj", "dense"),
        ("out", "dense"),
    ]
    src = TorchCompact()
    ut.port(src, tree)
    np.testing.assert_allclose(np.asarray(model.apply(tree.variables, x)), torch_out(src, x), **TOL)
    back = TorchCompact()
    ut.port(tree, back)
    np.testing.assert_allclose(torch_out(back, x), torch_out(src, x), **TOL)


class Either(nn.Module):
    wide: bool = False

    @nn.compact
    def __call__(self, x):
        if self.wide:
            return nn.Dense(4, name="proj")(x)
        return nn.DenseGeneral(4, name="proj")(x)


def test_one_name_given_to_two_classes_leaves_the_class_unknown():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    model = Either()
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(3), x))
    assert tree["proj"].kind is None  # which call ran is not in the source
    assert sorted(n for n, _ in tree["proj"].named_parameters()) == ["bias", "kernel"]


class Scaled(nn.Module):
    """A module of its own with a parameter it holds directly, as BEiT's layer scales."""

    shape: tuple[int, ...] = (4,)

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.ones, self.shape)
        return x @ gamma if gamma.ndim == 2 else x * gamma


class Holder(nn.Module):
    shape: tuple[int, ...] = (4,)

    def setup(self):
        self.scale = Scaled(self.shape)

    def __call__(self, x):
        return self.scale(x)


class TorchScaled(tnn.Module):
    def __init__(self, shape):
        super().__init__()
        self.gamma = tnn.Parameter(torch.randn(*shape))

    def forward(self, x):
        return x @ self.gamma if self.gamma.ndim == 2 else x * self.gamma


class TorchHolder(tnn.Module):
    def __init__(self, shape=(4,)):
        super().__init__()
        self.scale = TorchScaled(shape)

    def forward(self, x):
        return self.scale(x)


def test_a_type_no_table_knows_is_copied_as_stored_at_the_same_named_path():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    src, model = TorchHolder(), Holder()
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(4), x))
    report = ut.port(src, tree)
    (pair,) = report.pairs
    assert pair.src == pair.dst == "scale" and "copied as stored" in pair.note
    np.testing.assert_allclose(np.asarray(model.apply(tree.variables, x)), torch_out(src, x), **TOL)


def test_a_square_tensor_of_an_unknown_type_is_refused_unless_checked():
    """A (4, 4) matrix could be stored transposed: the names alone cannot say."""
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    src, model = TorchHolder((4, 4)), Holder((4, 4))
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(5), x))
    before = np.asarray(tree["scale.gamma"].numpy()).copy()
    with pytest.raises(ut.PortError, match=r"square matrix"):
        ut.port(src, tree)
    np.testing.assert_array_equal(tree["scale.gamma"].numpy(), before)  # nothing written
    ut.port(src, tree, check=x)  # the outputs prove the layout
    np.testing.assert_allclose(np.asarray(model.apply(tree.variables, x)), torch_out(src, x), **TOL)


def test_a_type_no_table_knows_never_pairs_by_position():
    """torch's Sequential positions are no names: an unknown type there stays unmatched."""
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    src = tnn.Sequential(TorchScaled((4,)))
    model = nn.Sequential([Scaled()])
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(6), x))
    with pytest.raises(ut.PortError, match=r"same named path"):
        ut.port(src, tree)


class Owner:
    """A model object holding a linen module and its params, as Hugging Face's Flax models."""

    def __init__(self, module, params):
        self.module, self._params = module, params
        self.sets = 0

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value):
        self.sets += 1
        self._params = value


def test_a_model_object_that_holds_module_and_params_is_read_and_written():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    module = Compact()
    owner = Owner(module, module.init(jax.random.PRNGKey(7), x)["params"])
    src = TorchCompact()
    ut.port(src, owner)
    assert owner.sets >= 1
    got = np.asarray(module.apply({"params": owner.params}, x))
    np.testing.assert_allclose(got, torch_out(src, x), **TOL)


class Shadowed(nn.Module):
    """``Dense`` here is bound inside the call: what it is, only the run knows."""

    @nn.compact
    def __call__(self, x):
        Dense = nn.DenseGeneral  # a local that shadows a class name
        return Dense(4, name="proj")(x)


def test_a_callee_the_method_binds_itself_shows_no_class():
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    model = Shadowed()
    tree = ut.wrap(model, model.init(jax.random.PRNGKey(8), x))
    assert tree["proj"].kind is None


class TorchScale(tnn.Module):
    def __init__(self):
        super().__init__()
        self.weight = tnn.Parameter(torch.randn(6))

    def forward(self, x):
        return x * self.weight


class FlaxScale(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.ones, (6,))


class TorchScaled6(tnn.Module):
    def __init__(self):
        super().__init__()
        self.norm = TorchScale()

    def forward(self, x):
        return self.norm(x)


class FlaxScaled6(nn.Module):
    def setup(self):
        self.norm = FlaxScale()

    def __call__(self, x):
        return self.norm(x)


def test_two_unknown_types_pair_as_stored_with_or_without_check():
    """torch's ``weight`` is Flax's ``scale``: their one shape says so, and the check agrees."""
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    src, model = TorchScaled6(), FlaxScaled6()
    for check in (None, x):
        tree = ut.wrap(model, model.init(jax.random.PRNGKey(9), x))
        ut.port(src, tree, check=check)
        got = np.asarray(model.apply(tree.variables, x))
        np.testing.assert_allclose(got, torch_out(src, x), **TOL)
