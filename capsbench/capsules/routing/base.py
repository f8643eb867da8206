"""The one interface every routing method implements.

A routing turns the votes of children for parents into parent poses and
activations. Layers (``ConvCaps``, ``ClassCaps``) compute votes with shared
transformation weights; routing never sees spatial layout except through
``Geometry``, which it needs only when its coefficients are normalised over
every parent that receives a child (overlapping windows).

Shapes (N batch, L output positions, I children per window, J parent types,
D pose dim):
- ``votes``: ``[N, L, I, J, D]``
- ``activation``: ``[N, L, I]`` child activations in [0, 1]
- ``pose``: ``[N, L, I, D_in]`` the child poses themselves (self-routing needs them)
- returns ``RoutingOutput(pose [N, L, J, D], activation [N, L, J], coefficients [N, L, I, J])``
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from capsbench.options import Option


class RoutingOutput(NamedTuple):
    pose: torch.Tensor  # [N, L, J, D]
    activation: torch.Tensor  # [N, L, J] in [0, 1]
    coefficients: torch.Tensor  # [N, L, I, J] >= 0, normalised over `Routing.normalised_over`


@dataclass
class Geometry:
    """How the children of all windows map back onto the child grid.

    ``child_sum(x)`` takes a per-(window, child) tensor ``[N, L, I]`` and returns,
    for every entry, the sum over every window that holds the same child
    (identity when windows do not overlap). Routings that normalise over all
    parents receiving a child use it.
    """

    child_sum: Callable[[torch.Tensor], torch.Tensor]
    out_hw: tuple[int, int] = (1, 1)


IDENTITY_GEOMETRY = Geometry(child_sum=lambda x: x)


class Routing(nn.Module):
    """Base class of routing methods; subclasses register in ``capsbench.registry.ROUTINGS``.

    ``normalised_over`` declares the axis the coefficients sum to 1 over:
    - ``"parents"``: the J parent types at one output position (``coefficients.sum(-1) == 1``);
    - ``"receiving_parents"``: every parent in every window that receives the child
      (``geometry.child_sum(coefficients.sum(-1)) == 1``).
    ``loss`` names the reference loss of the method (LOSSES registry).

    The remaining class attributes tell the layers and the model builder how the
    method's reference implementation wires its capsules (all optional, with defaults):
    - ``vote_transform``: ``"matrix"`` (vote = child pose 4x4 @ W 4x4, matrix capsules)
      or ``"linear"`` (a full ``D_in -> D`` map per child and parent, vector capsules);
    - ``class_caps``: ``"shared"`` (weights shared over positions, coordinate addition)
      or ``"conv"`` (a kernel the size of the whole feature map, no padding);
    - ``primary_activation``: ``"sigmoid"`` (a separate activation conv) or ``"length"``
      (squashed poses whose length is the activation);
    - ``per_child_parameters``: names of parameters indexed by child along dim 0
      (permuting the children permutes these; used by the property tests).
    """

    normalised_over: ClassVar[str] = "parents"
    loss: ClassVar[str] = "cross_entropy"
    pose_norm: ClassVar[bool] = False  # reference puts a BatchNorm on poses after stacked layers
    vote_transform: ClassVar[str] = "matrix"
    class_caps: ClassVar[str] = "shared"
    primary_activation: ClassVar[str] = "sigmoid"
    per_child_parameters: ClassVar[tuple[str, ...]] = ()
    # std of the vote transformation weights when the spec sets none (None = 1/sqrt(fan_in))
    weight_std: ClassVar[float | None] = None
    # the method's keyword options (``model.routing_options``), declared as data: name -> Option
    OPTIONS: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, children: int, parents: int, pose_dim: int, iterations: int = 3, in_pose_dim: int | None = None):
        super().__init__()
        self.children_per_window = children
        self.parents = parents
        self.pose_dim = pose_dim
        self.in_pose_dim = in_pose_dim or pose_dim
        self.iterations = iterations

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        raise NotImplementedError
