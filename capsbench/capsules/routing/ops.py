"""Routing maths shared by the routing methods; each method module holds only its method.

- Option helpers (:func:`resolve_options`, :func:`require`, :func:`is_number`) and the
  compute dtype of routing statistics.
- Mixture statistics over children, shared by EM and VB: the votes prepared once per
  forward (:func:`prepare_votes`), the two batched contractions over children
  (:func:`moments`, :func:`squared_distance`), and the normalisation of the routing
  coefficients over parent types or over every receiving parent (:class:`Normaliser`,
  :func:`child_log_softmax`).
- Vector-capsule helpers shared by dynamic and self-routing (and the primary capsules):
  :func:`squash`, :func:`squash_with_length` (the length in closed form), and the two
  contractions :func:`weighted_votes`, :func:`agreement`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from capsbench.capsules.routing.base import Geometry
from capsbench.errors import UserError
from capsbench.options import Option, check_options

NORMALISATIONS = ("parents", "receiving_parents")
EPS = 1e-8  # guards divisions by a parent's mass; far below any real mass in fp32
LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------
# Option checks, the votes prepared once per forward, the two
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
    if not isinstance(x, torch.Tensor):  # lazy votes (routing/fused.py): computed a block at a time
        return x.moments(weights)
    d2 = x.shape[-1]
    sums = _SumOverChildren.apply(weights.reshape(x.shape[:2]), x).view(*weights.shape[:3], d2)
    return weights.sum(-1), sums[..., : d2 // 2], sums[..., d2 // 2 :]


def squared_distance(x: torch.Tensor, precision: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``sum_d precision_d (v_d - mean_d)^2`` for every child and parent, ``[N, L, J, I]``.

    Expanded as ``sum p v^2 - 2 sum p m v + sum p m^2`` so one batched matrix product
    reads the (centred) votes once and no ``[N, L, I, J, D]`` temporary is made.
    """
    coef = torch.cat([-2 * precision * mean, precision], dim=-1)  # pairs with [v, v^2]
    if isinstance(x, torch.Tensor):
        linear = _DotPerChild.apply(coef.view(-1, x.shape[-1]), x).view(*mean.shape[:3], x.shape[1])
    else:  # lazy votes (routing/fused.py): computed a block at a time
        linear = x.dot_per_child(coef)
    const = (precision * mean.square()).sum(-1, keepdim=True)
    return (linear + const).clamp_min(0)  # rounding can make a zero distance slightly negative


# child_shift reads float bits as integers of the same width (routing statistics are fp32 or fp64)
_KEY_DTYPES = {torch.float32: torch.int32, torch.float64: torch.int64}


def _order_key(bits: torch.Tensor) -> torch.Tensor:
    """Float bits (as integers) -> integers in the order of the floats; its own inverse.

    Non-negative floats already sort by their bits; a negative float's other bits grow with
    its magnitude, so they are flipped (``-0.0`` lands just below ``0.0``).
    """
    return torch.where(bits < 0, bits ^ torch.iinfo(bits.dtype).max, bits)


def child_shift(
    x: torch.Tensor, child_sum: Callable, count: torch.Tensor, child_max: Callable | None = None
) -> torch.Tensor:
    """The exact max ``[N, L, I]`` of ``x`` over every slot holding the same child (``x`` in padded slots).

    ``child_max`` (``Geometry.child_max``, a scatter-max over the child grid) finds it in one pass
    where the geometry offers one, on the same order-preserving integers (so signed zeros and ties
    come out as below, bit for bit); otherwise, as follows.

    ``child_sum`` can only add, so the max is found bit by bit on the order-preserving
    integer image of the float bits (:func:`_order_key`), highest bit first: each step asks,
    with one ``child_sum`` of indicators, whether any slot of the child reaches the
    candidate with the next bit set. The number of steps is the float's width (32 in
    float32), so there is no data-dependent control flow, and every slot of one child gets
    the same totals, so the same decisions and the same value. A constant for autograd
    (results never depend on it). Only an exact max will do at large magnitudes: at
    |x| ~ 5e14 float32 values are ~7e7 apart, far wider than the ~87 nats exp spans, so a
    shift computed by rounding arithmetic (a log-sum-exp) can miss every slot's range.
    """

    def any_reaches(candidate: torch.Tensor) -> torch.Tensor:
        return child_sum((key >= candidate).to(x.dtype)) > 0.5

    with torch.no_grad():
        int_dtype = _KEY_DTYPES[x.dtype]
        if child_max is not None:
            best = _order_key(child_max(_order_key(x.detach().view(int_dtype))))
            return torch.where(count > 0.5, best.view(x.dtype), x.detach())
        key = _order_key(x.detach().view(int_dtype))
        lowest = torch.full_like(key, torch.iinfo(int_dtype).min)
        zero = torch.zeros_like(key)
        # the sign bit first (in key order, the smallest key with it set is 0), then the others
        best = torch.where(any_reaches(zero), zero, lowest)
        for bit in reversed(range(torch.iinfo(int_dtype).bits - 1)):
            candidate = best | (1 << bit)
            best = torch.where(any_reaches(candidate), candidate, best)
        return torch.where(count > 0.5, _order_key(best).view(x.dtype), x.detach())


