"""``unitree._settings.compare``: layer settings by meaning, for the layer at hand, fail closed.

The expectations are hand-computed: 'same' padding pads the dilated kernel's reach
r = d * (k - 1), r // 2 before and the rest after, at stride 1 (TF, Keras, Flax and
PyTorch's padding='same' alike, as each framework's docs give it; the torch and flax
port tests prove it on outputs); at a stride above 1 it depends on the input size.
"""

from __future__ import annotations

from typing import Any

import pytest

from unitree._settings import VOCABULARY, compare, fold_padding, one_sided_notes

SIDES = ("torch layer 0 (Conv2d)", "flax layer 0 (Conv)")


def conv(**settings: Any) -> dict[str, Any]:
    """A 2-d conv's full settings: stride 1, no dilation, one group, zeros, no padding."""
    out = {
        "padding": ((0, 0), (0, 0)),
        "padding_mode": "zeros",
        "stride": (1, 1),
        "dilation": (1, 1),
        "groups": 1,
        "input_dilation": (1, 1),
        "kernel_mask": False,
    }
    return out | settings


# (a's settings, b's, kernel, the settings that differ)
CONV = {
    "same at stride 1, odd kernel: symmetric k // 2": (
        conv(padding="same"),
        conv(padding=((1, 1), (1, 1))),
        (3, 3),
        [],
    ),
    "same at stride 1, kernel 5 against padding 1": (
        conv(padding="same"),
        conv(padding=((1, 1), (1, 1))),
        (5, 5),
        ["padding"],
    ),
    "same at stride 1, even kernel: the extra one after": (
        conv(padding="same"),
        conv(padding=((0, 1), (1, 2))),
        (2, 4),
        [],
    ),
    "same at stride 1, even kernel: not before": (
        conv(padding="same"),
        conv(padding=((1, 0), (1, 2))),
        (2, 4),
        ["padding"],
    ),
    "same_lower (lax's): the extra one before": (
        conv(padding="same_lower"),
        conv(padding=((1, 0), (2, 1))),
        (2, 4),
        [],
    ),
    "same with dilation 2, kernel 3: reach 4, two each side": (
        conv(padding="same", dilation=(2, 2)),
        conv(padding=((2, 2), (2, 2)), dilation=(2, 2)),
        (3, 3),
        [],
    ),
    "same at stride 2 against explicit pairs: by the input size": (
        conv(padding="same", stride=(2, 2)),
        conv(padding=((1, 1), (1, 1)), stride=(2, 2)),
        (3, 3),
        ["padding"],
    ),
    "same at stride 2 against (0, 1), what it pads on an even input": (
        conv(padding="same", stride=(2, 2)),
        conv(padding=((0, 1), (0, 1)), stride=(2, 2)),
        (3, 3),
        ["padding"],
    ),
    "same at stride 2 against same at stride 2": (
        conv(padding="same", stride=(2, 2)),
        conv(padding="same", stride=(2, 2)),
        (3, 3),
        [],
    ),
    "same at stride 2 with a kernel of 1: nothing to pad": (
        conv(padding="same", stride=(2, 2)),
        conv(stride=(2, 2)),
        (1, 1),
        [],
    ),
    "same at stride 2 along one axis only": (
        conv(padding="same", stride=(1, 2)),
        conv(padding=((1, 1), (1, 1)), stride=(1, 2)),
        (3, 3),
        ["padding"],
    ),
    "same against same at another stride": (
        conv(padding="same", stride=(2, 2)),
        conv(padding="same"),
        (3, 3),
        ["padding", "stride"],
    ),
    "'valid' and a plain int are pairs too": (
        conv(padding="valid", groups=2),
        conv(padding=0, groups=2),
        (3, 3),
        [],
    ),
    "groups differ": (conv(groups=1), conv(groups=2), (3, 3), ["groups"]),
    "reflect against zeros": (
        conv(padding=((1, 1), (1, 1)), padding_mode="reflect"),
        conv(padding=((1, 1), (1, 1))),
        (3, 3),
        ["padding_mode"],
    ),
    "reflect against zeros, nothing padded": (
        conv(padding_mode="reflect"),
        conv(),
        (3, 3),
        [],
    ),
    "circular against circular, 'same' resolved": (
        conv(padding="same", padding_mode="circular"),
        conv(padding=((1, 1), (1, 1)), padding_mode="circular"),
        (3, 3),
        [],
    ),
    "replicate against reflect": (
        conv(padding=((1, 1), (1, 1)), padding_mode="replicate"),
        conv(padding=((1, 1), (1, 1)), padding_mode="reflect"),
        (3, 3),
        ["padding_mode"],
    ),
    "dilation along an axis of kernel 1 reaches nothing": (
        conv(dilation=(2, 3)),
        conv(dilation=(2, 1)),
        (3, 1),
        [],
    ),
    "dilation along an axis of kernel 3": (
        conv(dilation=(2, 3)),
        conv(dilation=(1, 3)),
        (3, 1),
        ["dilation"],
    ),
    "input dilation (flax's)": (conv(), conv(input_dilation=(2, 2)), (3, 3), ["input_dilation"]),
    "a kernel mask (flax's)": (conv(), conv(kernel_mask=True), (3, 3), ["kernel_mask"]),
    "stride as one int": (conv(stride=2), conv(stride=(2, 2)), (3, 3), []),
}


