"""Self-routing (Hahn et al. 2019, SR-CapsNet).

Every child predicts its own routing: ``c_ij = softmax_J(W2_i u_i + b2_i)`` with
``W2``, ``b2`` per child, zero-initialised (uniform routing at the start). With
``ar_ij = a_i c_ij``:

- ``pose_j = sum_i ar_ij / (sum_i ar_ij + eps) * vote_ij``
- ``a_j = sum_i ar_ij / (sum_i a_i + eps)``

The reference defines an epsilon but never uses it, so a window whose children all
have activation 0 gives 0/0; here it gives pose 0 and activation 0 with finite
gradients. Consequences worth knowing when counting dead capsules: the parent
activations at one position sum to 1 over the parent types (mean ``1/J``, 0.0625 for
16 types) whenever some child is active, and they do not change when every child
activation is scaled by the same ``c > 0``. No iterations: ``iterations`` is accepted
for the common interface and ignored.

``coefficients="uniform"`` is the control arm (Paik, Kwak and Kim 2019): ``c_ij = 1/J``
(``W2``, ``b2`` unused), the same activation rule, poses and loss. Then
``a_j = 1/J`` at every position with an active child: the layer's activations carry no
information, by construction of the rule.

Example::

    >>> import torch
    >>> r = SelfRouting(children=9, parents=4, pose_dim=16)
    >>> out = r(torch.randn(2, 5, 9, 4, 16), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 16))
    >>> torch.allclose(out.activation.sum(-1), torch.ones(2, 5))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from capsbench.capsules.routing import declared_options
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput
from capsbench.capsules.routing.ops import resolve_options, weighted_votes


class SelfRouting(Routing):
    OPTIONS = declared_options.SELF  # the keyword options below, declared for validate
    normalised_over = "parents"
    loss = "nll"
    pose_norm = True  # SR-CapsNet puts a BatchNorm on the poses after every stacked layer
    vote_transform = "linear"  # SR-CapsNet's W1 is a full pose_in -> pose_out map per (child, parent)
    class_caps = "conv"  # final layer: kernel = the whole 4x4 map, no padding
    primary_activation = "sigmoid"
    per_child_parameters = ("W2", "b2")

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 3,
        in_pose_dim: int | None = None,
        eps: float = 1e-12,
        coefficients: str = "routed",
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        options = {"eps": eps, "coefficients": coefficients}
        resolve_options("self", options, self.OPTIONS)  # the declared types and choices spec loading checks
        self.eps, self.coefficients = eps, coefficients
        self.W2 = nn.Parameter(torch.zeros(children, self.in_pose_dim, parents))
        self.b2 = nn.Parameter(torch.zeros(children, parents))

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        if self.coefficients == "uniform":  # the control arm: W2, b2 unused, everything else kept
            coefficients = votes.new_full(votes.shape[:4], 1.0 / self.parents)
        else:
            logits = torch.einsum("nlid,idj->nlij", pose, self.W2) + self.b2  # one batched matmul over children
            coefficients = torch.softmax(logits, dim=-1)  # over parent types
        ar = activation.unsqueeze(-1) * coefficients  # [N, L, I, J]
        ar_sum = ar.sum(2)  # [N, L, J]
        weights = ar / (ar_sum.unsqueeze(2) + self.eps)
        new_pose = weighted_votes(weights, votes)  # [N, L, J, D], one batched matvec
        new_act = ar_sum / (activation.sum(2, keepdim=True) + self.eps)
        return RoutingOutput(new_pose, new_act, coefficients)
