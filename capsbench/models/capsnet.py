"""The capsule network of the benchmark, built from a ``ModelConfig``.

Layout (``options.head: paper``, the default, exactly as the paper counts depth)::

    backbone -> PrimaryCaps -> depth x ConvCaps(k3, s1, p1, capsule_types) -> ClassCaps

``depth = 0`` connects the primary capsules straight to the class capsules. With
``options.head: reference`` the original stem of the method is kept in front of the
stacked layers: EM and VB add ConvCaps 3x3 stride 2 and 3x3 stride 1 without padding
(named ``head1``, ``head2``; kind ``conv``); SR-CapsNet's ResNet-20 variant gives the first
stacked layer stride 2 (8x8 -> 4x4).

``cfg.options`` (all optional):
- ``head``: ``paper`` | ``reference``
- ``class_caps``: ``conv`` | ``shared`` (default: the routing's ``class_caps``)
- ``vote_transform``: ``matrix`` | ``linear`` (default: the routing's ``vote_transform``)
- ``primary``: overrides of the ``PrimaryCaps`` arguments (``kernel_size``, ``padding``,
  ``batch_norm``); default: the backbone's ``primary_caps``
- ``backbone``: keyword arguments of the backbone
- ``weight_std``: std of the transformation weights (default: the routing's ``weight_std``,
  else ``1/sqrt(fan_in)``)
- ``coordinate_scale``: scale of the coordinate addition in shared class capsules
- ``keep_coefficients``: keep the last routing coefficients on each layer (default true)

Residual skips (``cfg.residual``, as res-capsnet's ``skip_dist = 2``): numbering the stacked
layers from 0, layer ``i`` adds the own routed output of layer ``i - 2`` when ``i`` is a positive
even number and the shapes match (conv3 <- conv1, conv5 <- conv3, ...; none at depth <= 2; the
primary capsules are never a source). Poses add (no re-squash or
renormalisation, as in the reference). Activations combine as a probabilistic OR,
``a + b - a*b``: it stays in [0, 1] without a clamp that would cut the gradient, is never
below either input, and equals the sum when both are small. Forward hooks on a layer see
its own routed output, before the skip is added.

Momentum residual blocks (``cfg.momentum_residual``: gamma, MoCapsNet): stacked layers
``conv2..convN`` run as reversible momentum blocks (``capsbench.models.momentum``: the rule for
poses and activations, and its memory-saving backward); ``conv1`` stays plain. Not with
``residual``; ``checkpointing`` is off inside the blocks, which recompute anyway.

Pre-activation skips (``cfg.residual_style: pre``, with ``residual``; He et al. 2016's identity
mappings carried over to capsules). The same blocks (conv1 is the stem; conv2+conv3, conv4+conv5, ...
are blocks), but: (1) the skip adds the *stream*, what the block's first layer received before
normalisation (``s_i = r_i (+) s_{i-2}`` for ``i`` even > 0, else ``s_i = r_i``, with ``r_i`` layer
``i``'s routed output and ``(+)`` the pose sum and activation OR above), not layer ``i - 2``'s own
output, so an identity path runs unchanged from conv1 to the class capsules; (2) each stacked layer's
pose norm (``model.pose_norm``, batch or layer) moves from its output to what the next layer receives:
layer ``i + 1`` (or the class capsules) gets ``N_i(s_i)`` while the stream keeps ``s_i``
unnormalised. Nothing is re-squashed; activations are never normalised. Without a pose norm only (1)
differs from ``post``. Forward hooks see the routed output before any norm (``r_i``).

``cfg.pose_norm_kind: layer`` makes every ConvCaps layer's pose norm (the reference head's too)
``PoseLayerNorm`` (Tsai et al. 2020) instead of BatchNorm. ``cfg.init: length`` sets every routed
layer's vote-weight std so the squash keeps capsule lengths at a fixed point
(``capsbench/models/length_init.py``). The remedies table, with sources: ``capsbench/models/remedies.py``.

Example::

    >>> import torch
    >>> from capsbench.config import ModelConfig
    >>> model = build_capsnet(ModelConfig(routing="self", backbone="tiny", depth=2, capsule_types=4,
    ...                                   primary_types=4), num_classes=10, in_channels=1, image_size=(32, 32))
    >>> [layer.name for layer in model.capsule_layers], model.reference_loss
    (['primary', 'conv1', 'conv2', 'class'], 'nll')
    >>> model(torch.randn(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from capsbench.capsules.geometry import window_hw
from capsbench.capsules.layers import CapsuleLayer, ClassCaps, ConvCaps, PrimaryCaps
from capsbench.capsules.types import Capsules
from capsbench.config import plain
from capsbench.errors import UserError
from capsbench.models.length_init import length_weight_std, window_slots
from capsbench.models.momentum import momentum_stack
from capsbench.registry import BACKBONES, ROUTINGS

OPTIONS = (
    "head",
    "class_caps",
    "vote_transform",
    "primary",
    "backbone",
    "weight_std",
    "coordinate_scale",
    "keep_coefficients",
)
PRIMARY_OPTIONS = ("kernel_size", "padding", "stride", "batch_norm")

# The extra ConvCaps layers (kernel, stride, padding) of each method's original stem.
REFERENCE_HEADS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "em": ((3, 2, 0), (3, 1, 0)),  # yl-1993: ConvCaps1 3x3 s2, ConvCaps2 3x3 s1
    "vb": ((3, 2, 0), (3, 1, 0)),  # fabio-deep: ConvCaps 3x3 s2, ConvCaps 3x3 s1
}
# Backbones after which SR-CapsNet gives its first stacked capsule layer stride 2.
REFERENCE_FIRST_STRIDE_2 = ("resnet20",)


class CapsNet(nn.Module):
    """Backbone + capsule layers; ``forward(x)`` returns class activations ``[N, num_classes]`` in [0, 1]."""

    def __init__(
        self,
        backbone: nn.Module,
        layers: Mapping[str, CapsuleLayer],
        stacked: list[str],
        residual: bool,
        reference_loss: str,
        routing: str,
        residual_style: str = "post",
        momentum_gamma: float | None = None,
    ):
        super().__init__()
        if residual and momentum_gamma is not None:
            raise ValueError("residual skips and momentum residual blocks cannot be combined")
        self.backbone = backbone
        self.caps = nn.ModuleDict(layers)  # ordered: primary, [head1, head2,] conv1..convN, class
        for name, layer in self.caps.items():
            layer.name = name
        self.stacked = list(stacked)
        self.residual = residual
        self.pre_activation = residual and residual_style == "pre"
        for name in self.stacked:  # pre-activation: each pose norm moves onto what the next layer receives
            self.caps[name].defer_pose_norm = self.pre_activation
        self.reference_loss = reference_loss
        self.routing = routing
        self.depth = len(self.stacked)
        self.momentum_gamma = momentum_gamma
        # the stacked layers run as momentum blocks: every one but the first (it changes the number of types)
        self.momentum_blocks = self.stacked[1:] if momentum_gamma is not None else []

    @property
    def capsule_layers(self) -> list[CapsuleLayer]:
        """Every capsule layer in forward order; ``layer.name`` and ``layer.kind`` say which."""
        return list(self.caps.values())

    def forward_capsules(self, x: torch.Tensor) -> Capsules:
        """The class capsules (pose ``[N, C, D, 1, 1]``, activation ``[N, C, 1, 1]``)."""
        caps = self.caps["primary"](self.backbone(x))
        raw: list[Capsules] = []  # each stacked layer's own routed output, before any skip
        stream: list[Capsules] = []  # what each stacked layer passes on, after its skip (before a deferred norm)
        blocks = self.momentum_blocks
        for name, layer in self.caps.items():
            if layer.kind == "primary" or layer.kind == "class" or name in blocks[1:]:
                continue
            if blocks and name == blocks[0]:
                caps = momentum_stack([self.caps[n] for n in blocks], caps, self.momentum_gamma)
                continue
            out = layer(caps)
            if name in self.stacked:
                i = len(raw)
                raw.append(out)
                # res-capsnet (skip_dist = 2): stacked layer i (from 0) adds layer i-2's own
                # output when i is a positive even number: conv3 <- conv1, conv5 <- conv3, ...;
                # pre-activation adds the stream layer i-1 received instead (module docstring)
                if self.residual and i > 0 and i % 2 == 0:
                    out = _skip(out, stream[i - 2] if self.pre_activation else raw[i - 2])
                stream.append(out)
                if self.pre_activation:
                    out = Capsules(layer.normalise_pose(out.pose), out.activation)
            caps = out
        return self.caps["class"](caps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_capsules(x).activation.flatten(1)


def _skip(out: Capsules, earlier: Capsules) -> Capsules:
    if out.pose.shape != earlier.pose.shape:
        return out
    a, b = out.activation, earlier.activation
    return Capsules(out.pose + earlier.pose, a + b - a * b)


# ---------------------------------------------------------------------------------------------
# Validation


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _bool(key: str, value: Any, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        expected = "true, false or null" if allow_none else "true or false"
        raise UserError(f"{key}: expected {expected}, got {value!r}")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> Any:
    if value is not None and value not in choices:
        raise UserError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def image_hw(image_size: Any) -> tuple[int, int]:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``; a UserError naming data.image_size otherwise."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = (int(s) for s in image_size)
    if h < 1 or w < 1:
        raise UserError(f"data.image_size: expected a positive size, got {image_size!r}")
    return h, w


# ---------------------------------------------------------------------------------------------
# Builder


def build_capsnet(cfg: Any, num_classes: int, in_channels: int, image_size: Any) -> CapsNet:
    """Build the capsule network of ``cfg`` (a ``ModelConfig`` or a DictConfig with its fields).

    Raises ``UserError`` naming the key for a bad ``model.options`` value (the config fields were
    checked when the spec loaded).
    """
    # the ModelConfig fields (depth, types, pose_dim, ..., routing and backbone names, routing
    # options) were checked against config.py when the spec loaded; model.options are the
    # builder's own and are checked here
    depth, types, primary_types = int(cfg.depth), int(cfg.capsule_types), int(cfg.primary_types)
    pose_dim, iterations = int(cfg.pose_dim), int(cfg.iterations)
    residual, checkpointing, pose_norm = bool(cfg.residual), bool(cfg.checkpointing), cfg.pose_norm
    # remedies (checked at spec load, capsbench/models/remedies.py); configs written before them lack the keys
    pose_norm_kind = getattr(cfg, "pose_norm_kind", "batch")
    residual_style = getattr(cfg, "residual_style", "post")
    length_init = getattr(cfg, "init", "default") == "length"
    momentum = getattr(cfg, "momentum_residual", None)
    momentum = None if momentum is None else float(momentum)
    num_classes = _int("num_classes", num_classes, 1)
    in_channels = _int("in_channels", in_channels, 1)
    hw = image_hw(image_size)

    routing_cls = ROUTINGS.get(cfg.routing)
    routing_options = plain(cfg.routing_options)  # checked against the routing's declaration at spec load

    options = plain(cfg.options)
    for key in options:
        if key not in OPTIONS:
            raise UserError(f"model.options.{key}: unknown option; expected one of: {', '.join(OPTIONS)}")
    head = _choice("model.options.head", options.get("head", "paper"), ("paper", "reference"))
    class_mode = _choice("model.options.class_caps", options.get("class_caps"), ("conv", "shared"))
    transform = _choice("model.options.vote_transform", options.get("vote_transform"), ("matrix", "linear"))
    transform = transform or getattr(routing_cls, "vote_transform", "matrix")
    if transform == "matrix" and math.isqrt(pose_dim) ** 2 != pose_dim:
        raise UserError(
            f"model.pose_dim: expected a perfect square (16 = a 4x4 pose matrix) for the matrix votes of "
            f"routing '{cfg.routing}', got {pose_dim}; or set model.options.vote_transform=linear"
        )
    primary_options = plain(options.get("primary"))
    for key in primary_options:
        if key not in PRIMARY_OPTIONS:
            expected = ", ".join(PRIMARY_OPTIONS)
            raise UserError(f"model.options.primary.{key}: unknown option; expected one of: {expected}")
    keep = _bool("model.options.keep_coefficients", options.get("keep_coefficients", True))
    weight_std = options.get("weight_std", getattr(routing_cls, "weight_std", None))
    bad_std = isinstance(weight_std, bool) or not isinstance(weight_std, int | float) or weight_std <= 0
    if weight_std is not None and bad_std:
        raise UserError(f"model.options.weight_std: expected a positive number or null, got {weight_std!r}")
    if length_init and "weight_std" in options:
        raise UserError("model.options.weight_std: cannot be set with model.init: length, which sets the std itself")

    try:
        backbone = BACKBONES.get(cfg.backbone)(in_channels=in_channels, **plain(options.get("backbone")))
    except TypeError as exc:
        raise UserError(f"model.options.backbone: bad arguments for backbone '{cfg.backbone}': {exc}") from None
    grid = _backbone_grid(backbone, in_channels, hw, cfg.backbone)

    routed = dict(
        routing=routing_cls,
        pose_dim=pose_dim,
        iterations=iterations,
        vote_transform=transform,
        weight_std=weight_std,
        checkpointing=checkpointing,
        keep_coefficients=keep,
        routing_impl=cfg.routing_impl,
        **routing_options,
    )
    layers: dict[str, CapsuleLayer] = {}
    primary_kw = {**getattr(backbone, "primary_caps", {}), **primary_options}
    primary_kw.setdefault("activation", getattr(routing_cls, "primary_activation", "sigmoid"))
    layers["primary"] = PrimaryCaps(backbone.out_channels, primary_types, pose_dim, **primary_kw)
    kernel = primary_kw.get("kernel_size", 3)
    padding = primary_kw.get("padding")
    grid = _fit(grid, kernel, primary_kw.get("stride", 1), kernel // 2 if padding is None else padding, "primary")

    in_types = primary_types
    convs: list[tuple[str, int, int, int]] = []
    if head == "reference":
        convs += [(f"head{n}", k, s, p) for n, (k, s, p) in enumerate(REFERENCE_HEADS.get(cfg.routing, ()), 1)]
    first_stride = 2 if head == "reference" and cfg.backbone in REFERENCE_FIRST_STRIDE_2 else 1
    convs += [(f"conv{n}", 3, first_stride if n == 1 else 1, 1) for n in range(1, depth + 1)]
    fan_in = math.isqrt(pose_dim) if transform == "matrix" else pose_dim
    for name, k, s, p in convs:
        if length_init:  # real (unpadded) children of a window, averaged over the output positions
            routed["weight_std"] = length_weight_std(window_slots(grid, k, s, p) * in_types, types, fan_in)
        grid = _fit(grid, k, s, p, name)
        # momentum blocks (every stacked layer after conv1) recompute in their own backward: no checkpointing
        block = momentum is not None and name.startswith("conv") and name != "conv1"
        kw = {**routed, "checkpointing": False} if block else routed
        layers[name] = ConvCaps(in_types, types, k, s, p, pose_norm=pose_norm, pose_norm_kind=pose_norm_kind, **kw)
        in_types = types
    if length_init:
        routed["weight_std"] = length_weight_std(grid[0] * grid[1] * in_types, num_classes, fan_in)

    try:
        layers["class"] = ClassCaps(
            in_types, num_classes, in_hw=grid, mode=class_mode, coordinate_scale=options.get("coordinate_scale", 1.0),
            coord_add=cfg.coord_add, **routed,
        )  # fmt: skip
    except ValueError as exc:
        raise UserError(f"model: cannot build the class capsules: {exc}") from None
    stacked = [name for name, *_ in convs if name.startswith("conv")]
    loss = getattr(routing_cls, "loss", "cross_entropy")
    return CapsNet(backbone, layers, stacked, residual, loss, cfg.routing, residual_style=residual_style,
                   momentum_gamma=momentum)


def _backbone_grid(backbone: nn.Module, in_channels: int, hw: tuple[int, int], name: str) -> tuple[int, int]:
    """The feature grid the backbone leaves for an ``hw`` image (one dummy forward, no state change)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, in_channels, *hw))
    except RuntimeError as exc:
        raise UserError(
            f"data.image_size: a {hw[0]}x{hw[1]} image is too small for backbone '{name}' ({exc})"
        ) from None
    finally:
        backbone.train(was_training)
    return tuple(out.shape[-2:])


def _fit(grid: tuple[int, int], kernel: int, stride: int, padding: int, layer: str) -> tuple[int, int]:
    try:
        return window_hw(grid, kernel, stride, padding)
    except ValueError as exc:
        raise UserError(f"data.image_size: too small for capsule layer '{layer}': {exc}") from None
