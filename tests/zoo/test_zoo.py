"""Every Hugging Face architecture with a PyTorch and a Flax class, ported both ways by
``ut.port(src, dst)`` with the defaults, checked against the source model's own outputs.

For each pair (:func:`zoo.pairs`, from transformers' own auto mappings): the torch model's
values are randomized and ported into the Flax model, whose outputs must then be the torch
model's (float32, 1e-4); then the Flax model's values are randomized and ported back. The
same torch values also go through transformers' own converter
(``convert_pytorch_state_dict_to_flax``), whose outputs are the reference for what the two
implementations can agree on: where even it gives outputs that differ, the pair is listed
with the measured difference, not counted as unitree's, and unitree's port must give the
converter's outputs. The times of both converters are recorded for the report
(``UNITREE_ZOO_REPORT``: tests/zoo/conftest.py writes the table).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import zoo

import unitree as ut

TOL = 1e-4  # float32 through a few layers, as the issue sets it
PAIRS = zoo.pairs()

# Pairs whose two classes hold different tensors, so the defaults refuse (strict): the
# message must name the tensor; ``strict=False`` then ports what both hold, and the outputs
# must match (the tensor is one the outputs do not use).
REFUSED = {
    # torch's BigBirdForCausalLM keeps the base model's pooler, Flax's drops it
    "FlaxBigBirdForCausalLM": r"bert\.pooler",
}
# Pairs unitree cannot port yet, and refuses (never a silently different model): the message
# must name the layer. Flax's Wav2Vec2 keeps its positional conv's weight norm as its own
# module (weight_v, weight_g), for which no rule computes the weight torch shows.
NOT_YET = {
    "FlaxWav2Vec2Model": r"encoder\.pos_conv_embed\.conv .*FlaxConvWithWeightNorm",
}


def _timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def _row(pair, disagree, t2f=None, f2t=None, times=None, ties=0, refused=None) -> dict:
    return {
        "pair": pair.id,
        "transformers": disagree,
        "t2f": t2f,
        "f2t": f2t,
        "times": times,
        "ties": ties,
        "refused": refused,
    }


@pytest.mark.parametrize("pair", PAIRS, ids=[p.id for p in PAIRS])
def test_ports_both_ways(pair, zoo_results):
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_torch(torch_model, seed=1)
    x = zoo.inputs(pair, torch_model)
    expected = zoo.run_torch(torch_model, x)

    from transformers.modeling_flax_pytorch_utils import (
        convert_pytorch_state_dict_to_flax,
        load_flax_weights_in_pytorch_model,
    )

    initial = flax_model.params
    converted, theirs_t2f = _timed(
        lambda: convert_pytorch_state_dict_to_flax(torch_model.state_dict(), flax_model)
    )
    flax_model.params = converted
    reference = zoo.run_flax(flax_model, x)
    flax_model.params = initial
    disagree, _ = zoo.difference(expected, reference)  # transformers' own implementations

    if pair.flax_name in NOT_YET:
        with pytest.raises(ut.PortError, match=NOT_YET[pair.flax_name]):
            ut.port(torch_model, flax_model)
        with pytest.raises(ut.PortError, match=NOT_YET[pair.flax_name]):
            ut.port(flax_model, torch_model)
        zoo_results.append(_row(pair, disagree, refused="not yet: " + NOT_YET[pair.flax_name]))
        return
    refusal = REFUSED.get(pair.flax_name)
    strict = refusal is None
    if refusal is not None:
        with pytest.raises(ut.PortError, match=refusal):
            ut.port(torch_model, flax_model)
    try:
        report, ours_t2f = _timed(lambda: ut.port(torch_model, flax_model, strict=strict))
    except ut.PortError as e:
        # two classes that compute different things may hold different tensors too (Marian's
        # and Pegasus's sinusoidal positions: a parameter in torch, computed in Flax)
        assert disagree > TOL, f"{pair.id}: refused, though transformers' classes agree: {e}"
        zoo_results.append(_row(pair, disagree, refused=str(e).splitlines()[1].strip()))
        return
    got = zoo.run_flax(flax_model, x)
    t2f, worst = zoo.difference(expected, got)
    agree, _ = zoo.difference(reference, got)
    # the Flax model's outputs are the converter's wherever it is a port of the same values
    assert agree <= TOL, f"{pair.id}: unitree's port differs from transformers' by {agree:.2e}"

    zoo.randomize_flax(flax_model, seed=2)
    expected_back = zoo.run_flax(flax_model, x)
    if refusal is not None:
        with pytest.raises(ut.PortError, match=refusal):
            ut.port(flax_model, torch_model)
    _, ours_f2t = _timed(lambda: ut.port(flax_model, torch_model, strict=strict))
    f2t, worst_back = zoo.difference(expected_back, zoo.run_torch(torch_model, x))

    twin = zoo.build(pair)[0]  # transformers' converter back, for its time
    _, theirs_f2t = _timed(lambda: load_flax_weights_in_pytorch_model(twin, flax_model.params))

    times = (ours_t2f, theirs_t2f, ours_f2t, theirs_f2t)
    zoo_results.append(_row(pair, disagree, t2f, f2t, times, len(report.ties_kept), refusal))
    if disagree > TOL:  # transformers' torch and Flax classes compute different things
        return
    assert t2f <= TOL, f"torch -> flax: {worst} differs by {t2f:.2e}"
    assert f2t <= TOL, f"flax -> torch: {worst_back} differs by {f2t:.2e}"


def test_the_pairs_come_from_transformers_itself():
    """The zoo is what the installed transformers ships, not a list written here."""
    from transformers.models.auto import modeling_flax_auto

    names = {p.flax_name for p in PAIRS}
    assert set(modeling_flax_auto.FLAX_MODEL_MAPPING_NAMES.values()) <= names
    assert {
        "FlaxT5ForConditionalGeneration",
        "FlaxGPT2LMHeadModel",
        "FlaxBartForConditionalGeneration",
    } <= names
    assert all(re.fullmatch(r"Flax\w+", n) for n in names)


def test_ties_are_kept_through_the_port():
    """T5's shared embedding is the encoder's and decoder's embed_tokens; GPT-2's and BART's
    heads are their embeddings: a port keeps each tie, and the destination's tied tensors
    hold the source's one value."""
    for flax_name, tied in [
        ("FlaxT5ForConditionalGeneration", "shared.weight"),
        ("FlaxGPT2LMHeadModel", "transformer.wte.weight"),
        ("FlaxBartForConditionalGeneration", "model.shared.weight"),
    ]:
        pair = next(p for p in PAIRS if p.flax_name == flax_name)
        torch_model, flax_model = zoo.build(pair)
        zoo.randomize_torch(torch_model, seed=3)
        report = ut.port(torch_model, flax_model)
        assert any(tied in group for group in report.ties_kept), (flax_name, report.ties_kept)
        zoo.randomize_flax(flax_model, seed=4)
        ut.port(flax_model, torch_model)
        groups = ut.wrap(torch_model).ties()
        group = next(g for g in groups if tied in g)
        values = [torch_model.get_parameter(k).detach().numpy() for k in group]
        assert len(group) >= 2 and all(np.array_equal(values[0], v) for v in values[1:])


