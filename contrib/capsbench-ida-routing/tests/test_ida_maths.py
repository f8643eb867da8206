"""Routing ``ida`` against a literal, loop-by-loop transcription of the paper's Procedure 1 (float64, tiny inputs).

The registry-wide properties (ranges, normalisation, permutation, gradcheck, extreme inputs) are
capsbench's own tests, parametrised over every registered routing; these check the method's maths.
"""

from __future__ import annotations

import math

import pytest
import torch
from capsbench_ida_routing.routing import InvertedDotProductRouting


def literal(votes, act, iterations, weight, bias, ln_eps=1e-5, eps=1e-12, uniform=False):
    """Procedure 1 per window: p_j = 0; repeat: a_ij = p_j.v_ij, r_ij = softmax_j, p_j = LayerNorm(sum_i r_ij v_ij)."""
    n_, l_, i_, j_, d_ = votes.shape
    pose = torch.zeros(n_, l_, j_, d_, dtype=votes.dtype)
    share = torch.zeros(n_, l_, j_, dtype=votes.dtype)
    coef = torch.zeros(n_, l_, i_, j_, dtype=votes.dtype)
    for n in range(n_):
        for w in range(l_):
            p = [[0.0] * d_ for _ in range(j_)]
            for _ in range(iterations):
                r = []
                for i in range(i_):
                    agree = [sum(p[j][k] * float(votes[n, w, i, j, k]) for k in range(d_)) for j in range(j_)]
                    if uniform:
                        agree = [0.0] * j_
                    top = max(agree)
                    e = [math.exp(a - top) for a in agree]
                    r.append([x / sum(e) for x in e])
                for j in range(j_):
                    s = [sum(r[i][j] * float(votes[n, w, i, j, k]) for i in range(i_)) for k in range(d_)]
                    mean = sum(s) / d_
                    var = sum((x - mean) ** 2 for x in s) / d_
                    p[j] = [(x - mean) / math.sqrt(var + ln_eps) * float(weight[k]) + float(bias[k])
                            for k, x in enumerate(s)]
            total = sum(float(act[n, w, i]) for i in range(i_))
            for j in range(j_):
                pose[n, w, j] = torch.tensor(p[j], dtype=votes.dtype)
                share[n, w, j] = sum(float(act[n, w, i]) * r[i][j] for i in range(i_)) / (total + eps)
                for i in range(i_):
                    coef[n, w, i, j] = r[i][j]
    return pose, share, coef


def inputs(seed=0, n=2, length=3, i=5, j=3, d=4):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(n, length, i, j, d, generator=g, dtype=torch.float64)
    act = torch.rand(n, length, i, generator=g, dtype=torch.float64)
    return votes, act


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("coefficients", ["routed", "uniform"])
def test_matches_the_papers_procedure_written_out(iterations, coefficients):
    votes, act = inputs(seed=iterations)
    routing = InvertedDotProductRouting(5, 3, 4, iterations=iterations, coefficients=coefficients).double()
    with torch.no_grad():  # learned LayerNorm scale and shift, not the initial 1 and 0
        routing.norm.weight.copy_(torch.linspace(0.5, 1.5, 4))
        routing.norm.bias.copy_(torch.linspace(-0.2, 0.3, 4))
    out = routing(votes, act, None)
    pose, share, coef = literal(votes, act, iterations, routing.norm.weight.detach(), routing.norm.bias.detach(),
                                uniform=coefficients == "uniform")
    torch.testing.assert_close(out.pose, pose, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.activation, share, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.coefficients, coef, rtol=1e-10, atol=1e-10)


def test_one_iteration_is_uniform_coupling_and_later_ones_follow_agreement():
    votes, act = inputs(seed=7)
    one = InvertedDotProductRouting(5, 3, 4, iterations=1).double()(votes, act, None)
    assert torch.equal(one.coefficients, torch.full_like(one.coefficients, 1 / 3))
    # a child whose vote for parent 0 points along parent 0's pose routes more to parent 0 the more iterations
    votes[:, :, 0, 0] = 5 * one.pose[:, :, 0]
    two = InvertedDotProductRouting(5, 3, 4, iterations=2).double()(votes, act, None)
    assert (two.coefficients[:, :, 0, 0] > 0.9).all()


def test_measured_activation_is_the_share_of_active_childrens_mass():
    votes, act = inputs(seed=3)
    act[0, 0] = 0.0  # an all-inactive window (padding): no mass, activation 0
    act[1, 0, 1:] = 0.0  # one active child: its coefficients are the shares
    out = InvertedDotProductRouting(5, 3, 4, iterations=3).double()(votes, act, None)
    assert torch.equal(out.activation[0, 0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(out.activation[1, 0], out.coefficients[1, 0, 0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.activation[:, 1:].sum(-1), torch.ones(2, 2, dtype=torch.float64))
    # the routing itself ignores child activations (as in the paper): poses and coefficients do not move
    other = InvertedDotProductRouting(5, 3, 4, iterations=3).double()(votes, torch.rand_like(act), None)
    torch.testing.assert_close(other.pose, out.pose)
    torch.testing.assert_close(other.coefficients, out.coefficients)
