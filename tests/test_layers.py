"""Capsule layers: window bookkeeping, votes, shapes, class capsules, AMP and checkpointing."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from capsbench.capsules.geometry import coordinate_offsets, unfold_capsules, window_geometry, window_hw
from capsbench.capsules.layers import CapsuleLayer, ClassCaps, ConvCaps, PrimaryCaps, VoteTransform
from capsbench.capsules.routing.base import Routing, RoutingOutput
from capsbench.capsules.types import Capsules


def caps(n=2, t=3, d=16, h=5, w=5, seed=0, dtype=torch.float32) -> Capsules:
    g = torch.Generator().manual_seed(seed)
    return Capsules(
        torch.randn(n, t, d, h, w, generator=g, dtype=dtype), torch.rand(n, t, h, w, generator=g, dtype=dtype)
    )


# --------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("k,s,p,hw", [(3, 1, 1, (5, 5)), (3, 2, 0, (7, 6)), (2, 2, 0, (4, 4)), (3, 2, 1, (6, 5))])
def test_unfold_capsules_numbers_children_type_outer_offset_inner(k, s, p, hw):
    c = caps(h=hw[0], w=hw[1])
    pose, act, out_hw = unfold_capsules(c, k, s, p)
    assert out_hw == window_hw(hw, k, s, p)
    n, t, d = c.pose.shape[:3]
    assert pose.shape == (n, out_hw[0] * out_hw[1], t * k * k, d) and act.shape == pose.shape[:3]
    for oh, ow, ti, kh, kw in itertools.product(range(out_hw[0]), range(out_hw[1]), range(t), range(k), range(k)):
        l, i = oh * out_hw[1] + ow, ti * k * k + kh * k + kw
        r, col = oh * s - p + kh, ow * s - p + kw
        inside = 0 <= r < hw[0] and 0 <= col < hw[1]
        want_pose = c.pose[:, ti, :, r, col] if inside else torch.zeros(n, d)
        want_act = c.activation[:, ti, r, col] if inside else torch.zeros(n)
        assert torch.equal(pose[:, l, i], want_pose) and torch.equal(act[:, l, i], want_act)


def brute_child_sum(x, in_hw, k, s, p):
    """Loop over every window: the sum, over windows holding the same grid cell, per (window, child)."""
    n, _, i = x.shape
    t = i // (k * k)
    out_hw = window_hw(in_hw, k, s, p)
    grid = torch.zeros(n, t, *in_hw, dtype=x.dtype)
    slots = []
    for oh, ow, ti, kh, kw in itertools.product(range(out_hw[0]), range(out_hw[1]), range(t), range(k), range(k)):
        l, c, r, col = oh * out_hw[1] + ow, ti * k * k + kh * k + kw, oh * s - p + kh, ow * s - p + kw
        inside = 0 <= r < in_hw[0] and 0 <= col < in_hw[1]
        slots.append((l, c, ti, r, col, inside))
        if inside:
            grid[:, ti, r, col] += x[:, l, c]
    out = torch.zeros_like(x)
    for l, c, ti, r, col, inside in slots:
        if inside:
            out[:, l, c] = grid[:, ti, r, col]
    return out


@pytest.mark.parametrize("k,s,p,hw", [(3, 1, 1, (4, 5)), (3, 2, 0, (7, 7)), (3, 1, 0, (5, 4)), (2, 2, 0, (4, 4))])
def test_child_sum_matches_a_loop_over_windows(k, s, p, hw):
    t = 2
    out_hw = window_hw(hw, k, s, p)
    x = torch.rand(2, out_hw[0] * out_hw[1], t * k * k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    geo = window_geometry(hw, k, s, p)
    assert geo.out_hw == out_hw
    torch.testing.assert_close(geo.child_sum(x), brute_child_sum(x, hw, k, s, p))
    # trailing dimensions are summed independently
    stacked = torch.stack([x, 2 * x], dim=-1)
    torch.testing.assert_close(geo.child_sum(stacked), torch.stack([geo.child_sum(x), 2 * geo.child_sum(x)], -1))


def test_child_sum_counts_receiving_windows_and_zeroes_padding():
    geo = window_geometry((4, 4), 3, 1, 1)
    counts = geo.child_sum(torch.ones(1, 16, 9))
    _, act, _ = unfold_capsules(Capsules(torch.ones(1, 1, 1, 4, 4), torch.ones(1, 1, 4, 4)), 3, 1, 1)
    assert torch.equal(counts > 0, act > 0)  # real children are exactly the non-padded slots
    grid_counts = {1: 0, 4: 0, 6: 0, 9: 0}
    for v in counts[act > 0].tolist():
        grid_counts[int(v)] += 1
    # a 4x4 grid with 3x3 windows and padding 1: corners sit in 4 windows, edges in 6, centre in 9
    assert grid_counts == {1: 0, 4: 4 * 4, 6: 8 * 6, 9: 4 * 9}


def test_window_hw_rejects_windows_that_do_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        window_hw((2, 2), 3, 1, 0)


def test_coordinate_offsets_go_to_the_right_hand_column():
    off = coordinate_offsets((2, 3), 16)
    mats = off.view(2, 3, 4, 4)
    assert torch.allclose(mats[..., 0, 3], torch.tensor([0.25, 0.75])[:, None].expand(2, 3))
    assert torch.allclose(mats[..., 1, 3], torch.tensor([1 / 6, 0.5, 5 / 6]).expand(2, 3))
    mats[..., 0, 3] = 0
    mats[..., 1, 3] = 0
    assert not mats.any()
    assert coordinate_offsets((2, 2), 8)[:, 2:].abs().sum() == 0  # not a square: entries 0 and 1


# --------------------------------------------------------------------------------------------- votes


def test_matrix_votes_are_pose_matrix_times_weight():
    vt = VoteTransform(children=5, parents=3, in_pose_dim=16, pose_dim=16, transform="matrix")
    pose = torch.randn(2, 4, 5, 16)
    votes = vt(pose)
    want = torch.stack(
        [torch.stack([pose[:, :, i].view(2, 4, 4, 4) @ vt.weight[i, j] for j in range(3)], 2) for i in range(5)], 2
    ).flatten(-2)
    torch.testing.assert_close(votes, want, rtol=1e-5, atol=1e-5)


def test_linear_votes_are_a_full_map_per_child_and_parent():
    vt = VoteTransform(children=4, parents=2, in_pose_dim=6, pose_dim=5, transform="linear")
    pose = torch.randn(3, 2, 4, 6)
    votes = vt(pose)
    assert votes.shape == (3, 2, 4, 2, 5)
    w = vt.weight.view(4, 6, 2, 5)
    for i, j in itertools.product(range(4), range(2)):
        torch.testing.assert_close(votes[:, :, i, j], pose[:, :, i] @ w[i, :, j], rtol=1e-5, atol=1e-5)


def test_matrix_votes_need_a_square_pose():
    with pytest.raises(ValueError, match="square"):
        VoteTransform(3, 2, 8, 8, "matrix")


# --------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("activation", ["sigmoid", "length"])
@pytest.mark.parametrize("kernel,batch_norm", [(3, True), (1, True), (1, False)])
def test_primary_caps(activation, kernel, batch_norm):
    layer = PrimaryCaps(8, types=4, pose_dim=16, kernel_size=kernel, batch_norm=batch_norm, activation=activation)
    out = layer(torch.randn(2, 8, 6, 6))
    assert isinstance(layer, CapsuleLayer) and layer.kind == "primary"
    assert out.pose.shape == (2, 4, 16, 6, 6) and out.activation.shape == (2, 4, 6, 6)
    assert ((out.activation >= 0) & (out.activation <= 1)).all()
    assert (layer.pose_conv.bias is None) == batch_norm
    if activation == "length":
        torch.testing.assert_close(out.activation, out.pose.norm(dim=2))
        assert (out.activation < 1).all()


@pytest.mark.parametrize("routing", ["self", "dynamic"])
@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (3, 2, 0), (1, 1, 0), (3, 2, 1)])
def test_conv_caps_shapes_and_coefficients(routing, k, s, p):
    layer = ConvCaps(3, 4, k, s, p, routing=routing, pose_dim=16)
    c = caps(h=6, w=5)
    out = layer(c)
    h, w = window_hw((6, 5), k, s, p)
    assert layer.kind == "conv" and out.pose.shape == (2, 4, 16, h, w) and out.activation.shape == (2, 4, h, w)
    assert layer.last_coefficients.shape == (2, h * w, 3 * k * k, 4) and not layer.last_coefficients.requires_grad
    quiet = ConvCaps(3, 4, k, s, p, routing=routing, pose_dim=16, keep_coefficients=False)
    quiet(c)
    assert quiet.last_coefficients is None


def test_conv_caps_pose_norm_follows_the_routing_default():
    assert isinstance(ConvCaps(2, 2, 3, 1, 1, routing="self").pose_norm, nn.BatchNorm2d)
    assert ConvCaps(2, 2, 3, 1, 1, routing="dynamic").pose_norm is None
    assert ConvCaps(2, 2, 3, 1, 1, routing="self", pose_norm=False).pose_norm is None
    assert isinstance(ConvCaps(2, 2, 3, 1, 1, routing="dynamic", pose_norm=True).pose_norm, nn.BatchNorm2d)


def test_conv_caps_padded_children_are_silent():
    """Padded children have activation 0 and pose 0, hence votes 0."""
    layer = ConvCaps(2, 3, 3, 1, 1, routing="self", pose_dim=16)
    c = caps(t=2, h=3, w=3)
    lazy, act, geo = layer._children(*c)
    votes, pose = lazy.materialize(), lazy.pose
    corner = 0  # window centred on (0, 0): its first row and column are padding
    padded = act[:, corner] == 0
    assert padded.sum() == 2 * 2 * 5  # 5 padded offsets per type, 2 types, batch 2
    assert (votes[:, corner][padded] == 0).all() and (pose[:, corner][padded] == 0).all()


def test_class_caps_conv_mode_is_a_whole_map_conv_caps():
    torch.manual_seed(0)
    conv = ConvCaps(3, 5, kernel_size=4, stride=1, padding=0, routing="dynamic", pose_dim=16)
    cls = ClassCaps(3, 5, routing="dynamic", pose_dim=16, in_hw=(4, 4), mode="conv")
    cls.votes.weight.data.copy_(conv.votes.weight.data)
    c = caps(t=3, h=4, w=4)
    a, b = conv(c), cls(c)
    assert cls.kind == "class" and b.pose.shape == (2, 5, 16, 1, 1) and b.activation.shape == (2, 5, 1, 1)
    torch.testing.assert_close(a.pose, b.pose)
    torch.testing.assert_close(a.activation, b.activation)


def test_class_caps_shared_mode_adds_coordinates_to_shared_votes():
    layer = ClassCaps(2, 3, routing="dynamic", pose_dim=16, in_hw=(3, 2), mode="shared", coordinate_scale=2.0)
    assert layer.votes.weight.shape[0] == 2  # one weight per child type, shared over the 6 positions
    c = caps(t=2, h=3, w=2)
    lazy, act, _ = layer._children(*c)
    votes, pose = lazy.materialize(), lazy.pose
    assert votes.shape == (2, 1, 12, 3, 16) and act.shape == (2, 1, 12) and pose.shape == (2, 1, 12, 16)
    offsets = coordinate_offsets((3, 2), 16, 2.0)
    for h, w, t in itertools.product(range(3), range(2), range(2)):
        i = (h * 2 + w) * 2 + t
        plain = layer.votes(c.pose[:, t, :, h, w].reshape(2, 1, 1, 16).expand(2, 1, 2, 16).contiguous())[:, :, t]
        torch.testing.assert_close(votes[:, 0, i], plain[:, 0] + offsets[h * 2 + w], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(act[:, 0, i], c.activation[:, t, h, w])


def test_class_caps_refuses_a_grid_it_was_not_built_for():
    layer = ClassCaps(2, 3, routing="self", pose_dim=16, in_hw=(4, 4))
    with pytest.raises(ValueError, match="built for"):
        layer(caps(t=2, h=3, w=3))


# --------------------------------------------------------------------------------------------- AMP, dtypes


class SpyRouting(Routing):
    """Mean of the votes; records the dtypes it was called with and whether autocast was on."""

    seen: list = []

    def forward(self, votes, activation, pose, geometry=None):
        SpyRouting.seen.append((votes.dtype, activation.dtype, torch.is_autocast_enabled("cpu")))
        coefficients = torch.full(votes.shape[:4], 1.0 / votes.shape[3], dtype=votes.dtype)
        return RoutingOutput(votes.mean(2), torch.sigmoid(votes.mean(2).sum(-1)), coefficients)


def test_routing_runs_in_fp32_under_autocast_and_outputs_come_back_in_input_dtype():
    SpyRouting.seen.clear()
    layer = ConvCaps(2, 3, 3, 1, 1, routing=SpyRouting, pose_dim=16, pose_norm=False)
    c = caps(t=2, h=4, w=4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(c)
    assert SpyRouting.seen == [(torch.float32, torch.float32, False)]
    assert out.pose.dtype == torch.bfloat16 and out.activation.dtype == torch.bfloat16


def test_float64_stays_float64():
    layer = ConvCaps(2, 3, 3, 1, 1, routing="self", pose_dim=16).double()
    out = layer(caps(t=2, h=4, w=4, dtype=torch.float64))
    assert out.pose.dtype == torch.float64 and layer.last_coefficients.dtype == torch.float64


# --------------------------------------------------------------------------------------------- checkpointing


class BatchNormRouting(Routing):
    """A routing with BatchNorm statistics inside: checkpointing must not update them twice."""

    def __init__(self, children, parents, pose_dim, iterations=3, in_pose_dim=None):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        self.bn = nn.BatchNorm1d(parents)

    def forward(self, votes, activation, pose, geometry=None):
        n, length, i, j, d = votes.shape
        weights = activation / (activation.sum(2, keepdim=True) + 1e-9)
        mean = torch.einsum("nli,nlijd->nljd", weights, votes)
        logits = self.bn(mean.pow(2).mean(-1).reshape(n * length, j)).reshape(n, length, j)
        return RoutingOutput(mean, torch.sigmoid(logits), torch.full((n, length, i, j), 1.0 / j))


@pytest.mark.parametrize("routing", ["self", "dynamic", BatchNormRouting])
def test_checkpointing_changes_nothing_but_memory(routing):
    def run(checkpointing):
        torch.manual_seed(0)
        layer = ConvCaps(2, 3, 3, 1, 1, routing=routing, pose_dim=16, pose_norm=True, checkpointing=checkpointing)
        c = caps(t=2, h=4, w=4)
        pose, act = c.pose.requires_grad_(), c.activation.requires_grad_()
        out = layer(Capsules(pose, act))
        (out.pose.square().mean() + out.activation.sum()).backward()
        grads = [p.grad for p in layer.parameters()] + [pose.grad, act.grad]
        return out, grads, [b.clone() for b in layer.buffers()]

    (a, ga, ba), (b, gb, bb) = run(False), run(True)
    torch.testing.assert_close(a.pose, b.pose, rtol=0, atol=0)
    torch.testing.assert_close(a.activation, b.activation, rtol=0, atol=0)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    assert len(ba) == len(bb) > 0
    for x, y in zip(ba, bb):
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # running statistics moved exactly once
