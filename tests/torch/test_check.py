"""Two torch models run natively and compared layer by layer (``unitree._check``): the rows,
the first layer that differs, and the final difference, each against what torch itself
computes on the same input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from unitree._canon import layers
from unitree._check import DIFFERS, NOT_COMPARABLE, OK, compare_models, describe_mismatch
from unitree._tree import view_of

torch.set_num_threads(1)  # tiny models: threads only cost here


def mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 16),
        nn.ReLU(inplace=True),  # rewrites the Linear's output: a capture must copy it first
        nn.Linear(16, 16),
        nn.Dropout(0.5),  # in training mode it would make two runs differ
        nn.ReLU(),
        nn.Linear(16, 2),
    ).to(dtype)


def inputs(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 4)).astype(dtype)


def pairs(a: nn.Module, b: nn.Module) -> list[tuple[str, object, str, object]]:
    """The two models' layers side by side, in traversal order (they have one structure)."""
    la, lb = layers(view_of(a)), layers(view_of(b))
    assert len(la) == len(lb)
    return [(x.path, x.module, y.path, y.module) for x, y in zip(la, lb)]


def native(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_identical_models_agree_at_every_layer():
    a = mlp()
    b = copy.deepcopy(a)
    c = compare_models(view_of(a), view_of(b), pairs(a, b), inputs())
    assert c.ok and c.layers_ok and c.first_difference is None
    assert [(r.src, r.dst, r.status) for r in c.rows] == [
        ("0", "0", OK),
        ("2", "2", OK),
        ("5", "5", OK),
    ]
    assert c.output_difference == 0.0  # one model, one input, one machine: the same floats
    assert "the outputs agree" in str(c)


def test_a_perturbed_layer_is_named_first_and_the_final_difference_is_torchs():
    a = mlp()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[2].weight[3, 5] += 0.5
    x = inputs()
    c = compare_models(view_of(a), view_of(b), pairs(a, b), x)
    assert not c.ok
    assert c.first_difference is not None and c.first_difference.src == "2"
    assert [r.status for r in c.rows] == [OK, DIFFERS, DIFFERS]
    expected = np.max(np.abs(native(a, x) - native(b, x)))
    assert expected > 1e-3  # the perturbation reaches the output
    np.testing.assert_allclose(c.output_difference, expected, rtol=1e-6, atol=1e-7)
    # the layer's own difference, computed by torch: its output on the same activations
    with torch.no_grad():
        h = torch.relu(a[0](torch.from_numpy(x)))
        own = np.max(np.abs((a[2](h) - b[2](h)).numpy()))
    np.testing.assert_allclose(c.first_difference.difference, own, rtol=1e-6, atol=1e-7)
    text = describe_mismatch(c)
    assert "2 -> 2" in text and f"{c.output_difference:.3g}" in text


def test_the_run_leaves_the_models_as_they_were():
    a = mlp()
    b = copy.deepcopy(a)
    a.train()
    b.train()
    b[3].eval()  # a mixed state must come back as it was, module by module
    compare_models(view_of(a), view_of(b), pairs(a, b), inputs())
    assert all(m.training for m in a.modules())
    assert [m.training for m in b.modules()] == [True, True, True, True, False, True, True]
    assert not any(m._forward_hooks for m in [*a.modules(), *b.modules()])
    assert torch.is_grad_enabled()


def test_a_capture_is_the_layers_output_before_an_in_place_activation():
    a = mlp()
    x = inputs()
    view = view_of(a)
    out, caught = view.adapter.run(a, (x,), [a[0]])
    with torch.no_grad():
        expected = a[0](torch.from_numpy(x)).numpy()
    assert (expected < 0).any()  # what the in-place ReLU would have zeroed
    assert len(caught[id(a[0])]) == 1
    np.testing.assert_array_equal(caught[id(a[0])][0], expected)
    np.testing.assert_array_equal(out, native(a, x))


def test_the_tolerance_fits_the_dtype():
    """The same relative perturbation: within float32's tolerance, beyond float64's."""
    for dtype, np_dtype, status in [
        (torch.float32, np.float32, OK),
        (torch.float64, np.float64, DIFFERS),
    ]:
        a = mlp(dtype)
        b = copy.deepcopy(a)
        with torch.no_grad():
            b[5].bias.mul_(1 + 1e-6)
        c = compare_models(view_of(a), view_of(b), pairs(a, b), inputs(np_dtype))
        assert c.output.status == status, dtype
        assert c.rows[-1].status == status


def test_explicit_tolerances_are_used():
    a = mlp()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[5].bias += 0.01
    c = compare_models(view_of(a), view_of(b), pairs(a, b), inputs(), rtol=0.0, atol=0.02)
    assert c.ok and c.output.tolerance == 0.02
    c = compare_models(view_of(a), view_of(b), pairs(a, b), inputs(), rtol=0.0, atol=0.005)
    assert not c.ok and c.first_difference.src == "5"


def test_a_module_called_twice_is_compared_call_by_call():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    a = nn.Sequential(shared, nn.Tanh(), shared)
    b = copy.deepcopy(a)  # deepcopy keeps the sharing
    assert b[0] is b[2]
    ps = pairs(a, b)
    c = compare_models(view_of(a), view_of(b), ps, inputs())
    assert c.ok and all(r.status == OK and "2 calls" in r.note for r in c.rows)
    with torch.no_grad():
        b[0].bias += 0.1
    c = compare_models(view_of(a), view_of(b), ps, inputs())
    assert c.first_difference is not None and c.first_difference.src == "0"


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 6)
        self.left = nn.Linear(6, 2)
        self.right = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.body(x)) * scale
        return self.left(h), self.right(h)


