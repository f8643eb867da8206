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
- ``coefficients="uniform"`` is the control arm (Paik, Kwak and Kim 2019): the logits stay 0,
  so ``c_ij = 1/J`` and ``v_j = squash(mean_i u_hat_ij)`` (one pass, no agreement updates).
- ``squash`` has an epsilon: ``|s|^2/(1+|s|^2) * s/sqrt(|s|^2+eps)``; a zero vector gives 0,
  never NaN. The activation is that vector's length in closed form
  (``ops.squash_with_length``), so it never leaves [0, 1]: measured with a norm it rounded to
  1.0000001 at large poses. In fp32 it is exactly 1.0 once ``|s|^2`` passes ~1.7e7.

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
from capsbench.capsules.routing.ops import (  # noqa: F401  (squash: kept importable from here)
    agreement,
    resolve_options,
    squash,
    squash_with_length,
    weighted_votes,
)


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
        coefficients: str = "routed",
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        if iterations < 1:
            raise ValueError(f"dynamic routing needs iterations >= 1, got {iterations}")
        options = {"eps": eps, "detach_agreement": detach_agreement, "coefficients": coefficients}
        resolve_options("dynamic", options, self.OPTIONS)  # the declared types and choices spec loading checks
        self.eps, self.coefficients = eps, coefficients
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
        rounds = self.iterations if self.coefficients == "routed" else 1  # uniform: the logits stay 0
        for t in range(rounds):
            coefficients = torch.softmax(logits, dim=-1)  # over parents
            if t == 0:  # logits are 0: uniform 1/J, a plain sum is cheaper than the weighted one
                s = votes.sum(2) / j
            else:
                s = weighted_votes(coefficients, votes)
            v, length = squash_with_length(s, eps=self.eps)
            if t < rounds - 1:
                u, w = (votes.detach(), v.detach()) if self.detach_agreement else (votes, v)
                logits = logits + agreement(u, w)
        return RoutingOutput(v, length, coefficients)
