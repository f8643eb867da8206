"""Method invariants of self-routing and dynamic routing, and loops that spell out their formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from capsbench.capsules.routing.dynamic import DynamicRouting, squash
from capsbench.capsules.routing.self_routing import SelfRouting
from capsbench.registry import ROUTINGS


def inputs(n=2, length=3, i=6, j=4, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(n, length, i, j, d, generator=g, dtype=dtype)
    act = torch.rand(n, length, i, generator=g, dtype=dtype)
    pose = torch.randn(n, length, i, d, generator=g, dtype=dtype)
    return votes, act, pose


def self_routing(i=6, j=4, d=16, seed=0):
    torch.manual_seed(seed)
    r = SelfRouting(children=i, parents=j, pose_dim=d).double()
    with torch.no_grad():
        r.W2.normal_(0, 0.5)
        r.b2.normal_(0, 0.5)
    return r


def test_registry_and_reference_attributes():
    assert ROUTINGS.get("self") is SelfRouting and ROUTINGS.get("dynamic") is DynamicRouting
    sr, dr = SelfRouting, DynamicRouting
    assert (sr.loss, sr.normalised_over, sr.pose_norm) == ("nll", "parents", True)
    assert (dr.loss, dr.normalised_over, dr.pose_norm) == ("margin", "parents", False)


# --------------------------------------------------------------------------------------------- self-routing


def test_self_routing_matches_the_formulas_written_as_loops():
    votes, act, pose = inputs()
    r = self_routing()
    out = r(votes, act, pose)
    n, length, i, j, d = votes.shape
    for b in range(n):
        for l in range(length):
            c = torch.stack([torch.softmax(pose[b, l, k] @ r.W2[k] + r.b2[k], 0) for k in range(i)])  # [I, J]
            ar = act[b, l, :, None] * c
            for p in range(j):
                want_pose = sum(ar[k, p] / ar[:, p].sum() * votes[b, l, k, p] for k in range(i))
                torch.testing.assert_close(out.pose[b, l, p], want_pose)
                torch.testing.assert_close(out.activation[b, l, p], ar[:, p].sum() / act[b, l].sum())
            torch.testing.assert_close(out.coefficients[b, l], c)


def test_self_routing_starts_uniform():
    r = SelfRouting(children=5, parents=4, pose_dim=16)
    assert not r.W2.any() and not r.b2.any() and r.W2.shape == (5, 16, 4)
    votes, act, pose = inputs(i=5, dtype=torch.float32)
    out = r(votes, act, pose)
    torch.testing.assert_close(out.coefficients, torch.full_like(out.coefficients, 0.25))
    torch.testing.assert_close(out.activation, torch.full_like(out.activation, 0.25))


@given(seed=st.integers(0, 1000), scale=st.floats(1e-2, 1e2))
def test_self_activations_sum_to_one_and_ignore_a_common_scale(seed, scale):
    votes, act, pose = inputs(seed=seed)
    act = act.clamp_min(1e-3)
    r = self_routing(seed=seed)
    out = r(votes, act, pose)
    torch.testing.assert_close(out.activation.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    scaled = r(votes, act * scale, pose)
    torch.testing.assert_close(scaled.activation, out.activation)
    torch.testing.assert_close(scaled.pose, out.pose)


def test_self_routing_all_zero_window_gives_zero_not_nan():
    votes, act, pose = inputs(dtype=torch.float32)
    act[:, 1] = 0  # every child of position 1 is silent
    votes.requires_grad_()
    act.requires_grad_()
    r = self_routing().float()
    out = r(votes, act, pose)
    assert torch.isfinite(out.pose).all() and torch.isfinite(out.activation).all()
    assert (out.pose[:, 1] == 0).all() and (out.activation[:, 1] == 0).all()
    torch.testing.assert_close(out.activation[:, [0, 2]].sum(-1), torch.ones(2, 2))
    (out.pose.sum() + out.activation.sum()).backward()
    assert torch.isfinite(votes.grad).all() and torch.isfinite(act.grad).all()
    assert torch.isfinite(r.W2.grad).all()


def test_self_routing_ignores_silent_children():
    votes, act, pose = inputs()
    r = self_routing()
    act[:, :, 0] = 0
    a = r(votes, act, pose)
    votes2 = votes.clone()
    votes2[:, :, 0] = 1e3  # a silent child's votes change nothing
    b = r(votes2, act, pose)
    torch.testing.assert_close(a.pose, b.pose)
    torch.testing.assert_close(a.activation, b.activation)


# --------------------------------------------------------------------------------------------- dynamic routing


def dynamic_loop(votes, iterations):
    """Sabour et al. 2017, Procedure 1, one output position at a time."""
    n, length, i, j, d = votes.shape
    pose, coef = torch.zeros(n, length, j, d, dtype=votes.dtype), None
    coefs = torch.zeros(n, length, i, j, dtype=votes.dtype)
    for b in range(n):
        for l in range(length):
            logits = torch.zeros(i, j, dtype=votes.dtype)
            for t in range(iterations):
                coef = torch.softmax(logits, dim=1)  # for every child: over its parents
                s = torch.stack([sum(coef[k, p] * votes[b, l, k, p] for k in range(i)) for p in range(j)])
                v = torch.stack([s[p] * s[p].dot(s[p]) / (1 + s[p].dot(s[p])) / s[p].norm() for p in range(j)])
                if t < iterations - 1:
                    logits = logits + torch.einsum("kpd,pd->kp", votes[b, l], v)
            pose[b, l], coefs[b, l] = v, coef
    return pose, pose.norm(dim=-1), coefs


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_dynamic_routing_matches_the_procedure_written_as_loops(iterations):
    votes, act, pose = inputs(i=5, j=3, d=8)
    out = DynamicRouting(children=5, parents=3, pose_dim=8, iterations=iterations)(votes, act, pose)
    want_pose, want_act, want_coef = dynamic_loop(votes, iterations)
    torch.testing.assert_close(out.pose, want_pose)
    torch.testing.assert_close(out.activation, want_act.to(out.activation.dtype))
    torch.testing.assert_close(out.coefficients, want_coef)


def test_dynamic_first_iteration_is_uniform_and_softmax_is_over_parents():
    votes, act, pose = inputs(i=6, j=4)
    one = DynamicRouting(children=6, parents=4, pose_dim=16, iterations=1)(votes, act, pose)
    torch.testing.assert_close(one.coefficients, torch.full_like(one.coefficients, 0.25))
    torch.testing.assert_close(one.pose, squash(votes.mean(2) * 6 / 4))  # s_j = sum_i u_hat_ij / J
    three = DynamicRouting(children=6, parents=4, pose_dim=16, iterations=3)(votes, act, pose)
    over_parents, over_children = three.coefficients.sum(-1), three.coefficients.sum(2)
    torch.testing.assert_close(over_parents, torch.ones_like(over_parents))
    assert not torch.allclose(over_children, torch.ones_like(over_children))


@given(seed=st.integers(0, 1000), scale=st.sampled_from([1e-3, 1.0, 10.0, 100.0]))
def test_dynamic_lengths_are_below_one(seed, scale):
    votes, act, pose = inputs(seed=seed, dtype=torch.float32)
    out = DynamicRouting(children=6, parents=4, pose_dim=16)(votes * scale, act, pose)
    assert (out.activation < 1).all() and (out.activation >= 0).all()
    torch.testing.assert_close(out.activation, out.pose.norm(dim=-1))


def test_dynamic_routing_ignores_child_activations():
    votes, act, pose = inputs()
    r = DynamicRouting(children=6, parents=4, pose_dim=16)
    a, b = r(votes, act, pose), r(votes, torch.zeros_like(act), pose)
    torch.testing.assert_close(a.pose, b.pose)


def test_dynamic_zero_votes_give_zero_without_nan():
    votes = torch.zeros(1, 2, 5, 3, 8, requires_grad=True)
    out = DynamicRouting(children=5, parents=3, pose_dim=8)(votes, torch.zeros(1, 2, 5), torch.zeros(1, 2, 5, 8))
    assert (out.pose == 0).all() and (out.activation == 0).all()
    (out.pose.sum() + out.activation.sum()).backward()
    assert torch.isfinite(votes.grad).all()


def test_detach_agreement_keeps_outputs_and_changes_gradients():
    votes, act, pose = inputs(i=5, j=3, d=8)
    grads, outs = [], []
    for detach in (False, True):
        v = votes.clone().requires_grad_()
        out = DynamicRouting(children=5, parents=3, pose_dim=8, detach_agreement=detach)(v, act, pose)
        out.activation.sum().backward()
        grads.append(v.grad)
        outs.append(out.pose)
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])


def test_squash_length_and_direction():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]])
    v = squash(s)
    torch.testing.assert_close(v.norm(dim=-1)[0], torch.tensor(25 / 26))
    torch.testing.assert_close(v[0] / v[0].norm(), s[0] / 5)
    assert (v[1] == 0).all() and torch.isfinite(v).all()
