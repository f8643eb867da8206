"""EM routing (Hinton, Sabour and Frosst 2018, "Matrix capsules with EM routing").

Each parent type ``j`` at one output position is a Gaussian cluster with a diagonal
covariance; children are the data points, weighted by their activation. With ``R``
the routing coefficients, ``a_i`` the child activations and ``v_ij`` the votes:

M-step (iteration ``t``)::

    R'_ij    = R_ij * a_i                          # activations weight every statistic
    r_j      = sum_i R'_ij                         # mass of parent j
    mu_j     = sum_i R'_ij v_ij / r_j
    sigma2_j = max(sum_i R'_ij (v_ij - mu_j)^2 / r_j, 0) + min_var      # variance floor
    cost_j   = sum_h (beta_u_j + ln sigma_jh) * scale(r_j)
    a_j      = sigmoid(lambda_t * (beta_a_j - cost_j))
    lambda_t = final_lambda * (1 - 0.95 ** (t + 1))                       # OpenReview schedule

E-step (between M-steps), in log space::

    ln p_ij = ln a_j - 1/2 sum_h ln(2 pi sigma2_jh) - 1/2 sum_h (v_ijh - mu_jh)^2 / sigma2_jh
    R_ij    = exp(ln p_ij - logsumexp over the normalisation axis)

``R`` starts uniform over the normalisation axis (``1/J`` over parent types, or
``1/(J * windows holding the child)`` over receiving parents).

Choices (each an option, documented because references differ):

- ``cost="sum"`` (default): ``scale(r_j) = r_j``, exactly Hinton's formula as SR-CapsNet
  (the implementation the paper's depth protocol follows) computes it, with its
  ``final_lambda=1e-2``. With the schedule the temperature at the last of 3 iterations is
  ``0.0014``, so a 3x3x16 window (144 children, mean activation 0.5, votes of spread 0.2)
  gives ``|lambda * cost| ~ 0.2``: parent activations start at 0.52-0.62 (measured with
  SR-CapsNet's weight initialisation), far from saturation.
  Raw ``r_j`` grows with the window size, so ``cost="mean"`` divides it by the number of
  children ``I`` (a mass fraction in [0, 1]); its default ``final_lambda`` is 1.44
  (= 1e-2 * 144), which gives the same activations as "sum" on a 3x3x16 window and the
  same scale on every window size. ``cost="standardise"`` is the Google/IBM
  normalisation ``a_j = sigmoid(lambda_t (beta_a_j + (mean_J(cost) - cost_j) / std_J(cost)))``
  with their ``final_lambda=1e-2``: at initialisation it gives 0.5 +- 0.001 everywhere
  (raise ``final_lambda`` to ~7 to reach ``lambda ~ 1`` at the last of 3 iterations). A raw
  ``r_j`` with ``final_lambda ~ 1`` (some ports) saturates every activation at 1.
- ``normalise="parents"`` (default; SR-CapsNet, yl-1993): ``R`` sums to 1 over the ``J``
  parent types at one position. ``normalise="receiving_parents"`` (Google, IBM, VB):
  ``R`` sums to 1 over every parent in every window that receives the child, through
  ``geometry.child_sum``.
- Deviations from the references, all deliberate: activations weight the statistics and
  ``R'`` is NOT renormalised over parents (yl-1993 does, which cancels ``a_i``; here a
  child with ``a_i = 0`` has no influence at all); ``R`` starts at ``1/J`` (SR-CapsNet
  starts at 1, which makes the first ``r_j`` J times larger); the E-step uses
  ``ln a_j = logsigmoid(...)`` and a log-sum-exp, never ``log(0)``; the variance has a
  floor (Google's ``min_var = 5e-4``, added rather than max-ed so the gradient never
  stops), so identical votes give no NaN.

All statistics run in float32 (float64 stays float64) with autocast off; outputs come
back in the input dtype. The votes are read in batched matrix products
(:func:`prepare_votes`, :func:`moments`, :func:`squared_distance`), shared with VB routing.

Example::

    >>> import torch
    >>> r = EMRouting(children=9, parents=4, pose_dim=16)
    >>> out = r(torch.randn(2, 5, 9, 4, 16), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 16))
    >>> out.pose.shape, out.activation.shape, out.coefficients.shape
    (torch.Size([2, 5, 4, 16]), torch.Size([2, 5, 4]), torch.Size([2, 5, 9, 4]))
    >>> bool(torch.allclose(out.coefficients.sum(-1), torch.ones(2, 5, 9)))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from capsbench.capsules.routing import declared_options
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput
from capsbench.errors import UserError
from capsbench.options import Option, check_options

EPS = 1e-8  # guards divisions by a parent's mass; far below any real mass in fp32
LOG_2PI = math.log(2 * math.pi)


def inverse_temperatures(final_lambda: float, iterations: int) -> list[float]:
    """The OpenReview schedule ``lambda_t = final_lambda * (1 - 0.95 ** (t + 1))``, t = 0..iterations-1.

    >>> [round(x, 6) for x in inverse_temperatures(1e-2, 3)]
    [0.0005, 0.000975, 0.001426]
    """
    return [final_lambda * (1.0 - 0.95 ** (t + 1)) for t in range(iterations)]


# ---------------------------------------------------------------------------------------------
# Helpers shared with VB routing: option checks, the votes prepared once per forward, the two
# batched contractions over children, and the normalisation of the routing coefficients.
# Internal layout of coefficients: [N, L, J, I] (batch of N*L*J rows over I children).
# ---------------------------------------------------------------------------------------------


def resolve_options(method: str, options: dict[str, Any], declared: dict[str, Option]) -> dict[str, Any]:
    """The declared defaults updated with ``options``, each checked against its declaration.

    Spec loading has checked the same declaration already; this guards direct construction.
    """
    return check_options(options, declared, "model.routing_options", f"routing '{method}'")


def require(ok: bool, method: str, key: str, expected: str, value: Any, where: str | None = None) -> None:
    """Raise a one-line UserError for a bad option value; ``where`` is its spec key."""
    if not ok:
        where = where or f"model.routing_options.{key}"
        raise UserError(f"routing '{method}': option {key} must be {expected}, got {value!r}; fix {where}")


def is_number(value: Any, low: float = -math.inf, high: float = math.inf, strict: bool = True) -> bool:
    """True for an int or float (not a bool) in ``(low, high)`` (``[low, high]`` with strict=False)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return low < value < high if strict else low <= value <= high


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Routing statistics run in float32 at least (bf16/fp16 -> fp32, fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def prepare_votes(votes: torch.Tensor, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred votes and their squares side by side, ``[N*L*J, I, 2D]``, and the centre ``[N, L, J, D]``.

    The centre is the activation-weighted mean vote of each parent, so later variances
    are computed from sums of squares without catastrophic cancellation when votes are
    large compared with their spread (coordinate addition, 1e4-sized votes). Every
    routing output is invariant to the centre, so it is detached (its gradient is
    exactly zero) and a child with activation 0 does not move it.
    """
    n, length, i, j, d = votes.shape
    with torch.no_grad():
        mass = activation.sum(-1).reshape(n * length, 1, 1)
        weighted = torch.bmm(activation.reshape(n * length, 1, i), votes.reshape(n * length, i, j * d))
        centre = (weighted / (mass + EPS)).view(n, length, j, d)
    return _CentredVotes.apply(votes, centre), centre


class _CentredVotes(torch.autograd.Function):
    """``[v - c, (v - c)^2]`` in the layout ``[N, L, J, I, 2D]`` (returned flat, ``[N*L*J, I, 2D]``).

    A custom Function so the transpose, the subtraction and the square write the one
    tensor the contractions read (no intermediate votes-sized copies) and the backward
    is one fused ``g1 + 2 (v - c) g2``. ``centre`` gets no gradient (see prepare_votes).
    Returned in the 3-D shape the contractions use, so their gradients reach it without
    view nodes in between and autograd can sum them in place.
    """

    @staticmethod
    def forward(ctx, votes, centre):
        n, length, i, j, d = votes.shape
        if torch.compiler.is_compiling():  # dynamo refuses strided out=; inductor fuses this into one pass
            centred = votes.transpose(2, 3) - centre.unsqueeze(3)
            x = torch.cat([centred, centred.square()], dim=-1)
        else:  # eager: write both halves of the one buffer, no temporaries
            x = votes.new_empty(n, length, j, i, 2 * d)
            torch.sub(votes.transpose(2, 3), centre.unsqueeze(3), out=x[..., :d])
            torch.square(x[..., :d], out=x[..., d:])
        ctx.save_for_backward(x)
        return x.view(n * length * j, i, 2 * d)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        d = x.shape[-1] // 2
        grad = grad.view(x.shape)
        grad_votes = torch.addcmul(grad[..., :d], x[..., :d], grad[..., d:], value=2.0)
        return grad_votes.transpose(2, 3), None


class _SumOverChildren(torch.autograd.Function):
    """``out[b, k] = sum_i w[b, i] x[b, i, k]``: one batched matrix product.

    A custom backward because autograd's ``bmm`` backward makes the gradient of ``x``
    with a K=1 matrix product (an outer product), about 10x slower on CPU than the
    broadcast multiply used here. The backward is built from differentiable ops.
    """

    @staticmethod
    def forward(ctx, w, x):
        ctx.save_for_backward(w, x)
        return torch.bmm(w.unsqueeze(1), x).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        w, x = ctx.saved_tensors
        grad_w = torch.bmm(grad.unsqueeze(1), x.transpose(1, 2)).squeeze(1) if ctx.needs_input_grad[0] else None
        grad_x = w.unsqueeze(2) * grad.unsqueeze(1) if ctx.needs_input_grad[1] else None
        return grad_w, grad_x


class _DotPerChild(torch.autograd.Function):
    """``out[b, i] = sum_k c[b, k] x[b, i, k]``: one batched matrix product (backward as above)."""

    @staticmethod
    def forward(ctx, c, x):
        ctx.save_for_backward(c, x)
        return torch.bmm(c.unsqueeze(1), x.transpose(1, 2)).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        c, x = ctx.saved_tensors
        grad_c = torch.bmm(grad.unsqueeze(1), x).squeeze(1) if ctx.needs_input_grad[0] else None
        grad_x = grad.unsqueeze(2) * c.unsqueeze(1) if ctx.needs_input_grad[1] else None
        return grad_c, grad_x


def moments(weights: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sums over children: ``sum_i w``, ``sum_i w v`` and ``sum_i w v^2``.

    ``weights`` ``[N, L, J, I]``, ``x`` from :func:`prepare_votes`; returns ``[N, L, J]``,
    ``[N, L, J, D]``, ``[N, L, J, D]``. One batched matrix product reads the votes once.
    """
    d2 = x.shape[-1]
    sums = _SumOverChildren.apply(weights.reshape(x.shape[:2]), x).view(*weights.shape[:3], d2)
    return weights.sum(-1), sums[..., : d2 // 2], sums[..., d2 // 2 :]


def squared_distance(x: torch.Tensor, precision: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``sum_d precision_d (v_d - mean_d)^2`` for every child and parent, ``[N, L, J, I]``.

    Expanded as ``sum p v^2 - 2 sum p m v + sum p m^2`` so one batched matrix product
    reads the (centred) votes once and no ``[N, L, I, J, D]`` temporary is made.
    """
    coef = torch.cat([-2 * precision * mean, precision], dim=-1)  # pairs with [v, v^2]
    linear = _DotPerChild.apply(coef.view(-1, x.shape[-1]), x).view(*mean.shape[:3], x.shape[1])
    const = (precision * mean.square()).sum(-1, keepdim=True)
    return (linear + const).clamp_min(0)  # rounding can make a zero distance slightly negative


_SHIFT_STEPS = 8  # enough to bring logits spread over ~1e13 nats back into fp32 range


def child_shift(x: torch.Tensor, child_sum: Callable, count: torch.Tensor) -> torch.Tensor:
    """A shift ``[N, L, I]`` close above the max of ``x`` over every slot holding the same child.

    ``child_sum`` can only add, so the usual max is out of reach. Instead the shift is
    tightened in a fixed number of steps (no data-dependent control flow): a
    temperature-``T`` log-sum-exp is an upper bound on the max within ``T ln(n)``
    (``n`` = most windows per child), and each step lowers ``T`` so the largest term
    stays above ``exp(-60)``. Every slot of one child gets the same value; a constant for
    autograd (results never depend on it).
    """
    real = count > 0.5
    with torch.no_grad():
        xs = x.detach()
        hi, lo = xs.amax(), xs.amin()
        log_n = torch.log(count.amax().clamp_min(1.0))
        temp = ((hi - lo) / 60).clamp_min(1.0)
        shift = hi.expand_as(xs)
        tiny = torch.finfo(xs.dtype).tiny
        for _ in range(_SHIFT_STEPS):
            total = child_sum(torch.exp((xs - shift) / temp)).clamp_min(tiny)
            shift = torch.where(real, shift + temp * torch.log(total), shift)
            temp = (temp * log_n / 60).clamp_min(1.0)
    return shift


def child_log_softmax(logits: torch.Tensor, child_sum: Callable, count: torch.Tensor) -> torch.Tensor:
    """``log R`` ``[N, L, J, I]`` with ``R`` normalised over every parent receiving each child.

    Log-space throughout: the logits are first taken relative to their window's max
    (``y <= 0``), the windows of a child are combined through :func:`child_shift`, and
    the large parts (window max minus child shift) are subtracted before anything small
    is added, so a ``ln 2`` survives next to logits of -1e9. Slots ``child_sum`` maps to 0
    (padding, ``count == 0``) are normalised over their own window.
    """
    real = count > 0.5
    peak = logits.detach().amax(dim=2)  # [N, L, I] window max
    y = logits - peak.unsqueeze(2)
    per_window = torch.logsumexp(y, dim=2)  # in [0, ln J]
    gap = peak - child_shift(peak, child_sum, count)  # <= ~0, same child -> same shift
    # the clamp only matters past fp32's reach (|logits| > ~1e9, where the shift rounds)
    total = torch.log(child_sum(torch.exp((gap + per_window).clamp_max(80.0))))
    log_norm = torch.where(real, total - gap, per_window)  # log sum over receiving parents, minus peak
    return y - log_norm.unsqueeze(2)


class Normaliser:
    """Initial routing coefficients and the E-step normalisation, over one declared axis."""

    def __init__(self, mode: str, geometry: Geometry, like: torch.Tensor):
        self.mode = mode
        self.child_sum = geometry.child_sum
        # like: [N, L, I]; count = windows receiving each child (0 in padded slots)
        self.count = self.child_sum(torch.ones_like(like)) if mode == "receiving_parents" else None

    def initial(self, parents: int, like: torch.Tensor) -> torch.Tensor:
        """Uniform coefficients ``[N, L, J, I]``: ``1/J``, or ``1/(J * windows)`` over receiving parents."""
        n, length, i = like.shape
        if self.mode == "parents":
            return like.new_full((n, length, parents, i), 1.0 / parents)
        share = 1.0 / (parents * self.count.clamp_min(1.0))  # a padded slot: 1/J in its own window
        return share.unsqueeze(2).expand(n, length, parents, i)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Coefficients from log-weights ``[N, L, J, I]``, normalised over the declared axis."""
        if self.mode == "parents":
            return torch.softmax(logits, dim=2)
        return torch.exp(child_log_softmax(logits, self.child_sum, self.count))


def check_inputs(votes: torch.Tensor, activation: torch.Tensor, parents: int, pose_dim: int) -> None:
    """ValueError when the tensors do not match the routing's shape contract."""
    if votes.dim() != 5 or activation.shape != votes.shape[:3] or votes.shape[3:] != (parents, pose_dim):
        raise ValueError(
            f"routing expects votes [N, L, I, {parents}, {pose_dim}] and activation [N, L, I], "
            f"got {tuple(votes.shape)} and {tuple(activation.shape)}"
        )


# ---------------------------------------------------------------------------------------------


class EMRouting(Routing):
    """EM routing; see the module docstring for the formulas and the options.

    Options: ``final_lambda`` (None: 1e-2 for cost "sum" and "standardise", 1.44 for
    "mean"), ``min_var`` (5e-4), ``normalise`` ("parents" or "receiving_parents"),
    ``cost`` ("sum", "mean" or "standardise").
    """

    loss = "spread"
    # vote weight init: a capsbench choice (the references differ: yl-1993 std 1, Google 0.3 conv /
    # 0.01 class); measured 95% vs 84% test accuracy with 1/sqrt(fan_in) on digits after 3 epochs
    weight_std = 0.05
    pose_norm = True  # SR-CapsNet puts a BatchNorm on the poses after every stacked EM layer
    normalised_over = "parents"
    vote_transform = "matrix"
    class_caps = "shared"  # Hinton et al., Google, yl-1993: shared weights + coordinate addition
    primary_activation = "sigmoid"

    OPTIONS = declared_options.EM
    FINAL_LAMBDA = {"sum": 1e-2, "mean": 1.44, "standardise": 1e-2}  # final_lambda=None picks by cost

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 3,
        in_pose_dim: int | None = None,
        **options: Any,
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        opts = resolve_options("em", options, self.OPTIONS)
        require(
            isinstance(iterations, int) and iterations >= 1,
            "em",
            "iterations",
            "an integer >= 1",
            iterations,
            "model.iterations",
        )
        if opts["final_lambda"] is None:
            opts["final_lambda"] = self.FINAL_LAMBDA[opts["cost"]]
        self.final_lambda = float(opts["final_lambda"])
        self.min_var = float(opts["min_var"])
        self.cost = opts["cost"]
        self.normalised_over = opts["normalise"]  # instance attribute shadows the class default
        self.lambdas = inverse_temperatures(self.final_lambda, iterations)
        self.beta_u = nn.Parameter(torch.zeros(parents))
        self.beta_a = nn.Parameter(torch.zeros(parents))

    def extra_repr(self) -> str:
        return (
            f"parents={self.parents}, pose_dim={self.pose_dim}, iterations={self.iterations}, "
            f"final_lambda={self.final_lambda}, min_var={self.min_var}, cost={self.cost!r}, "
            f"normalise={self.normalised_over!r}"
        )

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor | None = None,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        check_inputs(votes, activation, self.parents, self.pose_dim)
        out_dtype, dtype = votes.dtype, compute_dtype(votes.dtype)
        with torch.autocast(device_type=votes.device.type, enabled=False):
            v, a = votes.to(dtype), activation.to(dtype)
            x, centre = prepare_votes(v, a)
            norm = Normaliser(self.normalised_over, geometry, a)
            r = norm.initial(self.parents, a)  # [N, L, J, I]
            a_child = a.unsqueeze(2)  # [N, L, 1, I]
            beta_u, beta_a = self.beta_u.to(dtype), self.beta_a.to(dtype)
            for t, lam in enumerate(self.lambdas):
                mean, var, logit = self._m_step(r * a_child, x, beta_u, beta_a, lam)
                if t < self.iterations - 1:
                    r = norm(self._log_likelihood(x, mean, var) + F.logsigmoid(logit).unsqueeze(-1))
            new_pose = mean + centre
            new_act = torch.sigmoid(logit)
        return RoutingOutput(new_pose.to(out_dtype), new_act.to(out_dtype), r.transpose(2, 3).to(out_dtype))

    def _m_step(self, weights, x, beta_u, beta_a, lam):
        mass, s1, s2 = moments(weights, x)  # weights = R * a_i, NOT renormalised over parents
        denom = (mass + EPS).unsqueeze(-1)
        mean = s1 / denom  # relative to the centre
        var = (s2 / denom - mean.square()).clamp_min(0) + self.min_var
        cost = (self.pose_dim * beta_u + 0.5 * torch.log(var).sum(-1)) * mass  # sum_h (beta_u + ln sigma_h) r_j
        if self.cost == "mean":
            cost = cost / x.shape[1]  # the number of children per window
        if self.cost == "standardise":
            centred = cost.mean(-1, keepdim=True) - cost
            std = torch.sqrt(centred.square().mean(-1, keepdim=True) + 1e-12)
            return mean, var, lam * (beta_a + centred / std)
        return mean, var, lam * (beta_a - cost)

    def _log_likelihood(self, x, mean, var):
        """``ln N(v_i | mu_j, sigma_j)`` for every child and parent, ``[N, L, J, I]``."""
        log_norm = -0.5 * (LOG_2PI * self.pose_dim + torch.log(var).sum(-1))
        return log_norm.unsqueeze(-1) - 0.5 * squared_distance(x, 1.0 / var, mean)