@pytest.mark.parametrize("case", CONV)
def test_conv_settings_by_meaning(case: str) -> None:
    a, b, kernel, names = CONV[case]
    differences, unknown = compare("conv", a, b, kernel, SIDES)
    assert unknown == []
    assert [m.partition(" ")[0] for m in differences] == names
    # symmetric: which side is the source does not matter
    back, _ = compare("conv", b, a, kernel, SIDES[::-1])
    assert [m.partition(" ")[0] for m in back] == names


def test_messages_name_the_setting_both_values_and_both_layers() -> None:
    differences, _ = compare(
        "conv",
        conv(padding=((1, 1), (1, 1)), stride=(2, 2)),
        conv(padding="same", stride=(2, 2)),
        (3, 3),
        SIDES,
    )
    assert differences == [
        "padding is ((1, 1), (1, 1)) in the torch layer 0 (Conv2d), 'same' in the flax layer 0 "
        "(Conv) ('same' at a stride above 1 pads by the input size, TF-style: no fixed padding "
        "equals it on every input)"
    ]
    differences, _ = compare(
        "conv", conv(padding="same"), conv(padding=((0, 0), (0, 0))), (3, 3), SIDES
    )
    assert differences == [
        "padding is 'same' in the torch layer 0 (Conv2d), ((0, 0), (0, 0)) in the flax layer 0 "
        "(Conv) (that is ((1, 1), (1, 1)) against ((0, 0), (0, 0)), (before, after) per axis)"
    ]


def test_a_setting_one_side_cannot_report_is_unknown_never_equal() -> None:
    """A linen submodule made by @nn.compact reports nothing: every conv setting is unknown."""
    differences, unknown = compare("conv", conv(padding=((1, 1), (1, 1))), {}, (3, 3), SIDES)
    assert differences == []
    assert [m.partition(" ")[0] for m in unknown] == list(VOCABULARY["conv"])
    assert unknown[0] == (
        "padding is ((1, 1), (1, 1)) in the torch layer 0 (Conv2d); the flax layer 0 (Conv) "
        "does not report it"
    )
    _, unknown = compare("conv", {}, {}, (3, 3), SIDES)
    assert unknown[0] == (
        "padding: neither the torch layer 0 (Conv2d) nor the flax layer 0 (Conv) reports it"
    )
    # 'same' with no stride reported: nothing to resolve it by, so no fixed padding equals it
    unstrided = conv(padding="same")
    del unstrided["stride"]
    differences, unknown = compare("conv", unstrided, conv(padding=((1, 1), (1, 1))), (3, 3), SIDES)
    assert [m.partition(" ")[0] for m in differences] == ["padding"]
    assert [m.partition(" ")[0] for m in unknown] == ["stride"]
    # one missing setting among the rest
    partial = conv()
    del partial["groups"]
    differences, unknown = compare("conv", conv(), partial, (3, 3), SIDES)
    assert differences == [] and [m.partition(" ")[0] for m in unknown] == ["groups"]


def test_a_depthwise_conv_has_the_vocabulary_of_a_conv() -> None:
    _, unknown = compare("depthwise_conv", conv(), {}, (3, 3), SIDES)
    assert len(unknown) == len(VOCABULARY["conv"])


NORM = {"eps": 1e-5, "scale": True, "center": True}


