"""EM and VB routing: formulas against slow hand computations, stability, normalisation axes, options.

The registry-wide properties (ranges, permutation invariance, magnitudes) live in
test_routing_properties.py; this file checks what is specific to the two clustering methods.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from capsbench.capsules.geometry import window_geometry
from capsbench.capsules.routing.base import Geometry
from capsbench.capsules.routing.em import EMRouting, child_log_softmax, inverse_temperatures
from capsbench.capsules.routing.ops import Normaliser, child_shift
from capsbench.capsules.routing.vb import VBRouting
from capsbench.errors import UserError
from capsbench.registry import ROUTINGS

# --- a tiny overlapping window layer built here with fold/unfold (independent of layers.py) ---------


def fold_geometry(hw, kernel, stride, padding) -> Geometry:
    """child_sum over every window holding a child; padded slots come back as 0."""

    def child_sum(x):  # [N, L, I], I = types * kernel * kernel (type outer, as F.unfold)
        grid = F.fold(x.transpose(1, 2), hw, kernel, padding=padding, stride=stride)
        return F.unfold(grid, kernel, padding=padding, stride=stride).transpose(1, 2)

    return Geometry(child_sum=child_sum)


def windows(grid_act, kernel, stride, padding):
    """Child activations [N, L, I] of a [N, T, H, W] activation grid."""
    return F.unfold(grid_act, kernel, padding=padding, stride=stride).transpose(1, 2)


@pytest.fixture
def overlapping():
    """2 types on a 3x3 grid, 2x2 windows, stride 1, padding 1: 16 windows of 8 children."""
    torch.manual_seed(0)
    grid = torch.rand(2, 2, 3, 3)
    grid[:, 0, 1, 1] = 0.0  # two dead children, each sitting in 4 windows
    grid[:, 1, 0, 2] = 0.0
    return windows(grid, 2, 1, 1), fold_geometry((3, 3), 2, 1, 1)


def em(**options):
    return EMRouting(8, 3, 4, **{"iterations": 3, **options})


def vb(**options):
    return VBRouting(8, 3, 4, **{"iterations": 3, **options})


# --- EM: activations really weight the statistics --------------------------------------------------


@pytest.mark.parametrize("normalise", ["parents", "receiving_parents"])
@pytest.mark.parametrize("make", [em, vb])
def test_child_with_zero_activation_has_no_influence(make, normalise, overlapping):
    act, geometry = overlapping
    n, length, i = act.shape
    votes = torch.randn(n, length, i, 3, 4)
    dead = act == 0
    assert dead.any()
    changed = votes.clone()
    changed[dead] = 100 * torch.randn_like(changed[dead])
    routing = make(normalise=normalise).eval()
    out, out_changed = routing(votes, act, None, geometry), routing(changed, act, None, geometry)
    if normalise == "parents":  # nothing but the child itself sees its votes: bit-identical
        assert torch.equal(out.pose, out_changed.pose) and torch.equal(out.activation, out_changed.activation)
    else:  # the over-windows log-sum-exp shares a global shift: identical up to rounding
        torch.testing.assert_close(out.pose, out_changed.pose, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.activation, out_changed.activation, rtol=1e-5, atol=1e-5)
    # the same change on live children moves the output: the check above can fail
    live_changed = votes.clone()
    live_changed[~dead] = 100 * torch.randn_like(live_changed[~dead])
    assert not torch.allclose(routing(live_changed, act, None, geometry).pose, out.pose, atol=1e-2)


def slow_em(votes, act, beta_u, beta_a, iterations, final_lambda, min_var):
    """Hinton's procedure written with plain loops over children, parents and pose entries."""
    (num_i, num_j, d), r = votes.shape, [[1.0 / votes.shape[1]] * votes.shape[1] for _ in range(votes.shape[0])]
    for t in range(iterations):
        lam = final_lambda * (1 - 0.95 ** (t + 1))
        mu, var, a_out = [], [], []
        for j in range(num_j):
            rw = [r[i][j] * act[i] for i in range(num_i)]  # R' = R a_i, not renormalised
            mass = sum(rw)
            m = [sum(rw[i] * votes[i, j, h] for i in range(num_i)) / mass for h in range(d)]
            s = [sum(rw[i] * (votes[i, j, h] - m[h]) ** 2 for i in range(num_i)) / mass + min_var for h in range(d)]
            cost = sum((beta_u[j] + 0.5 * math.log(s[h])) * mass for h in range(d))
            mu.append(m), var.append(s), a_out.append(1 / (1 + math.exp(-lam * (beta_a[j] - cost))))
        if t < iterations - 1:
            for i in range(num_i):
                p = [
                    a_out[j]
                    * math.prod(
                        math.exp(-((votes[i, j, h] - mu[j][h]) ** 2) / (2 * var[j][h]))
                        / math.sqrt(2 * math.pi * var[j][h])
                        for h in range(d)
                    )
                    for j in range(num_j)
                ]
                r[i] = [pj / sum(p) for pj in p]
    return torch.tensor(mu), torch.tensor(a_out), torch.tensor(r)


