"""Inverted dot-product attention routing (Tsai, Sohn, Salakhutdinov and Fidler, ICLR 2020).

The paper's Procedure 1, per output position, with votes ``v_ij`` of child ``i`` for parent ``j``:

1. parent poses start at zero: ``p_j = 0``;
2. agreement ``a_ij = p_j . v_ij`` (a dot product);
3. ``r_ij = softmax_j(a_ij)``: *inverted* attention, the parents compete for each child
   (normalised over the parent types, not over the children);
4. ``p_j = LayerNorm(sum_i r_ij v_ij)``;

steps 2-4 repeated. With ``p_j = 0`` the first agreement is 0 and the first ``r_ij = 1/J``, so
``iterations`` = T pose updates: one from uniform coefficients, then T - 1 routed ones (T = 1 is
uniform coupling). The LayerNorm is over the D pose entries of each parent, with a learned scale
and shift per pose entry shared by the parent types of the layer (``affine``; capsbench's reading
of the paper's "LayerNorm", which does not say more).

**Activation (a capsbench definition).** The method has no activation: the paper classifies from
the class capsules' poses. capsbench counts dead capsules on activations, so it measures the
parent's share of its window's routing mass,
``a_j = sum_i a_i r_ij / (sum_i a_i + eps)``: in [0, 1], summing to 1 over the parent types of a
position (mean 1/J), 0 for a window whose children are all inactive (padding). A type is dead
(``a_j <= 0.01``) when the active children send it at most 1% of their mass: at J = 16 types,
less than a sixth of its fair share. Child activations weight only this measurement; the routing
itself (coefficients and poses) ignores them, as in the paper. The class capsules' shares sum to
1 over the classes, so the reference loss is capsbench's ``nll`` on them (the paper's linear
classifier on class poses has no counterpart in capsbench's heads).

**Convolutional windows.** capsbench routes each k x k window of child capsules to the parent
types at its output position (votes ``[N, L, I, J, D]``); the procedure above runs per window,
independently, and a child in several overlapping windows is routed in each of them, its
coefficients normalised over the parent types of each window (``normalised_over = "parents"``).
Pose matrices: 4 x 4 (``vote_transform = "matrix"``, the paper's matrix-structured poses).

``coefficients="uniform"`` is the control arm: ``r_ij = 1/J`` at every iteration, everything
else kept.

Example::

    >>> import torch
    >>> r = InvertedDotProductRouting(children=9, parents=4, pose_dim=16)
    >>> out = r(torch.randn(2, 5, 9, 4, 16), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 16))
    >>> torch.allclose(out.activation.sum(-1), torch.ones(2, 5))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput
from capsbench.capsules.routing.ops import agreement, resolve_options, weighted_votes
from capsbench_ida_routing.options import IDA


class InvertedDotProductRouting(Routing):
    OPTIONS = IDA  # the keyword options below, declared as data for capsbench validate
    normalised_over = "parents"
    loss = "nll"  # the measured activations sum to 1 over the classes
    pose_norm = False  # the LayerNorm is the method's own normalisation of poses
    vote_transform = "matrix"
    class_caps = "conv"
    primary_activation = "sigmoid"

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 2,
        in_pose_dim: int | None = None,
        layer_norm_eps: float = 1e-5,
        affine: bool = True,
        eps: float = 1e-12,
        coefficients: str = "routed",
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        options = {"layer_norm_eps": layer_norm_eps, "affine": affine, "eps": eps, "coefficients": coefficients}
        resolve_options("ida", options, self.OPTIONS)
        self.eps, self.coefficients = eps, coefficients
        self.norm = nn.LayerNorm(pose_dim, eps=layer_norm_eps, elementwise_affine=affine)

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor | None = None,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        n, length, i, j, _ = votes.shape
        # p_j = 0 makes the first agreement 0 and the first coefficients uniform: start there
        coefficients = votes.new_full((n, length, i, j), 1.0 / j)
        parent_pose = self.norm(weighted_votes(coefficients, votes))  # [N, L, J, D]
        for _ in range(self.iterations - 1 if self.coefficients == "routed" else 0):
            coefficients = torch.softmax(agreement(votes, parent_pose), dim=-1)  # the parents compete
            parent_pose = self.norm(weighted_votes(coefficients, votes))
        # both sums in one order: r_ij <= 1 then keeps every share <= 1 after rounding (an einsum did not)
        mass = (activation.unsqueeze(-1) * coefficients).sum(2)  # [N, L, J]
        parent_activation = mass / (activation.unsqueeze(-1).sum(2) + self.eps)
        return RoutingOutput(parent_pose, parent_activation, coefficients)
