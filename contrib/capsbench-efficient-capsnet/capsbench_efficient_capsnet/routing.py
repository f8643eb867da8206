"""Efficient-CapsNet's non-iterative self-attention routing (Mazzia, Salvetti and Chiaberge 2021).

With votes ``u_ij`` (child i for parent j, dimension D), for each parent j:

- self-attention of the votes: ``A^j_ik = u_ij . u_kj / sqrt(D)`` (an I x I agreement matrix over
  the children);
- coefficients ``c_ij = softmax_j(sum_k A^j_ik)``: a child's summed agreement with every child
  (itself included), normalised over the parent types;
- ``s_j = sum_i (c_ij + b_ij) u_ij`` with ``B`` the learned log priors (``log_prior``, zero at
  the start), added to the coefficients as in the paper;
- pose ``v_j = squash(s_j) = (1 - exp(-|s_j|)) s_j / |s_j|``, activation ``|v_j| =
  1 - exp(-|s_j|)`` in [0, 1): the paper's squash, not Sabour's.

No iterations (``iterations`` is accepted and ignored). Child activations are not used: as in
the paper, a child's presence is the length of its pose, which scales its votes (primary
capsules are squashed poses, ``primary_activation = "length"``).

**Convolutional windows (capsbench's adaptation).** The paper routes fully connected capsule
layers. capsbench routes each k x k window of child capsules to the parent types at its output
position (votes ``[N, L, I, J, D]``, I = k^2 x child types); here the attention runs over the I
children of one window, independently per window and position, and ``B`` is one ``[I, J]``
table per layer, shared over positions like the vote weights (indexed by a child's place in the
window, so it is a per-child parameter). ``sum_k A^j_ik = u_ij . (sum_k u_kj) / sqrt(D)``: the
row sums are computed without forming the I x I matrix (O(I J D), not O(I^2 J D)). Padded
children have zero votes and add nothing. The class layer sees the whole map as one window.

The returned coefficients are ``c`` (the softmax part: >= 0, summing to 1 over the parent
types); ``c + B`` weights the votes. ``coefficients="uniform"`` is the control arm:
``c_ij = 1/J``, ``B`` and everything else kept.

Example::

    >>> import torch
    >>> r = SelfAttentionRouting(children=9, parents=4, pose_dim=8)
    >>> out = r(torch.randn(2, 5, 9, 4, 8), torch.rand(2, 5, 9), torch.randn(2, 5, 9, 8))
    >>> bool(((out.activation >= 0) & (out.activation < 1)).all())
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput
from capsbench.capsules.routing.ops import agreement, resolve_options, weighted_votes
from capsbench_efficient_capsnet.options import EFFICIENT


def exp_squash(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Efficient-CapsNet's squash ``(1 - exp(-|s|)) s / |s|`` and its length ``1 - exp(-|s|)``.

    At ``s = 0`` both are 0 with finite gradients: ``(1 - exp(-r)) / r`` is taken as its limit 1
    and the norm's infinite slope at 0 is kept out of the graph (the double ``where``).
    """
    sq = (s * s).sum(-1, keepdim=True)
    nonzero = sq > 0
    r = torch.sqrt(torch.where(nonzero, sq, 1.0))
    length = torch.where(nonzero, -torch.expm1(-r), 0.0)  # 1 - exp(-r), never above 1
    scale = torch.where(nonzero, length / r, 1.0)
    return s * scale, length.squeeze(-1)


class SelfAttentionRouting(Routing):
    OPTIONS = EFFICIENT  # the keyword options below, declared as data for capsbench validate
    normalised_over = "parents"
    loss = "margin"  # the paper's margin loss on class capsule lengths
    pose_norm = False
    vote_transform = "linear"  # vector capsules, a full D_in -> D map per (child, parent)
    class_caps = "conv"
    primary_activation = "length"
    per_child_parameters = ("B",)

    def __init__(
        self,
        children: int,
        parents: int,
        pose_dim: int,
        iterations: int = 1,
        in_pose_dim: int | None = None,
        log_prior: bool = True,
        coefficients: str = "routed",
    ):
        super().__init__(children, parents, pose_dim, iterations, in_pose_dim)
        resolve_options("efficient", {"log_prior": log_prior, "coefficients": coefficients}, self.OPTIONS)
        self.coefficients = coefficients
        self.B = nn.Parameter(torch.zeros(children, parents)) if log_prior else None

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor | None = None,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        n, length, i, j, d = votes.shape
        if self.coefficients == "uniform":
            coefficients = votes.new_full((n, length, i, j), 1.0 / j)
        else:
            # row sums of the self-attention matrix: u_ij . (sum_k u_kj) / sqrt(D)
            logits = agreement(votes, votes.sum(2)) / math.sqrt(d)
            coefficients = torch.softmax(logits, dim=-1)
        weights = coefficients if self.B is None else coefficients + self.B
        parent_pose, parent_activation = exp_squash(weighted_votes(weights, votes))
        return RoutingOutput(parent_pose, parent_activation, coefficients)