def test_check_runs_a_hugging_face_flax_model_as_its_users_call_it():
    """check= calls the Flax model object itself (its own call makes the module's arguments):
    the outputs prove the port; a wrong value is put back."""
    pair = next(p for p in PAIRS if p.flax_name == "FlaxBertModel")
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_torch(torch_model, seed=8)
    x = zoo.inputs(pair, torch_model)
    report = ut.port(torch_model, flax_model, check=x["input_ids"])
    assert report.check.ok
    difference, _ = zoo.difference(zoo.run_torch(torch_model, x), zoo.run_flax(flax_model, x))
    assert difference <= TOL


def test_check_takes_keyword_inputs_and_refuses_a_mapping_of_positional_ones():
    pair = next(p for p in PAIRS if p.flax_name == "FlaxBertModel")
    torch_model, flax_model = zoo.build(pair)
    zoo.randomize_torch(torch_model, seed=9)
    ids = zoo.inputs(pair, torch_model)["input_ids"]
    mask = np.ones_like(ids)
    mask[:, -2:] = 0  # padding: the mask changes the outputs
    before = {k: np.asarray(v) for k, v in ut.wrap(flax_model).state_dict().items()}
    with pytest.raises(ut.ValueTypeError, match=r"not a mapping \(input_ids\).*kwargs="):
        ut.port(torch_model, flax_model, check={"input_ids": ids})
    after = ut.wrap(flax_model).state_dict()
    assert all(np.array_equal(after[k], v) for k, v in before.items())  # nothing written
    report = ut.port(torch_model, flax_model, check=ut.Check(ids, kwargs={"attention_mask": mask}))
    assert report.check.ok