@pytest.mark.parametrize("equal", [True, False])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_em_matches_slow_reference(equal, iterations):
    torch.manual_seed(1)
    votes = torch.randn(1, 1, 5, 2, 3, dtype=torch.float64) * 0.3
    votes[..., 1, :] += 0.2  # the two parents see different clusters
    act = torch.full((1, 1, 5), 0.7, dtype=torch.float64) if equal else torch.rand(1, 1, 5, dtype=torch.float64)
    routing = EMRouting(5, 2, 3, iterations=iterations, final_lambda=2.0).double()
    with torch.no_grad():
        routing.beta_u.copy_(torch.tensor([0.3, -0.1]))
        routing.beta_a.copy_(torch.tensor([-0.2, 0.5]))
    out = routing(votes, act, None)
    mu, a_out, r = slow_em(votes[0, 0], act[0, 0].tolist(), [0.3, -0.1], [-0.2, 0.5], iterations, 2.0, 5e-4)
    torch.testing.assert_close(out.pose[0, 0], mu.double())
    torch.testing.assert_close(out.activation[0, 0], a_out.double())
    torch.testing.assert_close(out.coefficients[0, 0], r.double())


def test_lambda_schedule():
    assert inverse_temperatures(1e-2, 3) == pytest.approx([5e-4, 9.75e-4, 1.42625e-3])
    assert inverse_temperatures(2.0, 1) == pytest.approx([0.1])
    assert EMRouting(4, 2, 4, iterations=5).lambdas == pytest.approx(inverse_temperatures(1e-2, 5))
    assert EMRouting(4, 2, 4, cost="mean").final_lambda == 1.44  # default picked by cost scaling
    assert EMRouting(4, 2, 4, cost="standardise", final_lambda=3.0).lambdas[0] == pytest.approx(0.15)


def test_variance_floor_with_identical_votes():
    vote = torch.randn(4)
    votes = vote.expand(2, 3, 6, 2, 4).clone().requires_grad_()
    act = torch.rand(2, 3, 6)
    routing = EMRouting(6, 2, 4, iterations=3, final_lambda=1.0, min_var=5e-4)
    with torch.no_grad():
        routing.beta_u.fill_(0.1)
    out = routing(votes, act, None)
    assert torch.isfinite(out.pose).all() and torch.isfinite(out.activation).all()
    torch.testing.assert_close(out.pose, vote.expand(2, 3, 2, 4))
    # sigma^2 = min_var exactly, so the cost is known in closed form
    mass = (act * out.coefficients[..., 0]).sum(-1)
    cost = 4 * (0.1 + 0.5 * math.log(5e-4)) * mass
    expected = torch.sigmoid(inverse_temperatures(1.0, 3)[-1] * (0.0 - cost))
    torch.testing.assert_close(out.activation[..., 0], expected)
    (out.pose.sum() + out.activation.sum()).backward()
    assert torch.isfinite(votes.grad).all()