def child_log_softmax(
    logits: torch.Tensor, child_sum: Callable, count: torch.Tensor, child_max: Callable | None = None
) -> torch.Tensor:
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
    gap = peak - child_shift(peak, child_sum, count, child_max)  # <= 0, and 0 in the child's peak window
    total = torch.log(child_sum(torch.exp(gap + per_window)))  # in [0, ln(J * windows)]
    log_norm = torch.where(real, total - gap, per_window)  # log sum over receiving parents, minus peak
    return y - log_norm.unsqueeze(2)


class Normaliser:
    """Initial routing coefficients and the E-step normalisation, over one declared axis."""

    def __init__(self, mode: str, geometry: Geometry, like: torch.Tensor):
        self.mode = mode
        self.child_sum, self.child_max = geometry.child_sum, geometry.child_max
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
        return torch.exp(child_log_softmax(logits, self.child_sum, self.count, self.child_max))


def check_inputs(votes: torch.Tensor, activation: torch.Tensor, parents: int, pose_dim: int) -> None:
    """ValueError when the tensors do not match the routing's shape contract."""
    if votes.dim() != 5 or activation.shape != votes.shape[:3] or votes.shape[3:] != (parents, pose_dim):
        raise ValueError(
            f"routing expects votes [N, L, I, {parents}, {pose_dim}] and activation [N, L, I], "
            f"got {tuple(votes.shape)} and {tuple(activation.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Vector capsules (dynamic and self-routing)


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Sabour's squash with an epsilon: length ``|s|^2/(1+|s|^2)`` (< 1), direction of ``s``."""
    return squash_with_length(s, dim, eps)[0]


def squash_with_length(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """The squashed vector and its length (the capsule's activation), the length in closed form.

    ``|v| = |s|^2/(1+|s|^2) * sqrt(|s|^2/(|s|^2+eps))``: two factors that are each <= 1 after
    rounding, so the length is in [0, 1] at any magnitude. Measuring ``|v|`` instead rounds to
    1.0000001 once ``|s|^2/(1+|s|^2)`` is 1 in fp32. At ``s = 0`` the length and its gradient
    are 0 (the second factor's square root is kept away from 0, where its slope is infinite).
    """
    sq = (s * s).sum(dim, keepdim=True)
    scale = sq / (1.0 + sq)
    v = s * (scale / torch.sqrt(sq + eps))
    nonzero = sq > 0
    ratio = torch.where(nonzero, sq / (sq + eps), 1.0)
    length = torch.where(nonzero, scale * torch.sqrt(ratio), 0.0)
    return v, length.squeeze(dim)


# Two contractions over the votes, shared with self-routing. Each is one einsum forward; the
# backward is custom: the votes' gradient is a broadcast multiply written straight into the
# votes' own memory layout (ConvCaps hands over children-outermost votes), so the vote matmul's
# backward reads it without a copy. Autograd's einsum backward would use K=1 batched matrix
# products (outer products) on strided batches instead: ~30% slower per layer on CPU.


def weighted_votes(w: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """``out[n, l, j] = sum_i w[n, l, i, j] votes[n, l, i, j]``: ``[N, L, J, D]``."""
    return _WeightedVotes.apply(w, votes)


def agreement(votes: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out[n, l, i, j] = <votes[n, l, i, j], v[n, l, j]>``: ``[N, L, I, J]``."""
    return _Agreement.apply(votes, v)


def _outer_like(votes: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` (broadcast to the votes' shape) laid out like ``votes``."""
    if torch.compiler.is_compiling():  # dynamo refuses a strided out=; inductor picks the layout itself
        return a * b
    return torch.mul(a, b, out=torch.empty_like(votes))  # empty_like keeps the votes' strides


class _WeightedVotes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, votes):
        ctx.save_for_backward(w, votes)
        return torch.einsum("nlij,nlijd->nljd", w, votes)

    @staticmethod
    def backward(ctx, grad):
        w, votes = ctx.saved_tensors
        grad_w = torch.einsum("nljd,nlijd->nlij", grad, votes) if ctx.needs_input_grad[0] else None
        grad_votes = _outer_like(votes, w.unsqueeze(-1), grad.unsqueeze(2)) if ctx.needs_input_grad[1] else None
        return grad_w, grad_votes


class _Agreement(torch.autograd.Function):
    @staticmethod
    def forward(ctx, votes, v):
        ctx.save_for_backward(votes, v)
        return torch.einsum("nlijd,nljd->nlij", votes, v)

    @staticmethod
    def backward(ctx, grad):
        votes, v = ctx.saved_tensors
        grad_votes = _outer_like(votes, grad.unsqueeze(-1), v.unsqueeze(2)) if ctx.needs_input_grad[0] else None
        grad_v = torch.einsum("nlij,nlijd->nljd", grad, votes) if ctx.needs_input_grad[1] else None
        return grad_votes, grad_v
