"""Dynamic routing between capsules (Sabour et al. 2017).

Per iteration: ``c = softmax_J(b)`` (over the PARENTS of each child: one public
PyTorch port normalises over children by mistake), ``s_j = sum_i c_ij u_hat_ij``,
``v_j = squash(s_j)``, ``b_ij += <u_hat_ij, v_j>``. Logits start at 0, so the first
iteration's coefficients are uniform ``1/J``. Output pose ``v_j``, activation ``|v_j|``.

Choices (documented deviations and decisions):
- Child activations do not reweight the votes. In Sabour et al. a capsule's activation
  is its length, and that length is already inside its votes ``u_hat = W u``; weighting
  again would count it twice. The ``activation`` argument is therefore ignored (padded
  children still add nothing: their pose, hence their votes, are 0).
- Gradients flow through the agreement updates by default, as in SR-CapsNet's
  ``DynamicRouting2d`` (the implementation the paper's protocol follows). Sabour's
  implementations differ on this; ``detach_agreement=True`` stops the gradient through
  the logit updates (the coefficients become constants of the votes' gradient).
- ``squash`` has an epsilon: ``|s|^2/(1+|s|^2) * s/sqrt(|s|^2+eps)``; a zero vector gives 0,
  never NaN. In fp32 the length rounds to exactly 1.0 once ``|s|^2`` passes ~1e8.

Example::

    >>> import torch
    >>> r = DynamicRouting(children=9, parents=4, pose_dim=8, iterations=3)
    >>> out = r(torch.randn(2, 5, 9, 4, 8), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 8))
    >>> bool((out.activation < 1).all()), torch.allclose(out.coefficients.sum(-1), torch.ones(2, 5, 9))
    (True, True)
"""

from __future__ import annotations

import torch

from capsbench.capsules.routing import declared_options
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Sabour's squash with an epsilon: length ``|s|^2/(1+|s|^2)`` (< 1), direction of ``s``."""
    sq = (s * s).sum(dim, keepdim=True)
    return s * (sq / (1.0 + sq) / torch.sqrt(sq + eps))


def capsule_length(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean length; its gradient at the zero vector is 0 (not NaN)."""
    return torch.linalg.vector_norm(v, dim=dim)


class DynamicRouting(Routing):
    OPTIONS = declared_options.DYNAMIC  # the keyword options below, declared for validate
    normalised_over = "parents"
    loss = "margin"
    pose_norm = False  # SR-CapsNet's dynamic-routing ConvNet has no BatchNorm between capsule layers
    vote_transform = "linear"  # W_ij maps a pose vector to a vote vector
    class_caps = "conv"
    primary_activation = "length"

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 3,
        in_pose_dim: int | None = None,
        eps: float = 1e-8,
        detach_agreement: bool = False,
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        if iterations < 1:
            raise ValueError(f"dynamic routing needs iterations >= 1, got {iterations}")
        self.eps = eps
        self.detach_agreement = detach_agreement

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        n, length, i, j, _ = votes.shape
        logits = votes.new_zeros(n, length, i, j)
        for t in range(self.iterations):
            coefficients = torch.softmax(logits, dim=-1)  # over parents
            if t == 0:  # logits are 0: uniform 1/J, a plain sum is cheaper than the weighted one
                s = votes.sum(2) / j
            else:
                s = weighted_votes(coefficients, votes)
            v = squash(s, eps=self.eps)
            if t < self.iterations - 1:
                u, w = (votes.detach(), v.detach()) if self.detach_agreement else (votes, v)
                logits = logits + agreement(u, w)
        return RoutingOutput(v, capsule_length(v), coefficients)


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
