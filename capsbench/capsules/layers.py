"""Capsule layers: primary capsules, convolutional capsules, class capsules.

Every layer is a ``CapsuleLayer`` whose forward returns ``Capsules`` (pose
``[N, T, D, H, W]``, activation ``[N, T, H, W]``). Telemetry attaches forward hooks
to every ``CapsuleLayer`` and reads ``output.activation``; ``kind`` is ``"primary"``,
``"conv"`` or ``"class"`` and ``name`` is set by the model builder ("primary",
"conv1".."convN", "class").

Routed layers (``ConvCaps``, ``ClassCaps``) describe the votes ``[N, L, I, J, D]`` of their
children by shared transformation weights (``LazyVotes``) and hand them to a routing method
from ``capsbench.registry.ROUTINGS``: materialised (one batched matmul) to its ``forward``
(``routing_impl="reference"``), or lazily to its ``forward_lazy`` (``"fused"``: the votes of
the whole layer are never stored); ``"auto"`` (default) takes the fused path only where the
routing has one for its configuration and it is measured faster on the device.
``layer.last_impl`` says which path ran last. The last routing coefficients are kept in
``layer.last_coefficients`` (detached; ``None`` with ``keep_coefficients=False``).

AMP: votes and routing always run in (at least) fp32 with autocast off; outputs are cast
back to the input dtype. Checkpointing (``checkpointing=True``) recomputes votes and
routing in the backward pass instead of storing them; BatchNorm running statistics
inside the routing are restored after the recomputation so they move once per step.

Example::

    >>> import torch
    >>> from capsbench.capsules.types import Capsules
    >>> layer = ConvCaps(8, 4, kernel_size=3, stride=1, padding=1, routing="self", pose_dim=16)
    >>> out = layer(Capsules(torch.randn(2, 8, 16, 5, 5), torch.rand(2, 8, 5, 5)))
    >>> tuple(out.pose.shape), tuple(out.activation.shape)
    ((2, 4, 16, 5, 5), (2, 4, 5, 5))
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from capsbench.capsules.geometry import coordinate_offsets, unfold_capsules, window_geometry, window_hw
from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, ROUTING_IMPLS, Geometry, Routing
from capsbench.capsules.routing.ops import squash_with_length
from capsbench.capsules.routing.votes import LazyVotes, linear_weight, project, tiled_index
from capsbench.capsules.types import Capsules
from capsbench.config import COORD_ADD_STYLES
from capsbench.errors import UserError


class CapsuleLayer(nn.Module):
    """Marker base class of every capsule layer (telemetry hooks find layers by this type)."""

    kind: str = ""

    def __init__(self):
        super().__init__()
        self.name = self.kind


def routing_class(routing: str | type[Routing]) -> type[Routing]:
    """A routing given by registry name or as a class."""
    if isinstance(routing, str):
        from capsbench.registry import ROUTINGS

        return ROUTINGS.get(routing)
    return routing


# ---------------------------------------------------------------------------------------------
# Primary capsules


class PrimaryCaps(CapsuleLayer):
    """Feature map -> capsules: a pose conv and an activation conv.

    Defaults follow SR-CapsNet (``conv_pose``: 3x3 conv + BN; ``conv_a``: 3x3 conv + BN +
    sigmoid). ``kernel_size=1`` with ``batch_norm=True`` is VB's primary layer (affine BN on
    poses and activation logits), ``kernel_size=1, batch_norm=False`` the EM port's (1x1 convs
    with bias). ``activation="length"`` (dynamic routing) has no activation conv: poses are
    squashed and the activation is their length.
    """

    kind = "primary"

    def __init__(
        self,
        in_channels: int,
        types: int,
        pose_dim: int,
        kernel_size: int = 3,
        padding: int | None = None,
        stride: int = 1,
        batch_norm: bool = True,
        activation: str = "sigmoid",
    ):
        super().__init__()
        if activation not in ("sigmoid", "length"):
            raise ValueError(f"PrimaryCaps activation must be 'sigmoid' or 'length', got {activation!r}")
        padding = kernel_size // 2 if padding is None else padding
        self.types, self.pose_dim, self.activation = types, pose_dim, activation
        conv = dict(kernel_size=kernel_size, stride=stride, padding=padding, bias=not batch_norm)
        self.pose_conv = nn.Conv2d(in_channels, types * pose_dim, **conv)
        self.pose_bn = nn.BatchNorm2d(types * pose_dim) if batch_norm else nn.Identity()
        if activation == "sigmoid":
            self.act_conv = nn.Conv2d(in_channels, types, **conv)
            self.act_bn = nn.BatchNorm2d(types) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> Capsules:
        pose = self.pose_bn(self.pose_conv(x)).unflatten(1, (self.types, self.pose_dim))
        if self.activation == "length":
            return Capsules(*squash_with_length(pose, dim=2))
        return Capsules(pose, torch.sigmoid(self.act_bn(self.act_conv(x))))


# ---------------------------------------------------------------------------------------------
# Pose normalisation

POSE_NORM_KINDS = ("batch", "layer")


class PoseLayerNorm(nn.Module):
    """LayerNorm over each capsule's pose vector, as Tsai et al. 2020 put on the poses their routing outputs.

    ``pose [N, T, D, H, W]``: every (image, type, position) pose is shifted and scaled to mean 0 and
    variance 1 over its ``D`` entries, then given a learned per-entry scale and shift shared by all
    types and positions (``nn.LayerNorm(D)``, as their ``LayerNorm(out_d_capsules)``). It uses no batch
    statistics, so training and evaluation compute the same thing; a pose of length ~``sqrt(D)`` comes
    out whatever the length that went in, which is what keeps the next layer's votes from shrinking.
    """

    def __init__(self, pose_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(pose_dim, eps=eps)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.norm(pose.movedim(2, -1)).movedim(-1, 2)


# ---------------------------------------------------------------------------------------------
# Votes


class VoteTransform(nn.Module):
    """Shared transformation weights: ``votes[..., i, j, :] = T_ij(pose[..., i, :])``.

    ``"matrix"``: ``T_ij(u) = U @ W_ij`` with ``U`` the child's 4x4 pose matrix and
    ``W [children, parents, 4, 4]`` (matrix capsules); ``"linear"``: a full ``D_in -> D``
    map, ``W [children, D_in, parents*D]`` (vector capsules, SR-CapsNet's W1). Both are
    one einsum = one batched matmul over children. ``std`` defaults to ``1/sqrt(fan_in)``
    (fan_in = 4 or D_in), so votes keep the scale of the poses at initialisation.
    """

    def __init__(
        self, children: int, parents: int, in_pose_dim: int, pose_dim: int, transform: str, std: float | None = None
    ):
        super().__init__()
        self.transform, self.parents, self.pose_dim = transform, parents, pose_dim
        if transform == "matrix":
            side = math.isqrt(pose_dim)
            if side * side != pose_dim or in_pose_dim != pose_dim:
                raise ValueError(
                    f"matrix votes need equal square pose sizes (16 = 4x4), got {in_pose_dim} -> {pose_dim}"
                )
            self.side = side
            self.weight = nn.Parameter(torch.randn(children, parents, side, side) * (std or side**-0.5))
        elif transform == "linear":
            std = std or in_pose_dim**-0.5
            self.weight = nn.Parameter(torch.randn(children, in_pose_dim, parents * pose_dim) * std)
        else:
            raise ValueError(f"vote transform must be 'matrix' or 'linear', got {transform!r}")

    def linear_weight(self) -> torch.Tensor:
        """The weight as a ``[I, D_in, J*D]`` linear map (``"matrix"``: ``U @ W = (1 kron W) vec(U)``)."""
        return linear_weight(self.weight, self.transform)

    def lazy(self, pose: torch.Tensor, **kwargs) -> LazyVotes:
        """The votes of ``pose [N, L, I, D_in]``, described but not computed."""
        return LazyVotes(pose, self.weight, self.transform, parents=self.parents, pose_dim=self.pose_dim, **kwargs)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """``pose [..., I, D_in] -> votes [..., I, J, D]``.

        One batched matmul over children for both transforms: the 4x4 products of matrix
        capsules go through the block-diagonal linear map (4x the multiply-adds of a 4x4
        matmul, but one large GEMM and no interleaving copy: ~3x faster on CPU, and votes
        are memory-bound on GPU anyway). The result is laid out children-outermost (a
        permuted view of the GEMM output); routings consume it with einsum/reductions.
        """
        return project(pose, self.weight, self.transform, self.parents, self.pose_dim)


# ---------------------------------------------------------------------------------------------
# Routed layers


@contextlib.contextmanager
def frozen_buffers(module: nn.Module):
    """Restore every buffer (BatchNorm running stats) after a checkpoint recomputation."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _no_autocast(device_type: str):
    if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _RoutedCaps(CapsuleLayer):
    """Votes + routing + reshaping back to a capsule grid; subclasses say how children are cut."""

    def _build(
        self,
        routing: str | type[Routing],
        children: int,
        weight_children: int,
        parents: int,
        in_pose_dim: int,
        pose_dim: int,
        iterations: int,
        vote_transform: str | None,
        weight_std: float | None,
        checkpointing: bool,
        keep_coefficients: bool,
        routing_impl: str,
        routing_options: dict[str, Any],
    ) -> type[Routing]:
        cls = routing_class(routing)
        self.parents, self.pose_dim = parents, pose_dim
        self.checkpointing, self.keep_coefficients = checkpointing, keep_coefficients
        self.last_coefficients: torch.Tensor | None = None
        self.last_impl: str | None = None  # "reference" or "fused": the path the last forward took
        # the code that ran it: "torch" (the routing's PyTorch code, either path), or what the routing's
        # forward_lazy reports (``Routing.last_backend``: "c-avx512", "triton", ...)
        self.last_backend: str | None = None
        transform = vote_transform or getattr(cls, "vote_transform", "matrix")
        self.votes = VoteTransform(weight_children, parents, in_pose_dim, pose_dim, transform, weight_std)
        self.routing = cls(
            children=children,
            parents=parents,
            pose_dim=pose_dim,
            iterations=iterations,
            in_pose_dim=in_pose_dim,
            **routing_options,
        )
        self.routing_impl = check_routing_impl(self.routing, routing_impl)
        return cls

    def _children(self, pose: torch.Tensor, act: torch.Tensor):
        """-> lazy votes (``LazyVotes``), child activations [N, L, I], Geometry."""
        raise NotImplementedError

    def implementation(self, device: torch.device) -> str:
        """The path a forward on ``device`` takes: ``"reference"`` or ``"fused"``."""
        if self.routing_impl == "auto":
            fused = self.routing.fused_unavailable() is None and self.routing.fused_faster(device)
            return "fused" if fused else "reference"
        return self.routing_impl

    def _route(self, pose: torch.Tensor, act: torch.Tensor, impl: str):
        """-> pose, activation (in the input dtype), detached coefficients (or None).

        No attribute is set in here: a side effect inside a checkpointed region would be
        replayed by the recomputation and makes torch.compile break the graph.
        """
        dtype = pose.dtype
        work = torch.promote_types(dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
        with _no_autocast(pose.device.type):
            votes, child_act, geometry = self._children(pose.to(work), act.to(work))
            if impl == "fused":
                out = self.routing.forward_lazy(votes, child_act, geometry, need_coefficients=self.keep_coefficients)
            else:
                out = self.routing(votes.materialize(), child_act, votes.pose, geometry)
        n, (h, w) = pose.shape[0], geometry.out_hw
        new_pose = out.pose.permute(0, 2, 3, 1).reshape(n, self.parents, self.pose_dim, h, w)
        new_act = out.activation.permute(0, 2, 1).reshape(n, self.parents, h, w)
        coefficients = out.coefficients.detach() if self.keep_coefficients else None
        return new_pose.to(dtype), new_act.to(dtype), coefficients

    def _checkpointed_route(self, pose: torch.Tensor, act: torch.Tensor, impl: str):
        if torch.compiler.is_compiling():
            # dynamo traces checkpoint as one region and rejects a custom context_fn; BatchNorm
            # statistics inside the routing then follow whatever the compiled recompute does
            return checkpoint(self._route, pose, act, impl, use_reentrant=False)
        # eager: the recomputation in backward must not move BatchNorm statistics in the routing again
        contexts = lambda: (contextlib.nullcontext(), frozen_buffers(self))  # noqa: E731
        return checkpoint(self._route, pose, act, impl, use_reentrant=False, context_fn=contexts)

    def forward(self, caps: Capsules) -> Capsules:
        pose, act = caps
        impl = self.last_impl = self.implementation(pose.device)
        self.routing.last_backend = None
        # the fused path stores nothing votes-sized and recomputes in its own backward: checkpointing it
        # again would only add a third forward
        if self.checkpointing and impl != "fused" and torch.is_grad_enabled():
            pose, act, self.last_coefficients = self._checkpointed_route(pose, act, impl)
        else:
            pose, act, self.last_coefficients = self._route(pose, act, impl)
        self.last_backend = (impl == "fused" and self.routing.last_backend) or "torch"
        if not getattr(self, "defer_pose_norm", False):
            # outside the checkpointed region: its running statistics move once per step
            pose = self.normalise_pose(pose)
        return Capsules(pose, act)

    def normalise_pose(self, pose: torch.Tensor) -> torch.Tensor:
        """``pose [N, T, D, H, W]`` through the layer's pose norm (unchanged without one).

        A pre-activation model (``model.residual_style: pre``) sets ``defer_pose_norm`` and calls this
        on the stream it passes to the next layer instead.
        """
        norm = getattr(self, "pose_norm", None)
        if norm is None:
            return pose
        if isinstance(norm, PoseLayerNorm):
            return norm(pose)
        return norm(pose.flatten(1, 2)).view_as(pose)  # BatchNorm per (type, pose entry)


class ConvCaps(_RoutedCaps):
    """Convolutional capsules: every ``kernel_size`` window of children routes to ``out_types`` parents.

    ``I = kernel_size**2 * in_types`` children per window, with their own transformation
    weights (shared over positions). Windows are cut with ``F.unfold`` and overlapping
    windows are described to the routing by a fold/unfold ``Geometry`` (see
    ``capsbench.capsules.geometry``; padded children have activation 0 and pose 0).
    ``pose_norm``: a norm on the output poses; ``None`` takes the routing's reference default
    (``Routing.pose_norm``). ``pose_norm_kind``: ``"batch"`` (the references' BatchNorm, per type
    and pose entry over images and positions) or ``"layer"`` (``PoseLayerNorm``: Tsai et al. 2020).

    Example::

        >>> import torch
        >>> layer = ConvCaps(4, 6, kernel_size=3, stride=2, padding=0, routing="dynamic", pose_dim=8)
        >>> layer(Capsules(torch.randn(1, 4, 8, 7, 7), torch.rand(1, 4, 7, 7))).pose.shape
        torch.Size([1, 6, 8, 3, 3])
    """

    kind = "conv"

    def __init__(
        self,
        in_types: int,
        out_types: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        routing: str | type[Routing] = "em",
        pose_dim: int = 16,
        iterations: int = 3,
        *,
        in_pose_dim: int | None = None,
        pose_norm: bool | None = None,
        pose_norm_kind: str = "batch",
        vote_transform: str | None = None,
        weight_std: float | None = None,
        checkpointing: bool = False,
        keep_coefficients: bool = True,
        routing_impl: str = "auto",
        **routing_options,
    ):
        super().__init__()
        self.in_types, self.kernel_size, self.stride, self.padding = in_types, kernel_size, stride, padding
        children = kernel_size * kernel_size * in_types
        cls = self._build(
            routing, children, children, out_types, in_pose_dim or pose_dim, pose_dim, iterations,
            vote_transform, weight_std, checkpointing, keep_coefficients, routing_impl, routing_options,
        )  # fmt: skip
        if pose_norm is None:
            pose_norm = getattr(cls, "pose_norm", False)
        if pose_norm_kind not in POSE_NORM_KINDS:
            raise ValueError(f"pose_norm_kind must be one of {POSE_NORM_KINDS}, got {pose_norm_kind!r}")
        self.pose_norm: nn.Module | None = None
        if pose_norm:
            layer_norm = pose_norm_kind == "layer"
            self.pose_norm = PoseLayerNorm(pose_dim) if layer_norm else nn.BatchNorm2d(out_types * pose_dim)
        self.defer_pose_norm = False

    def output_hw(self, in_hw) -> tuple[int, int]:
        return window_hw(in_hw, self.kernel_size, self.stride, self.padding)

    def _children(self, pose, act):
        k, s, p = self.kernel_size, self.stride, self.padding
        child_pose, child_act, _ = unfold_capsules(Capsules(pose, act), k, s, p)
        geometry = window_geometry(pose.shape[-2:], k, s, p)
        return self.votes.lazy(child_pose), child_act, geometry


class ClassCaps(_RoutedCaps):
    """Class capsules: every child of the last grid routes to ``num_classes`` parents at one position.

    Two modes (``mode=None`` takes the routing's ``class_caps`` default):
    - ``"conv"`` (SR-CapsNet, dynamic): a window the size of the whole ``in_hw`` map, no
      padding: ``H*W*in_types`` children with their own weights;
    - ``"shared"`` (EM, VB): weights shared over positions (one per child type) plus
      coordinate addition, ``coord_add`` (``capsbench.config.COORD_ADD_STYLES``): ``"hinton"``
      adds the scaled centre of each child's position to the first two entries of the
      right-hand column of its votes (Hinton et al. 2018), ``"yl1993"`` the position's
      top-left corner ``(row / H, col / W)`` to entries 0 and 1 (the EM port), ``"none"``
      nothing. ``coordinate_scale`` multiplies the offsets.
    Both have ``H*W*in_types`` children and one output position (``H = W = 1``). The builder
    passes ``in_hw``, the grid the backbone leaves for the spec's image size.
    """

    kind = "class"

    def __init__(
        self,
        in_types: int,
        num_classes: int,
        routing: str | type[Routing] = "em",
        pose_dim: int = 16,
        in_hw: tuple[int, int] = (4, 4),
        mode: str | None = None,
        iterations: int = 3,
        *,
        in_pose_dim: int | None = None,
        coordinate_scale: float = 1.0,
        coord_add: str = "hinton",
        vote_transform: str | None = None,
        weight_std: float | None = None,
        checkpointing: bool = False,
        keep_coefficients: bool = True,
        routing_impl: str = "auto",
        **routing_options,
    ):
        super().__init__()
        cls = routing_class(routing)
        mode = mode or getattr(cls, "class_caps", "shared")
        if mode not in ("conv", "shared"):
            raise ValueError(f"ClassCaps mode must be 'conv' or 'shared', got {mode!r}")
        if coord_add not in COORD_ADD_STYLES:
            raise ValueError(f"ClassCaps coord_add must be one of {COORD_ADD_STYLES}, got {coord_add!r}")
        self.mode, self.in_types, self.coordinate_scale = mode, in_types, coordinate_scale
        self.coord_add = coord_add
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        positions = self.in_hw[0] * self.in_hw[1]
        children = positions * in_types
        self._build(
            cls, children, children if mode == "conv" else in_types, num_classes, in_pose_dim or pose_dim,
            pose_dim, iterations, vote_transform, weight_std, checkpointing, keep_coefficients, routing_impl,
            routing_options,
        )  # fmt: skip

    def _children(self, pose, act):
        n, t, d, h, w = pose.shape
        if (h, w) != self.in_hw:
            raise ValueError(f"ClassCaps was built for a {self.in_hw} capsule grid, got {(h, w)}")
        if self.mode == "conv":
            # children i = t*H*W + position: the order unfold would give for a whole-map kernel
            child_pose = pose.reshape(n, 1, t, d, h * w).transpose(-1, -2).reshape(n, 1, t * h * w, d)
            child_act = act.reshape(n, 1, t * h * w)
            votes = self.votes.lazy(child_pose)
        else:
            # children i = position*T + t; weights indexed by t (i % T), shared over positions
            per_position = pose.permute(0, 3, 4, 1, 2).reshape(n, h * w, t, d)
            offsets = None  # coord_add "none": no offsets at all
            if self.coord_add != "none":
                offsets = coordinate_offsets(
                    (h, w), self.pose_dim, self.coordinate_scale, pose.device, pose.dtype, self.coord_add
                ).repeat_interleave(t, dim=0)  # [HW, D] -> one row per child
            votes = self.votes.lazy(
                per_position.reshape(n, 1, h * w * t, d),
                weight_index=tiled_index(h * w * t, t, pose.device),
                offsets=offsets,
                pose_by_row=per_position,
            )
            child_act = act.permute(0, 2, 3, 1).reshape(n, 1, h * w * t)
        return votes, child_act, Geometry(child_sum=IDENTITY_GEOMETRY.child_sum, out_hw=(1, 1))


def check_routing_impl(routing: Routing, impl: str) -> str:
    """``impl`` when it is a known path the routing can take; UserError naming ``model.routing_impl`` otherwise."""
    if impl not in ROUTING_IMPLS:
        raise UserError(f"model.routing_impl must be one of {', '.join(ROUTING_IMPLS)}, got {impl!r}")
    reason = routing.fused_unavailable() if impl == "fused" else None
    if reason:
        raise UserError(f"model.routing_impl=fused: {reason}; use auto or reference")
    return impl


__all__ = ["CapsuleLayer", "PrimaryCaps", "ConvCaps", "ClassCaps", "PoseLayerNorm", "VoteTransform", "routing_class"]
