"""Routing ``efficient`` against a literal transcription of Efficient-CapsNet's equations (float64, tiny inputs):
the I x I self-attention matrix of the votes per parent, written out, not the row-sum shortcut the routing uses.

The registry-wide properties are capsbench's own tests, parametrised over every registered routing.
"""

from __future__ import annotations

import math

import pytest
import torch
from capsbench_efficient_capsnet.routing import SelfAttentionRouting, exp_squash


def literal(votes, prior, uniform=False):
    """A^j = U_j U_j^T / sqrt(D); c_ij = softmax_j(sum_k A^j_ik); s_j = sum_i (c_ij + b_ij) u_ij; v = squash(s)."""
    n_, l_, i_, j_, d_ = votes.shape
    pose = torch.zeros(n_, l_, j_, d_, dtype=votes.dtype)
    act = torch.zeros(n_, l_, j_, dtype=votes.dtype)
    coef = torch.zeros(n_, l_, i_, j_, dtype=votes.dtype)
    for n in range(n_):
        for w in range(l_):
            logits = torch.zeros(i_, j_, dtype=votes.dtype)
            for j in range(j_):
                u = votes[n, w, :, j, :]  # [I, D]
                attention = u @ u.T / math.sqrt(d_)  # [I, I]
                logits[:, j] = attention.sum(1)
            c = torch.full_like(logits, 1 / j_) if uniform else torch.softmax(logits, dim=1)
            coef[n, w] = c
            for j in range(j_):
                s = sum((c[i, j] + prior[i, j]) * votes[n, w, i, j] for i in range(i_))
                norm = float(torch.sqrt((s * s).sum()))
                length = 1 - math.exp(-norm)
                pose[n, w, j] = s / norm * length
                act[n, w, j] = length
    return pose, act, coef


@pytest.mark.parametrize("coefficients", ["routed", "uniform"])
def test_matches_the_papers_equations_written_out(coefficients):
    g = torch.Generator().manual_seed(1)
    votes = 0.5 * torch.randn(2, 3, 6, 4, 5, generator=g, dtype=torch.float64)
    routing = SelfAttentionRouting(6, 4, 5, coefficients=coefficients).double()
    with torch.no_grad():
        routing.B.copy_(0.2 * torch.randn(6, 4, generator=g, dtype=torch.float64))  # a learned prior, not zero
    out = routing(votes, torch.rand(2, 3, 6, dtype=torch.float64), None)
    pose, act, coef = literal(votes, routing.B.detach(), uniform=coefficients == "uniform")
    torch.testing.assert_close(out.pose, pose, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.activation, act, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.coefficients, coef, rtol=1e-10, atol=1e-12)


def test_without_log_prior_the_coefficients_alone_weight_the_votes():
    votes = torch.randn(1, 2, 3, 2, 4, dtype=torch.float64)
    out = SelfAttentionRouting(3, 2, 4, log_prior=False).double()(votes, torch.ones(1, 2, 3, dtype=torch.float64))
    pose, act, _ = literal(votes, torch.zeros(3, 2, dtype=torch.float64))
    torch.testing.assert_close(out.pose, pose)
    torch.testing.assert_close(out.activation, act)


def test_squash_is_zero_with_finite_gradients_at_zero_and_below_one_when_huge():
    s = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    v, length = exp_squash(s)
    (v.sum() + length.sum()).backward()
    assert torch.equal(v, torch.zeros_like(v)) and torch.equal(length, torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(s.grad).all()
    _, big = exp_squash(torch.full((1, 4), 1e6))
    assert (big <= 1).all() and (big > 0.999).all()


def test_child_activations_are_not_used():
    votes = torch.randn(1, 2, 3, 2, 4)
    routing = SelfAttentionRouting(3, 2, 4)
    a, b = routing(votes, torch.zeros(1, 2, 3)), routing(votes, torch.ones(1, 2, 3))
    assert torch.equal(a.pose, b.pose) and torch.equal(a.activation, b.activation)
