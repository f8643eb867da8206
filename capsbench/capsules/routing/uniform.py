"""Uniform routing: the method-independent floor ("routing that does nothing").

Paik, Kwak and Kim (2019, "Capsule Networks Need an Improved Routing Algorithm", arXiv
1907.13327) found that published routings often
do no better than uniform coupling. This routing is that control as a method of its own, so
the leaderboard and every depth figure can show whether a method beats it:

- coefficients ``c_ij = 1/J`` (over the parent types at one position, never updated);
- ``s_j = sum_i a_i v_ij / (sum_i a_i + eps)``: the activation-weighted mean vote (a child
  with ``a_i = 0`` has no say; the mean, not the sum, so the scale does not grow with the
  window size);
- pose ``v_j = squash(s_j)`` and activation ``a_j = |v_j| = |s_j|^2 / (1 + |s_j|^2)``:
  votes that agree add up to a long mean and an active parent, votes that disagree cancel.

That is dynamic routing with no agreement iteration, with children weighted by their
activation. No parameters, no iterations (``iterations`` is accepted and ignored). Wired as
vector capsules like dynamic routing (linear votes, whole-map class capsules, margin loss,
no pose BatchNorm) but with sigmoid primary activations, so the activations weight the votes
from the first routed layer on. A zero window (all ``a_i = 0``) gives pose 0 and activation 0
with finite gradients.

Example::

    >>> import torch
    >>> r = UniformRouting(children=9, parents=4, pose_dim=8)
    >>> out = r(torch.randn(2, 5, 9, 4, 8), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 8))
    >>> bool((out.coefficients == 0.25).all()), bool((out.activation < 1).all())
    (True, True)
"""

from __future__ import annotations

import torch

from capsbench.capsules.routing import declared_options
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput
from capsbench.capsules.routing.ops import squash_with_length, weighted_votes


class UniformRouting(Routing):
    OPTIONS = declared_options.UNIFORM  # the keyword options below, declared for validate
    normalised_over = "parents"
    loss = "margin"
    pose_norm = False
    vote_transform = "linear"
    class_caps = "conv"
    primary_activation = "sigmoid"

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 1,
        in_pose_dim: int | None = None,
        eps: float = 1e-12,
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        self.eps = eps

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor | None = None,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        n, length, i, j, _ = votes.shape
        weights = activation / (activation.sum(2, keepdim=True) + self.eps)  # [N, L, I]
        s = weighted_votes(weights.unsqueeze(-1).expand(n, length, i, j), votes)  # [N, L, J, D]
        v, activation = squash_with_length(s)  # the length in closed form: never above 1
        return RoutingOutput(v, activation, votes.new_full((n, length, i, j), 1.0 / j))
