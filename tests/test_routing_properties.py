"""Properties every registered routing must have (built-in and plugin routings alike).

Parametrised over ``ROUTINGS.names()``, so a new routing is covered the moment it registers.
Inputs are drawn by hypothesis: small shapes, random votes and activations including all-zero
activations, identical votes, and huge (1e4) and tiny (1e-6) magnitudes. Through the layers
(``ConvCaps`` with overlapping windows, ``ClassCaps``) every routing also meets child poses from
1e-6 to 1e6 and activations exactly 0 and exactly 1 (issue 12: dynamic routing's length rounded to
1.0000001 and VB returned NaN at pose scale 1e6, where the routings alone looked fine).

Permutation of children: a routing may have parameters indexed by child (self-routing's
``W2``, ``b2``). It names them in ``per_child_parameters`` (dim 0 = child); the test permutes
those together with the votes, activations and child poses. Every parameter is perturbed
with N(0, 0.3^2) noise first: training moves parameters anywhere, and zero-initialised
per-child parameters would hide a missing declaration.

Routings with a fused path (``forward_lazy``) run every property on it too (``impl="fused"``):
arbitrary votes reach it as lazy votes through identity weights (``lazy_identity``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from capsbench.capsules.layers import ClassCaps, ConvCaps
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY
from capsbench.capsules.routing.votes import LazyVotes
from capsbench.capsules.types import Capsules
from capsbench.registry import ROUTINGS

NAMES = ROUTINGS.names()


def _has_fused(name: str) -> bool:
    return ROUTINGS.get(name)(children=2, parents=2, pose_dim=4).fused_unavailable() is None


# every routing on its reference path, and the routings that have one on their fused path
PATHS = [(name, "reference") for name in NAMES] + [(name, "fused") for name in NAMES if _has_fused(name)]


def lazy_identity(votes: torch.Tensor) -> LazyVotes:
    """Any votes ``[N, L, I, J, D]`` as lazy votes: poses = the flattened votes, identity linear weights."""
    i, j, d = votes.shape[2:]
    eye = torch.eye(j * d, dtype=votes.dtype).expand(i, j * d, j * d)
    return LazyVotes(votes.flatten(-2), eye, "linear", parents=j, pose_dim=d)


class Path(nn.Module):
    """A routing called on one path: ``forward(votes, act, pose)`` for both (so functional_call works)."""

    def __init__(self, routing, impl):
        super().__init__()
        self.routing, self.impl = routing, impl

    def forward(self, votes, act, pose):
        if self.impl == "fused":
            return self.routing.forward_lazy(lazy_identity(votes), act, IDENTITY_GEOMETRY, need_coefficients=True)
        return self.routing(votes, act, pose)


def make_routing(name, children, parents, pose_dim, iterations=3, seed=0, dtype=torch.float32, impl="reference"):
    torch.manual_seed(seed)
    routing = ROUTINGS.get(name)(children=children, parents=parents, pose_dim=pose_dim, iterations=iterations)
    routing = routing.to(dtype)
    with torch.no_grad():  # learned values, not the (often zero) initial ones
        for param in routing.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return Path(routing, impl)


@st.composite
def routing_inputs(draw):
    n = draw(st.integers(1, 2))
    length = draw(st.integers(1, 4))
    i = draw(st.integers(1, 9))
    j = draw(st.integers(1, 5))
    d = draw(st.sampled_from([4, 16]))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    votes_kind = draw(st.sampled_from(["random", "identical", "zero"]))
    act_kind = draw(st.sampled_from(["random", "zeros", "ones", "tiny", "some_zero"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if votes_kind == "random":
        votes = torch.randn(n, length, i, j, d, generator=g) * scale
    elif votes_kind == "identical":
        votes = (torch.randn(d, generator=g) * scale).expand(n, length, i, j, d).clone()
    else:
        votes = torch.zeros(n, length, i, j, d)
    act = {
        "random": lambda: torch.rand(n, length, i, generator=g),
        "zeros": lambda: torch.zeros(n, length, i),
        "ones": lambda: torch.ones(n, length, i),
        "tiny": lambda: torch.rand(n, length, i, generator=g) * 1e-6,
        "some_zero": lambda: torch.rand(n, length, i, generator=g) * (torch.rand(n, length, i, generator=g) > 0.5),
    }[act_kind]()
    pose = torch.randn(n, length, i, d, generator=g) * scale
    train = draw(st.booleans()) and n * length >= 2  # BatchNorm inside a routing needs 2 values in training
    return votes, act, pose, train, seed


def check_output(routing, out, votes):
    n, length, i, j, d = votes.shape
    assert out.pose.shape == (n, length, j, d)
    assert out.activation.shape == (n, length, j)
    assert out.coefficients.shape == (n, length, i, j)
    for t in out:
        assert torch.isfinite(t).all()
    assert ((out.activation >= 0) & (out.activation <= 1)).all()
    assert (out.coefficients >= 0).all()
    # with no geometry (identity child_sum) both normalisations mean: sum over the parents is 1
    assert routing.normalised_over in ("parents", "receiving_parents")
    torch.testing.assert_close(out.coefficients.sum(-1), torch.ones(n, length, i), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,impl", PATHS)
@given(data=routing_inputs())
def test_outputs_and_gradients_are_finite_and_in_range(name, impl, data):
    votes, act, pose, train, seed = data
    n, length, i, j, d = votes.shape
    routing = make_routing(name, i, j, d, seed=seed, impl=impl).train(train)
    votes, act, pose = votes.requires_grad_(), act.requires_grad_(), pose.requires_grad_()
    out = routing(votes, act, pose)
    check_output(routing.routing, out, votes)
    g = torch.Generator().manual_seed(seed + 1)
    weights = torch.randn(out.pose.shape, generator=g), torch.rand(out.activation.shape, generator=g)
    ((out.pose * weights[0]).sum() + (out.activation * weights[1]).sum()).backward()
    for tensor in [votes, act, pose, *routing.parameters()]:
        assert tensor.grad is None or torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize("name,impl", PATHS)
@given(data=routing_inputs())
def test_permuting_children_changes_nothing(name, impl, data):
    votes, act, pose, train, seed = data
    n, length, i, j, d = votes.shape
    votes, act, pose = votes.double(), act.double(), pose.double()  # no rounding: permutation is exact maths
    routing = make_routing(name, i, j, d, seed=seed, dtype=torch.float64, impl=impl).train(train)
    perm = torch.randperm(i, generator=torch.Generator().manual_seed(seed))
    params = dict(routing.named_parameters())
    moved = {p: params[p][perm] for p in (f"routing.{q}" for q in getattr(routing.routing, "per_child_parameters", ()))}
    a = functional_call(routing, params, (votes, act, pose))
    b = functional_call(routing, {**params, **moved}, (votes[:, :, perm], act[:, :, perm], pose[:, :, perm]))
    scale = 1.0 + votes.abs().max().item()
    torch.testing.assert_close(b.pose, a.pose, rtol=1e-6, atol=1e-8 * scale)
    torch.testing.assert_close(b.activation, a.activation, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(b.coefficients, a.coefficients[:, :, perm], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name,impl", PATHS)
def test_float64_gradcheck(name, impl):
    n, length, i, j, d = 1, 2, 3, 2, 4
    routing = make_routing(name, i, j, d, iterations=2, seed=3, dtype=torch.float64, impl=impl).train()
    g = torch.Generator().manual_seed(0)
    votes = torch.randn(n, length, i, j, d, generator=g, dtype=torch.float64, requires_grad=True)
    act = (0.2 + 0.7 * torch.rand(n, length, i, generator=g, dtype=torch.float64)).requires_grad_()
    pose = torch.randn(n, length, i, d, generator=g, dtype=torch.float64, requires_grad=True)
    names = [p for p, _ in routing.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in routing.named_parameters()]

    def fn(votes, act, pose, *params):
        out = functional_call(routing, dict(zip(names, params)), (votes, act, pose))
        return out.pose, out.activation

    assert torch.autograd.gradcheck(fn, (votes, act, pose, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------- through ConvCaps


def conv_caps(name, **kw):
    torch.manual_seed(0)
    return ConvCaps(3, 4, kernel_size=3, stride=1, padding=1, routing=name, pose_dim=16, **kw)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_conv_caps_k3_s1_p1_keeps_the_grid(name, hw):
    layer = conv_caps(name)
    g = torch.Generator().manual_seed(0)
    out = layer(Capsules(torch.randn(2, 3, 16, *hw, generator=g), torch.rand(2, 3, *hw, generator=g)))
    assert out.pose.shape == (2, 4, 16, *hw) and out.activation.shape == (2, 4, *hw)
    assert torch.isfinite(out.pose).all() and ((out.activation >= 0) & (out.activation <= 1)).all()


@pytest.mark.parametrize("name", NAMES)
def test_coefficients_are_normalised_over_the_declared_axis_with_overlapping_windows(name):
    """Through a real ConvCaps (3x3 windows, stride 1: every child sits in up to 9 windows)."""
    layer = conv_caps(name)
    g = torch.Generator().manual_seed(1)
    c = Capsules(torch.randn(2, 3, 16, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g))
    layer(c)
    coef = layer.last_coefficients  # [N, L, I, J]
    assert (coef >= 0).all()
    geometry = layer._children(*c)[2]
    real = geometry.child_sum(torch.ones(coef.shape[:3])) > 0  # padded slots are not children
    if layer.routing.normalised_over == "parents":
        total = coef.sum(-1)
    else:
        assert layer.routing.normalised_over == "receiving_parents"
        total = geometry.child_sum(coef.sum(-1))
    torch.testing.assert_close(total[real], torch.ones(int(real.sum())), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ extreme inputs, through layers

POSE_SCALES = [1e-6, 1e-3, 1.0, 1e3, 1e6]
ACTIVATIONS = {
    "zeros": lambda shape, g: torch.zeros(shape),
    "ones": lambda shape, g: torch.ones(shape),
    "random": lambda shape, g: torch.rand(shape, generator=g),
}


def routed_layer(name, kind, impl):
    torch.manual_seed(0)
    if kind == "conv":
        return ConvCaps(2, 3, kernel_size=3, stride=1, padding=1, routing=name, pose_dim=16, routing_impl=impl)
    return ClassCaps(2, 4, routing=name, pose_dim=16, in_hw=(3, 3), routing_impl=impl)


@pytest.mark.parametrize("name,impl", PATHS)
@pytest.mark.parametrize("kind", ["conv", "class"])
@pytest.mark.parametrize("scale", POSE_SCALES)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("training", [True, False])
def test_layers_keep_activations_in_range_and_everything_finite_at_extreme_inputs(
    name, impl, kind, scale, activation, training, request
):
    if (name, impl, kind, scale, activation) == ("vb", "fused", "class", 1e6, "zeros"):
        # Known (issue 12 follow-up): at |E-step logits| ~5e14 the fp32 grid spacing (~7e7 nats) is far
        # coarser than the ~60 nats child_shift must land within; the reference path's rounding lands
        # on the max here, the fused path's does not (NaN). Needs an exact per-child max.
        reason = "child_shift cannot land within exp range of the max at |logits| ~ 5e14 in fp32"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    layer = routed_layer(name, kind, impl).train(training)
    g = torch.Generator().manual_seed(0)
    pose = (torch.randn(2, 2, 16, 3, 3, generator=g) * scale).requires_grad_()
    act = ACTIVATIONS[activation]((2, 2, 3, 3), g).requires_grad_()
    out = layer(Capsules(pose, act))
    assert torch.isfinite(out.pose).all(), "non-finite output poses"
    assert torch.isfinite(out.activation).all(), "non-finite output activations"
    low, high = out.activation.min().item(), out.activation.max().item()
    assert 0 <= low and high <= 1, f"activations outside [0, 1]: [{low!r}, {high!r}]"
    weights = torch.randn(out.pose.shape, generator=g), torch.rand(out.activation.shape, generator=g)
    ((out.pose * weights[0]).sum() + (out.activation * weights[1]).sum()).backward()
    for what, tensor in [("poses", pose), ("activations", act), *layer.named_parameters()]:
        assert tensor.grad is None or torch.isfinite(tensor.grad).all(), f"non-finite gradient of {what}"