@pytest.mark.parametrize("iterations", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("normalise", ["parents", "receiving_parents"])
def test_em_no_nan_with_tiny_sigma(iterations, normalise, overlapping):
    act, geometry = overlapping
    n, length, i = act.shape
    centres = torch.tensor([[0.0] * 4, [5.0] * 4, [-5.0] * 4])  # three far-apart clusters
    which = torch.arange(i) % 3
    votes = (centres[which][None, None, :, None, :] + 1e-5 * torch.randn(n, length, i, 3, 4)).requires_grad_()
    routing = em(iterations=iterations, final_lambda=1.0, normalise=normalise)
    out = routing(votes, act, None, geometry)
    for tensor in out:
        assert torch.isfinite(tensor).all()
    (out.pose.square().sum() + out.activation.sum()).backward()
    assert torch.isfinite(votes.grad).all()


def test_em_cost_scalings():
    torch.manual_seed(2)
    votes, act = torch.randn(2, 3, 6, 4, 4), torch.rand(2, 3, 6)
    summed = EMRouting(6, 4, 4, cost="sum", final_lambda=0.5)(votes, act, None)
    mean = EMRouting(6, 4, 4, cost="mean", final_lambda=0.5 * 6)(votes, act, None)
    torch.testing.assert_close(summed.activation, mean.activation)  # mean = sum / I, lambda * I
    routing = EMRouting(6, 4, 4, cost="standardise", final_lambda=1.0)
    logit = torch.logit(routing(votes, act, None).activation.double()) / routing.lambdas[-1]
    torch.testing.assert_close(logit.mean(-1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(logit.std(-1, unbiased=False), torch.ones(2, 3, dtype=torch.float64), atol=1e-3, rtol=0)


# --- normalisation axes ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [em, vb])
@pytest.mark.parametrize("iterations", [1, 3])
def test_coefficients_normalised_over_parents(make, iterations, overlapping):
    act, geometry = overlapping
    routing = make(normalise="parents", iterations=iterations)
    assert routing.normalised_over == "parents"
    out = routing(torch.randn(*act.shape, 3, 4), act, None, geometry)
    assert (out.coefficients >= 0).all()
    torch.testing.assert_close(out.coefficients.sum(-1), torch.ones_like(act))
    if iterations == 1:  # the initial coefficients: uniform
        torch.testing.assert_close(out.coefficients, torch.full_like(out.coefficients, 1 / 3))


@pytest.mark.parametrize("make", [em, vb])
@pytest.mark.parametrize("iterations", [1, 3])
def test_coefficients_normalised_over_receiving_parents(make, iterations, overlapping):
    act, geometry = overlapping
    routing = make(normalise="receiving_parents", iterations=iterations)
    assert routing.normalised_over == "receiving_parents"
    out = routing(2 * torch.randn(*act.shape, 3, 4), act, None, geometry)
    count = geometry.child_sum(torch.ones_like(act))
    real = count > 0
    assert (count[real] > 1).any(), "the geometry must overlap"
    total = geometry.child_sum(out.coefficients.sum(-1))
    torch.testing.assert_close(total[real], torch.ones_like(total[real]))
    per_window = out.coefficients.sum(-1)
    torch.testing.assert_close(per_window[~real], torch.ones_like(per_window[~real]))  # padded: own window
    if iterations == 1:  # uniform over every receiving parent
        expected = (1 / (3 * count.clamp_min(1))).unsqueeze(-1).expand_as(out.coefficients)
        torch.testing.assert_close(out.coefficients, expected)
    else:  # routing moved them off uniform, and unevenly across windows
        assert per_window[real].std() > 1e-3


def grid_children(hw, kernel, stride, padding) -> torch.Tensor:
    """``[L, I]``: which child of a one-type grid sits in every window slot (-1 = padding)."""
    numbers = torch.arange(1.0, hw[0] * hw[1] + 1.0, dtype=torch.float64).view(1, 1, *hw)
    return windows(numbers, kernel, stride, padding).long().squeeze(0) - 1


def per_child_max(x, child):
    """``[N, L, I]``: the max of ``x`` over every slot holding the same child (a scatter, -inf in padded slots)."""
    real = child >= 0
    flat = child.clamp_min(0).flatten().expand(x.shape[0], -1)
    src = x.flatten(1).masked_fill(~real.flatten(), -math.inf)  # padded slots join no child
    best = torch.full((x.shape[0], int(child.max()) + 1), -math.inf, dtype=x.dtype)
    best = best.scatter_reduce(1, flat, src, "amax").gather(1, flat).view(x.shape)
    return best.masked_fill(~real, -math.inf)


@pytest.mark.parametrize("finder", ["bit search", "scatter-max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 5e14, 1e37])
def test_child_shift_is_the_exact_max_over_the_windows_of_each_child(dtype, scale, finder):
    """Bit for bit, at every magnitude, signed zeros and ties included; padded slots keep their own value,
    found by the bit search over ``child_sum`` or by the layers' geometry's scatter-max (``child_max``).

    At |x| ~ 5e14 float32 values are ~7e7 apart: a shift within exp range of the max must be the max.
    """
    child_max = window_geometry((5, 4), 3, 1, 1).child_max if finder == "scatter-max" else None
    geometry = fold_geometry((5, 4), 3, 1, 1)  # one type on a 5x4 grid, 3x3 windows, padding 1
    child = grid_children((5, 4), 3, 1, 1)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, *child.shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    x[1, 5, 0] = x[1, 6, 1]  # a tie between two slots of one child
    x[2] = -x[2].abs()  # only negative values, then signed zeros: -0.0 in every window's centre slot ...
    x[2, :, 4] = -0.0
    x[2, 0, 8] = 0.0  # ... and +0.0 in one other slot of child 5, which must win there
    count = geometry.child_sum(torch.ones_like(x))
    got = child_shift(x, geometry.child_sum, count, child_max)
    real = child >= 0
    assert torch.equal(got[:2], torch.where(real, per_child_max(x[:2], child), x[:2]))  # no zeros: equal is exact
    assert torch.equal(got[2][~real], x[2][~real]) and (got[2][real] == 0).all()
    assert torch.equal(torch.signbit(got[2][real]), child[real] != 5)


def test_the_layers_geometry_normalises_over_receiving_parents_without_the_bit_search():
    """ConvCaps' geometry brings a scatter-max (``child_max``): the normalisation then folds the windows
    twice (the child counts, the sums), not once more per bit of the float (34 times in float32)."""
    geometry = window_geometry((4, 4), 3, 1, 1)
    folds = []
    counted = Geometry(child_sum=lambda x: folds.append(1) or geometry.child_sum(x), child_max=geometry.child_max)
    logits = torch.randn(2, 16, 4, 18, generator=torch.Generator().manual_seed(0))  # 2 types x 3x3 windows
    norm = Normaliser("receiving_parents", counted, torch.ones(2, 16, 18))
    r = norm(logits)
    assert len(folds) == 2
    slow = Normaliser("receiving_parents", Geometry(child_sum=geometry.child_sum), torch.ones(2, 16, 18))
    assert torch.equal(r, slow(logits))


@pytest.mark.parametrize(
    "geometry",
    [fold_geometry((3, 3), 3, 1, 1), window_geometry((3, 3), 3, 1, 1), Geometry(child_sum=lambda x: x)],
    ids=["bit search", "scatter-max", "identity"],
)
def test_receiving_normalisation_at_logits_beyond_float32_spacing(geometry):
    """Logits from -2.5e13 to -2.7e14, as VB's E-step gives at pose scale 1e6 (issue 12): fp32 steps there
    are 2e6-3e7 nats, and a shift even one step off the max puts exp out of range (NaN, or sums far from 1)."""
    g = torch.Generator().manual_seed(0)
    logits = -(2.5e13 + 2.4e14 * torch.rand(2, 9, 4, 9, generator=g))  # [N, L, J, I]
    count = geometry.child_sum(torch.ones(2, 9, 9))
    got = child_log_softmax(logits, geometry.child_sum, count, geometry.child_max).exp()
    real = count > 0.5
    assert torch.isfinite(got).all()
    torch.testing.assert_close(geometry.child_sum(got.sum(2))[real], torch.ones(int(real.sum())))


def test_receiving_normalisation_in_log_space_with_extreme_logits():
    geometry = fold_geometry((4, 4), 3, 1, 1)  # one type on a 4x4 grid, 3x3 windows, padding 1
    torch.manual_seed(3)
    spread = torch.randn(2, 16, 1, 9) * 1e6  # windows of one child differ by millions of nats
    logits = (-7.5e8 + spread + 3 * torch.randn(2, 16, 4, 9)).float()  # near -1e9: fp32 ulp 64
    logits[0, :, :2] = logits[0, :, 2:]  # exact ties between parents survive (a ln 2 next to -7.5e8)
    count = geometry.child_sum(torch.ones(2, 16, 9))
    got = child_log_softmax(logits, geometry.child_sum, count).exp()
    # reference in float64 from the same fp32 values: which grid child sits in every slot (-1 = padding),
    # an exact per-child max, then the plain formula
    child = grid_children((4, 4), 3, 1, 1)  # [16, 9]
    real = child >= 0
    x64 = logits.double()
    shift = per_child_max(x64.amax(2), child).unsqueeze(2)
    total = geometry.child_sum(torch.exp(x64 - shift).sum(2)).unsqueeze(2)
    exact = torch.exp(x64 - shift) / total
    assert torch.isfinite(got).all()
    by_parent = (got.double().transpose(1, 2), exact.transpose(1, 2))  # [N, J, L, I]: mask the (L, I) slots
    torch.testing.assert_close(by_parent[0][..., real], by_parent[1][..., real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(geometry.child_sum(got.sum(2))[:, real], torch.ones(2, int(real.sum())))
    torch.testing.assert_close(got[0, :, :2], got[0, :, 2:])
    torch.testing.assert_close(got.sum(2)[:, ~real], torch.ones(2, int((~real).sum())))  # padded: own window


# --- VB ---------------------------------------------------------------------------------------------


def test_vb_posterior_respects_priors():
    torch.manual_seed(4)
    routing = VBRouting(6, 3, 4, iterations=3)
    votes, act = torch.randn(2, 5, 6, 3, 4), torch.rand(2, 5, 6)
    act[0] = 0.0  # a sample with nothing active: the posterior is the prior
    routing(votes, act, None)
    post = routing.last_posterior
    assert (post["alpha"] >= 1.0).all() and (post["kappa"] >= 1.0).all() and (post["nu"] >= 5.0).all()
    assert (post["alpha"][1] > 1.0).all() and (post["nu"][1] > 5.0).all()
    assert torch.equal(post["alpha"][0], torch.ones(5, 3)) and torch.equal(post["nu"][0], torch.full((5, 3), 5.0))
    assert torch.equal(post["m"][0], torch.zeros(5, 3, 4)) and torch.equal(post["W"][0], torch.ones(5, 3, 4))
    assert (post["W"] > 0).all() and (post["W"] <= 1.0).all()  # Psi0 = I bounds the precision scale


def test_vb_first_update_matches_hand_formulas():
    torch.manual_seed(5)
    votes, act = torch.randn(1, 2, 6, 3, 4, dtype=torch.float64), torch.rand(1, 2, 6, dtype=torch.float64)
    routing = VBRouting(6, 3, 4, iterations=1, activation_bn=False, pose_bn=False, m0=0.5, psi0=2.0).double()
    out = routing(votes, act, None)
    rw = (act / 3).unsqueeze(-1).expand(1, 2, 6, 3)  # R = 1/J, weighted by activations
    n_j = rw.sum(2)
    xbar = (rw.unsqueeze(-1) * votes).sum(2) / n_j.unsqueeze(-1)
    scatter = (rw.unsqueeze(-1) * (votes - xbar.unsqueeze(2)) ** 2).sum(2)
    kappa = 1 + n_j
    post = routing.last_posterior
    torch.testing.assert_close(post["alpha"], 1 + n_j)
    torch.testing.assert_close(post["nu"], 5 + n_j)
    torch.testing.assert_close(post["m"], (0.5 + n_j.unsqueeze(-1) * xbar) / kappa.unsqueeze(-1))
    inv_w = 0.5 + scatter + (n_j / kappa).unsqueeze(-1) * (xbar - 0.5) ** 2
    torch.testing.assert_close(post["W"], 1 / inv_w)
    torch.testing.assert_close(out.pose, post["m"])
    torch.testing.assert_close(out.coefficients, torch.full_like(out.coefficients, 1 / 3))


@pytest.mark.parametrize("log_det", ["diagonal", "wishart"])
def test_vb_activation_formula(log_det):
    torch.manual_seed(6)
    routing = VBRouting(6, 3, 4, iterations=2, activation_bn=False, log_det=log_det).double()
    with torch.no_grad():
        routing.beta_a.copy_(torch.tensor([0.5, -1.0, 2.0]))
        routing.beta_u.copy_(torch.tensor([0.1, 0.2, -0.3]))
    votes, act = torch.randn(2, 3, 6, 3, 4, dtype=torch.float64), torch.rand(2, 3, 6, dtype=torch.float64)
    out = routing(votes, act, None)
    p = routing.last_posterior
    nu = p["nu"]
    if log_det == "diagonal":
        digammas = 4 * torch.digamma(nu / 2)
    else:
        digammas = sum(torch.digamma((nu - k) / 2) for k in range(4))
    e_log_det = digammas + 4 * math.log(2) + torch.log(p["W"]).sum(-1)
    entropy = 2 * math.log(2 * math.pi * math.e) - 0.5 * e_log_det
    pi = torch.exp(torch.digamma(p["alpha"]) - torch.digamma(p["alpha"].sum(-1, keepdim=True)))
    expected = torch.sigmoid(routing.beta_a - (pi * entropy + routing.beta_u))
    torch.testing.assert_close(out.activation, expected.detach())


def test_vb_batchnorm_switches():
    torch.manual_seed(7)
    votes, act = torch.randn(4, 5, 6, 3, 4), torch.rand(4, 5, 6)
    plain = VBRouting(6, 3, 4, activation_bn=False, pose_bn=False)(votes, act, None)
    normed_routing = VBRouting(6, 3, 4)
    normed = normed_routing(votes, act, None)
    assert not torch.allclose(plain.activation, normed.activation, atol=1e-3)
    logit = torch.logit(normed.activation.double())  # the BN makes every type mean 0, variance 1
    torch.testing.assert_close(logit.mean((0, 1)), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(logit.var((0, 1), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0)
    pose = normed.pose.double()
    torch.testing.assert_close(pose.mean((0, 1, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # the pose BN is the only difference in poses: un-normalise and compare
    raw = plain.pose.double()
    rescaled = (raw - raw.mean((0, 1, 3), keepdim=True)) / (
        raw.var((0, 1, 3), unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    torch.testing.assert_close(pose, rescaled, atol=1e-4, rtol=1e-4)
    # evaluation uses the running statistics, not the batch's
    normed_routing.eval()
    assert not torch.allclose(normed_routing(votes, act, None).activation, normed.activation, atol=1e-3)
    assert VBRouting.pose_norm is False and EMRouting.pose_norm is True


# --- precision, gradients, options ------------------------------------------------------------------


@pytest.mark.parametrize("make", [em, vb])
def test_fp32_statistics_under_bf16_autocast(make, overlapping):
    act, geometry = overlapping
    torch.manual_seed(8)
    votes = torch.randn(*act.shape, 3, 4).bfloat16()
    routing = make(final_lambda=1.0) if make is em else make()
    reference = routing(votes.float(), act.bfloat16().float(), None, geometry)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = routing(votes, act.bfloat16(), None, geometry)
    for got, want in zip(out, reference):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: em(final_lambda=1.0),
        lambda: em(normalise="receiving_parents", cost="standardise", final_lambda=2.0),
        lambda: vb(),
        lambda: vb(normalise="parents", activation_bn=False, log_det="wishart"),
    ],
    ids=["em", "em-receiving-standardise", "vb", "vb-parents-nobn-wishart"],
)
def test_gradcheck_float64(make):
    torch.manual_seed(9)
    # 4 overlapping 2x2 windows over a 3x3 grid of 2 types, no padding: with padding, a corner
    # window holds 2 live children whose variance sits at the floor, and a finite difference
    # of 1e-6 is then too coarse for the (correct) analytical gradient
    geometry = fold_geometry((3, 3), 2, 1, 0)
    act = windows(torch.rand(1, 2, 3, 3, dtype=torch.float64), 2, 1, 0).requires_grad_()
    votes = torch.randn(*act.shape, 3, 4, dtype=torch.float64, requires_grad=True)
    routing = make().double()

    def run(v, a):
        return tuple(routing(v, a, None, geometry))

    assert gradcheck(run, (votes, act), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("make", [em, vb])
def test_all_zero_activations_give_finite_outputs_and_gradients(make, overlapping):
    act, geometry = overlapping
    votes = torch.randn(*act.shape, 3, 4, requires_grad=True)
    zeros = torch.zeros_like(act, requires_grad=True)
    out = make(normalise="receiving_parents")(votes, zeros, None, geometry)
    (out.pose.square().sum() + out.activation.sum() + out.coefficients.sum()).backward()
    for tensor in (*out, votes.grad, zeros.grad):
        assert torch.isfinite(tensor).all()


def test_registry_and_class_attributes():
    assert ROUTINGS.get("em") is EMRouting and ROUTINGS.get("vb") is VBRouting
    assert EMRouting.loss == "spread" and VBRouting.loss == "cross_entropy"
    assert EMRouting.normalised_over == "parents" and VBRouting.normalised_over == "receiving_parents"
    assert EMRouting(4, 2, 4, normalise="receiving_parents").normalised_over == "receiving_parents"
    assert EMRouting.normalised_over == "parents"  # the instance choice does not leak into the class


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (EMRouting, {"final_lamda": 1.0}, "did you mean 'final_lambda'"),
        (EMRouting, {"normalise": "children"}, "routing_options.normalise: expected one of"),
        (EMRouting, {"min_var": 0}, "routing_options.min_var: expected a number > 0"),
        (EMRouting, {"cost": "max"}, "routing_options.cost: expected one of"),
        (VBRouting, {"activation_bn": "yes"}, "routing_options.activation_bn: expected true or false"),
        (VBRouting, {"nu0": 2, "log_det": "wishart"}, "option nu0 must be a number > 3"),
        (VBRouting, {"kappa0": "1"}, "routing_options.kappa0: expected a number > 0"),
        (VBRouting, {"iterations": 0}, "option iterations must be an integer >= 1"),
    ],
)
def test_bad_options_raise_one_line_user_errors(cls, options, message):
    with pytest.raises(UserError, match=message) as err:
        cls(4, 2, 4, **options)
    assert "\n" not in str(err.value) and "model." in str(err.value)  # one line naming the spec key
