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

Two ways to receive the votes (contract v2):
- ``forward(votes, activation, pose, geometry)``: the votes tensor, materialised. Every
  routing has it; it is the reference path (the oracle of the equality tests).
- ``forward_lazy(votes: LazyVotes, activation, geometry, need_coefficients)`` (optional):
  the child poses, weights and vote transform (``capsbench.capsules.routing.votes``), so a
  fused implementation can compute the votes of a few windows at a time and never hold
  those of the whole layer. ``coefficients`` may be None when ``need_coefficients`` is
  False. A routing that defines it says in ``fused_unavailable`` which of its
  configurations have no fused implementation, and in ``fused_faster`` on which devices
  its fused path is measured faster (what ``routing_impl="auto"`` picks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from capsbench.config import ROUTING_IMPLS  # noqa: F401  (re-exported for the layers)
from capsbench.options import Option


class RoutingOutput(NamedTuple):
    pose: torch.Tensor  # [N, L, J, D]
    activation: torch.Tensor  # [N, L, J] in [0, 1]
    # [N, L, I, J] >= 0, normalised over `Routing.normalised_over`; None only when forward_lazy was
    # called with need_coefficients=False
    coefficients: torch.Tensor | None


@dataclass
class Geometry:
    """How the children of all windows map back onto the child grid.

    ``child_sum(x)`` takes a per-(window, child) tensor ``[N, L, I]`` and returns,
    for every entry, the sum over every window that holds the same child
    (identity when windows do not overlap). Routings that normalise over all
    parents receiving a child use it. ``child_max`` (optional, the layers' windows
    give one) is the same with a max instead of the sum, in one pass.
    """

    child_sum: Callable[[torch.Tensor], torch.Tensor]
    out_hw: tuple[int, int] = (1, 1)
    # optional: the exact max over every slot holding the same child, ``[N, L, I]`` -> ``[N, L, I]``
    # (padded slots: any value; callers mask them). None: ops.child_shift finds it through child_sum.
    child_max: Callable[[torch.Tensor], torch.Tensor] | None = None


IDENTITY_GEOMETRY = Geometry(child_sum=lambda x: x)


def type_means(**terms: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """Per-parent-type means of activation terms, for ``Routing.last_terms`` (cheap, detached, fp64).

    ``[N, L, J]`` tensors are averaged over images and positions (-> ``[J]``); ``[J]`` tensors and
    numbers are kept. ``count`` (``N * L``) lets telemetry weight batches of different sizes.
    """
    out: dict[str, torch.Tensor] = {}
    count = 1
    for name, value in terms.items():
        t = torch.as_tensor(value).detach().to(torch.float64)
        if t.dim() == 3:
            count = t.shape[0] * t.shape[1]
            t = t.mean(dim=(0, 1))
        out[name] = t
    out["count"] = torch.tensor(float(count), dtype=torch.float64)
    return out


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

    Telemetry (``capsbench.metrics.mechanism``) sets ``diagnostics = True`` on validation
    batches only. A routing that can say why its activations are what they are then fills
    ``last_terms`` with :func:`type_means` of its activation's terms; it must not change
    any output. Any faster path of a routing (a fused kernel) must, while ``diagnostics``
    is on, either fill the same ``last_terms`` or run the reference path; the rest of the
    telemetry reads only the layer's output and ``layer.last_coefficients``.
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
        self.diagnostics = False  # set by telemetry around validation batches
        self.last_terms: dict[str, torch.Tensor] | None = None
        # the code that served the last forward_lazy call when it was not the routing's PyTorch code: e.g.
        # "c-avx512" (a compiled CPU kernel and the instruction set it was built for) or "triton"; None:
        # PyTorch. The layer resets it before each call and records it (``layer.last_backend``).
        self.last_backend: str | None = None

    def forward(
        self,
        votes: torch.Tensor,
        activation: torch.Tensor,
        pose: torch.Tensor,
        geometry: Geometry = IDENTITY_GEOMETRY,
    ) -> RoutingOutput:
        raise NotImplementedError

    def fused_unavailable(self) -> str | None:
        """Why this routing, as configured, has no fused implementation; None when it has one.

        Routings without ``forward_lazy`` have none. Subclasses that define it override this
        for the configurations their fused path does not cover.
        """
        if not hasattr(self, "forward_lazy"):
            return f"routing {type(self).__name__} has no fused implementation (it defines no forward_lazy)"
        return None

    def fused_faster(self, device: torch.device) -> bool:
        """Whether the fused path is measured faster than the reference on ``device`` (``auto`` picks it then)."""
        return False