@pytest.mark.parametrize(
    ("kind", "a", "b", "names"),
    [
        # epsilons equal up to float rounding are equal
        ("batch_norm", NORM | {"momentum": 0.1}, NORM | {"momentum": 1 - 0.9}, []),
        (
            "batch_norm",
            NORM | {"momentum": 0.1},
            NORM | {"eps": 1e-5 * (1 + 1e-9), "momentum": 0.1},
            [],
        ),
        ("batch_norm", NORM | {"momentum": 0.1}, NORM | {"eps": 1e-3, "momentum": 0.1}, ["eps"]),
        ("batch_norm", NORM | {"momentum": 0.1}, NORM | {"momentum": 0.01}, ["momentum"]),
        ("batch_norm", NORM | {"momentum": None}, NORM | {"momentum": 0.1}, ["momentum"]),
        # Gluon's BatchNorm(scale=False) keeps gamma and does not apply it
        (
            "batch_norm",
            NORM | {"momentum": 0.1},
            NORM | {"scale": False, "momentum": 0.1},
            ["scale"],
        ),
        ("group_norm", NORM | {"groups": 2}, NORM | {"groups": 4}, ["groups"]),
        # Keras's rms_scaling keeps gamma, applies no beta and no centering
        (
            "layer_norm",
            NORM | {"axes": (-1,), "rms_scaling": False},
            NORM | {"center": False, "axes": (-1,), "rms_scaling": True},
            ["center", "rms_scaling"],
        ),
        (
            "layer_norm",
            NORM | {"axes": (-1,), "rms_scaling": False},
            NORM | {"axes": (-2, -1), "rms_scaling": False},
            ["axes"],
        ),
    ],
)
def test_norm_settings(kind: str, a: dict, b: dict, names: list[str]) -> None:
    differences, unknown = compare(kind, a, b, None, SIDES)
    assert unknown == []
    assert [m.partition(" ")[0] for m in differences] == names


def test_a_bool_is_not_a_number() -> None:
    recurrent = {"activation": "tanh", "recurrent_activation": "sigmoid", "stateful": False}
    differences, _ = compare(
        "lstm", recurrent | {"reverse": 1}, recurrent | {"reverse": True}, None, SIDES
    )
    assert [m.partition(" ")[0] for m in differences] == ["reverse"]
    differences, _ = compare(
        "lstm", recurrent | {"reverse": "keep_order"}, recurrent | {"reverse": True}, None, SIDES
    )
    assert [m.partition(" ")[0] for m in differences] == ["reverse"]


def test_kinds_without_a_vocabulary_compare_what_both_report() -> None:
    """A type the tables do not know ports onto its own type: what both report must agree."""
    assert compare(None, {"alpha": 1}, {"alpha": 1}, None, SIDES) == ([], [])
    differences, unknown = compare(None, {"alpha": 1}, {"alpha": 2, "beta": 3}, None, SIDES)
    assert unknown == [] and [m.partition(" ")[0] for m in differences] == ["alpha"]
    # a dense layer has nothing beyond its leaves; Keras's data_format is never compared
    assert compare("dense", {}, {}, None, SIDES) == ([], [])
    assert compare(
        "conv", conv(data_format="channels_first"), conv(data_format="channels_last"), (3, 3), SIDES
    ) == ([], [])


def test_every_kind_of_the_tables_has_a_vocabulary() -> None:
    from unitree.layouts import CODECS, LAYOUTS

    kinds = {kind for _, kind in (*LAYOUTS, *CODECS)}
    assert kinds <= set(VOCABULARY)


def test_one_sided_notes() -> None:
    gluon = ("torch layer 0 (Linear)", "gluon layer 0 (Dense)")
    assert one_sided_notes({}, {"flatten": False}, gluon) == []
    notes = one_sided_notes({}, {"flatten": True}, gluon)
    assert len(notes) == 1 and notes[0].startswith("the gluon layer 0 (Dense) has flatten=True: ")
    # both report it: compared as a setting, no note
    assert one_sided_notes({"flatten": False}, {"flatten": True}, gluon) == []
    differences, _ = compare("dense", {"flatten": False}, {"flatten": True}, None, gluon)
    assert [m.partition(" ")[0] for m in differences] == ["flatten"]


def test_a_zero_padding_step_before_a_conv_is_its_padding() -> None:
    """Keras's ZeroPadding2D(1) then Conv2D(padding="valid") is torch's Conv2d(padding=1), at any
    stride; where the sum has no one spelling, the padding is unknown."""
    pads = ((1, 1), (1, 1))
    folded = fold_padding(conv(stride=(2, 2)), pads, (3, 3))
    assert folded["padding"] == ((1, 1), (1, 1))
    torch = conv(padding=((1, 1), (1, 1)), stride=(2, 2))
    assert compare("conv", torch, folded, (3, 3), SIDES) == ([], [])
    # added to the conv's own: 'same' at stride 1 with a kernel of 3 is one more on each side
    assert fold_padding(conv(padding="same"), pads, (3, 3))["padding"] == ((2, 2), (2, 2))
    assert fold_padding(conv(), ((0, 0), (0, 0)), (3, 3)) == conv()  # nothing padded
    for unspellable in (
        conv(padding="same", stride=(2, 2)),  # by the input size
        conv(padding=((1, 1), (1, 1)), padding_mode="reflect"),  # zeros, then mirrored
    ):
        folded = fold_padding(unspellable, pads, (3, 3))
        assert "padding" not in folded
        _, unknown = compare("conv", torch, folded, (3, 3), SIDES)
        assert [m.partition(" ")[0] for m in unknown] == ["padding"]