def test_several_inputs_and_outputs_and_a_function_for_the_destinations():
    torch.manual_seed(0)
    a = TwoHeads()
    b = copy.deepcopy(a)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    s = rng.standard_normal((2, 1)).astype(np.float32)
    # the functions for the destination's inputs and outputs are called and used
    c = compare_models(
        view_of(a),
        view_of(b),
        pairs(a, b),
        (x, s),
        dst_inputs=lambda x, s: (x, s),
        dst_outputs=lambda out: (out[0], out[1]),
    )
    assert c.ok and len(c.rows) == 3
    swapped = compare_models(
        view_of(a), view_of(b), pairs(a, b), (x, s), dst_outputs=lambda out: (out[1], out[0])
    )
    assert swapped.output.status == NOT_COMPARABLE  # shapes (2, 2) and (2, 4): never a pass
    assert not swapped.ok and "shapes" in swapped.output.note
    assert "dst_outputs=" in describe_mismatch(swapped)
    doubled = compare_models(
        view_of(a), view_of(b), pairs(a, b), (x, s), dst_inputs=lambda x, s: (x, 2 * s)
    )
    assert not doubled.ok
    assert [r.status for r in doubled.rows] == [OK, DIFFERS, DIFFERS]  # body sees no scale


def test_layers_of_unrelated_shapes_are_not_comparable():
    a = mlp()
    b = copy.deepcopy(a)
    ps = pairs(a, b)
    crossed = [(ps[0][0], ps[0][1], ps[2][2], ps[2][3])]  # (5, 16) against (5, 2)
    c = compare_models(view_of(a), view_of(b), crossed, inputs())
    assert c.rows[0].status == NOT_COMPARABLE and c.rows[0].difference is None
    assert c.first_difference is None and c.ok  # the outputs still agree


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_output_differs_from_a_finite_one(bad: float):
    a = mlp()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[5].bias[0] = bad
    c = compare_models(view_of(a), view_of(b), pairs(a, b), inputs())
    assert not c.ok and c.output_difference == float("inf")
    twin = copy.deepcopy(b)
    same = compare_models(view_of(b), view_of(twin), pairs(b, twin), inputs())
    assert same.ok  # NaN against NaN, inf against inf: the same output
