"""A file ``ut.save`` writes is one transformers loads, and a ``save_pretrained`` folder is
one ``ut.load`` reads: PyTorch's names and layouts, GPT-2's ``Conv1D`` weights as (in, out)
as its ``state_dict`` holds them, and the safetensors "format" metadata transformers asks for.
Each check compares the outputs of the model that read the file with those of the model
that wrote it, through their own forward functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zoo
from safetensors import safe_open

import unitree as ut

TOL = 1e-4
PAIRS = {p.flax_name: p for p in zoo.pairs()}


@pytest.mark.parametrize("flax_name", ["FlaxGPT2LMHeadModel", "FlaxBertModel"])
def test_a_file_unitree_saves_from_flax_loads_with_from_pretrained(tmp_path, flax_name):
    import transformers

    pair = PAIRS[flax_name]
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_flax(flax_model, seed=5)
    x = zoo.inputs(pair, torch_model)
    ut.save(flax_model, tmp_path / "model.safetensors")
    flax_model.config.save_pretrained(tmp_path)

    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.metadata()["format"] == "pt"  # what from_pretrained requires
    loaded = getattr(transformers, pair.torch_name).from_pretrained(tmp_path).eval()
    got, expected = zoo.run_torch(loaded, x), zoo.run_flax(flax_model, x)
    difference, worst = zoo.difference(expected, got)
    assert difference <= TOL, f"{worst} differs by {difference:.2e}"


def test_gpt2_conv1d_weights_are_stored_as_its_state_dict_holds_them(tmp_path):
    pair = PAIRS["FlaxGPT2LMHeadModel"]
    torch_model, _ = zoo.build(pair)
    ut.save(torch_model, tmp_path / "m.safetensors")
    state = torch_model.state_dict()
    with safe_open(tmp_path / "m.safetensors", "np") as f:
        listed = json.loads(f.metadata()["transposed"])
        assert "transformer.h.0.attn.c_attn.weight" in listed
        for key in f.keys():  # noqa: SIM118 (safe_open is no mapping)
            np.testing.assert_array_equal(f.get_tensor(key), state[key].numpy())


@pytest.mark.parametrize("flax_name", ["FlaxGPT2LMHeadModel", "FlaxBertModel"])
def test_a_save_pretrained_folder_loads_into_the_flax_twin(tmp_path, flax_name):
    pair = PAIRS[flax_name]
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_torch(torch_model, seed=6)
    x = zoo.inputs(pair, torch_model)
    torch_model.save_pretrained(tmp_path, safe_serialization=True)
    ut.load(flax_model, tmp_path / "model.safetensors")
    difference, worst = zoo.difference(zoo.run_torch(torch_model, x), zoo.run_flax(flax_model, x))
    assert difference <= TOL, f"{worst} differs by {difference:.2e}"


def test_unitrees_own_file_of_a_tied_head_loads_into_a_twin_without_the_head(tmp_path):
    """torch's GPT-2 head is its embedding: one tensor, ``lm_head.weight`` its alias in the
    file's ties, a key as in torch's state_dict. The Flax twin has no head of its own (it
    calls wte.attend), so the key is unexpected, as torch's load_state_dict would say it:
    ``strict=False`` loads the rest, and the twin computes what the torch model computes."""
    pair = PAIRS["FlaxGPT2LMHeadModel"]
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_torch(torch_model, seed=7)
    x = zoo.inputs(pair, torch_model)
    ut.save(torch_model, tmp_path / "m.safetensors")
    with pytest.raises(ut.StateDictError, match=r"lm_head\.weight: unexpected"):
        ut.load(flax_model, tmp_path / "m.safetensors")
    result = ut.load(flax_model, tmp_path / "m.safetensors", strict=False)
    assert result.unexpected_keys == ["lm_head.weight"] and result.missing_keys == []
    difference, worst = zoo.difference(zoo.run_torch(torch_model, x), zoo.run_flax(flax_model, x))
    assert difference <= TOL, f"{worst} differs by {difference:.2e}"
