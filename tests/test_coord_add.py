"""Coordinate addition of shared class capsules is an option (``model.coord_add``), issue 12 item 9.

Styles: "hinton" (the centre of each position on entries 3 and 7, capsbench's earlier behaviour
and the hash-neutral default), "yl1993" (the EM port: row / H and col / W on entries 0 and 1),
"none". Method presets follow their reference where it is a design choice (EM: yl1993) and not
where it is a bug (VB's constant 0.1 at every position: hinton).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsbench import spec
from capsbench.capsules.geometry import coordinate_offsets
from capsbench.capsules.layers import ClassCaps
from capsbench.capsules.types import Capsules
from capsbench.config import COORD_ADD_STYLES
from capsbench.errors import SpecError

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "specs" / "quickstart.yaml"
METHODS = REPO / "specs" / "protocols" / "methods"


def test_yl1993_adds_row_and_column_over_size_to_entries_0_and_1():
    off = coordinate_offsets((2, 4), 16, style="yl1993").view(2, 4, 16)
    rows, cols = torch.arange(2.0)[:, None] / 2, torch.arange(4.0)[None, :] / 4
    torch.testing.assert_close(off[..., 0], rows.expand(2, 4))
    torch.testing.assert_close(off[..., 1], cols.expand(2, 4))
    assert off[..., 2:].abs().sum() == 0


def test_hinton_adds_the_centre_of_each_position_to_entries_3_and_7():
    off = coordinate_offsets((2, 4), 16, style="hinton").view(2, 4, 16)
    rows, cols = (torch.arange(2.0)[:, None] + 0.5) / 2, (torch.arange(4.0)[None, :] + 0.5) / 4
    torch.testing.assert_close(off[..., 3], rows.expand(2, 4))
    torch.testing.assert_close(off[..., 7], cols.expand(2, 4))
    assert off[..., [0, 1, 2, 4, 5, 6, *range(8, 16)]].abs().sum() == 0
    torch.testing.assert_close(coordinate_offsets((2, 4), 16), coordinate_offsets((2, 4), 16, style="hinton"))


def test_none_adds_nothing_and_unknown_styles_are_refused():
    assert coordinate_offsets((3, 3), 16, style="none").abs().sum() == 0
    with pytest.raises(ValueError, match="coordinate addition must be one of"):
        coordinate_offsets((3, 3), 16, style="vb")
    with pytest.raises(ValueError, match="coord_add must be one of"):
        ClassCaps(2, 3, routing="em", in_hw=(2, 2), coord_add="centre")


def _class_outputs(style: str, routing: str = "em"):
    torch.manual_seed(0)
    layer = ClassCaps(2, 3, routing=routing, pose_dim=16, in_hw=(3, 2), mode="shared", coord_add=style)
    g = torch.Generator().manual_seed(0)
    caps = Capsules(torch.randn(2, 2, 16, 3, 2, generator=g), torch.rand(2, 2, 3, 2, generator=g))
    layer(caps)
    return layer, caps


@pytest.mark.parametrize("style", COORD_ADD_STYLES)
def test_class_caps_add_the_chosen_offsets_to_the_shared_votes(style):
    layer, caps = _class_outputs(style)
    votes = layer._children(*caps)[0].materialize()  # [N, 1, HW*T, J, D], children i = position * T + t
    plain = layer.votes(caps.pose.permute(0, 3, 4, 1, 2).reshape(2, 6, 2, 16))  # no coordinates
    offsets = coordinate_offsets((3, 2), 16, style=style)
    torch.testing.assert_close(votes.view(2, 6, 2, 3, 16), plain + offsets[None, :, None, None, :])


def test_styles_change_the_class_activations_of_em():
    torch.manual_seed(0)
    layers = {s: ClassCaps(2, 3, routing="em", in_hw=(3, 2), mode="shared", coord_add=s) for s in COORD_ADD_STYLES}
    for layer in layers.values():  # everything else equal: the same weights
        layer.load_state_dict(layers["hinton"].state_dict())
    g = torch.Generator().manual_seed(1)
    caps = Capsules(torch.randn(4, 2, 16, 3, 2, generator=g), torch.rand(4, 2, 3, 2, generator=g))
    act = {s: layer(caps).activation for s, layer in layers.items()}
    assert not torch.equal(act["hinton"], act["yl1993"])
    assert not torch.equal(act["hinton"], act["none"])


def test_spec_key_is_validated_once_with_one_line():
    one_line = r"^model\.coord_add: expected one of hinton, yl1993, none, got 'centre' \(in .*quickstart.yaml\)$"
    with pytest.raises(SpecError, match=one_line):
        spec.load(QUICKSTART, ["model.coord_add=centre"])


def test_hash_neutral_at_the_earlier_behaviour():
    (plain,) = spec.load(QUICKSTART, ["model.depth=1"])
    (same,) = spec.load(QUICKSTART, ["model.depth=1", "model.coord_add=hinton"])
    (other,) = spec.load(QUICKSTART, ["model.depth=1", "model.coord_add=yl1993"])
    assert plain.config.model.coord_add == "hinton"
    assert plain.spec_hash == same.spec_hash != other.spec_hash  # committed records keep their key


def test_presets_follow_the_reference_where_it_is_a_design_choice():
    em = spec.load(METHODS / "em.yaml")[0].config.model
    vb = spec.load(METHODS / "vb.yaml")[0].config.model
    assert em.coord_add == "yl1993"  # the yl-1993 port's r/H on entries 0 and 1
    assert vb.coord_add == "hinton"  # the VB reference's constant 0.1 is a bug, not reproduced


def test_leaderboard_variant_is_neutral_too():
    """A record written before the key existed and one that spells out its neutral value are one variant."""
    from omegaconf import OmegaConf

    from capsbench.results.entry import variant_of

    (run,) = spec.load(QUICKSTART, ["model.depth=1"])
    new = OmegaConf.to_container(run.config, resolve=True)
    old = OmegaConf.to_container(run.config, resolve=True)
    del old["model"]["coord_add"], old["train"]["precise_bn"]
    assert new["model"]["coord_add"] == "hinton" and new["train"]["precise_bn"] == 0
    assert variant_of(new) == variant_of(old)
    new["model"]["coord_add"] = "yl1993"
    assert variant_of(new) != variant_of(old)
