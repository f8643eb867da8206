"""``timm_vit``: timm's ``VisionTransformer`` sized for the data set, ``depth`` transformer blocks.

Built directly from the class with random initialisation (``pretrained=False`` in effect:
no ``timm.create_model``, no hub, nothing is downloaded). ``img_size`` is the data set's
image size and ``in_chans`` its channel count; the class token feeds a linear head (logits).

Depth: ``model.depth`` is the number of transformer blocks (attention + MLP, each with its
own pre-norm residual); depth 0 is patch embedding + class token + final norm + head.

``model.options`` (defaults: ViT-Tiny widths with 4x4 patches, as usual for 32x32 images):
``patch_size`` (4; must divide the image size), ``embed_dim`` (192), ``num_heads`` (3; must
divide ``embed_dim``), ``mlp_ratio`` (4.0), ``drop_path_rate`` (0.0). ``model.checkpointing``
turns on timm's gradient checkpointing of the blocks. Other ModelConfig fields (routing,
backbone, capsule sizes, residual) do not apply and are ignored.

Example::

    >>> import torch
    >>> from capsbench.config import ModelConfig
    >>> vit = build_timm_vit(ModelConfig(arch="timm_vit", depth=2, options={"embed_dim": 48}), 10, 1, (16, 16))
    >>> len(vit.blocks), vit.patch_embed.grid_size, vit(torch.zeros(2, 1, 16, 16)).shape
    (2, (4, 4), torch.Size([2, 10]))
"""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import VisionTransformer

from baselines.base import BaselineModel, name_blocks
from baselines.options import image_hw, read_options
from capsbench.errors import UserError
from capsbench.options import Option

NAME = "timm_vit"
OPTIONS: dict[str, Option] = {
    "patch_size": Option(int, 4, ge=1, doc="side of the square patches (must divide the image size)"),
    "embed_dim": Option(int, 192, ge=1, doc="token width"),
    "num_heads": Option(int, 3, ge=1, doc="attention heads (must divide embed_dim)"),
    "mlp_ratio": Option(float, 4.0, gt=0, doc="hidden width of the MLP over embed_dim"),
    "drop_path_rate": Option(float, 0.0, ge=0, lt=1, doc="timm stochastic-depth rate"),
}


class TimmViT(BaselineModel, VisionTransformer):
    """timm's VisionTransformer plus the attributes capsbench's runner and telemetry read."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        name_blocks(self.blocks)


def build_timm_vit(cfg: Any, num_classes: int, in_channels: int, image_size: Any) -> TimmViT:
    """The ``timm_vit`` baseline of ``cfg`` (a ModelConfig or a DictConfig with its fields)."""
    depth = int(cfg.depth)  # >= 0: checked when the spec loaded
    options = read_options(cfg.options, OPTIONS, NAME)
    hw, patch = image_hw(image_size), options["patch_size"]
    if hw[0] % patch or hw[1] % patch:
        divisors = [p for p in range(1, min(hw) + 1) if hw[0] % p == 0 and hw[1] % p == 0]
        raise UserError(
            f"model.options.patch_size: {patch} does not divide the {hw[0]}x{hw[1]} images; "
            f"use one of {divisors} or change data.image_size"
        )
    if options["embed_dim"] % options["num_heads"]:
        raise UserError(
            f"model.options.num_heads: {options['num_heads']} does not divide embed_dim {options['embed_dim']}"
        )
    model = TimmViT(
        img_size=hw,
        patch_size=patch,
        in_chans=in_channels,
        num_classes=num_classes,
        depth=depth,
        embed_dim=options["embed_dim"],
        num_heads=options["num_heads"],
        mlp_ratio=options["mlp_ratio"],
        drop_path_rate=options["drop_path_rate"],
    )
    model.set_grad_checkpointing(bool(cfg.checkpointing))
    return model
