"""``timm_resnet``: a CIFAR-style ResNet built from timm's ``BasicBlock``, ``depth`` blocks in all.

Layout: stem (3x3 conv, BN, ReLU; ``width`` channels, stride 1) -> ``depth`` residual
``timm.models.resnet.BasicBlock`` s (two 3x3 convs each) over three stages of ``width``,
``2*width``, ``4*width`` channels -> global average pool -> linear classifier (logits).

Depth: ``model.depth`` is the TOTAL number of residual blocks, like the number of stacked
capsule layers or of transformer blocks. The blocks fill the three stages as evenly as
possible, earlier stages first: ``[d//3 + (i < d % 3) for i in 0, 1, 2]``, so depth 1 is
``[1, 0, 0]``, depth 4 ``[2, 1, 1]``, depth 9 ``[3, 3, 3]`` (ResNet-20 = depth 9, with
timm's 1x1-conv shortcut instead of the "option A" zero padding). The first block of the
second and third stage has stride 2 and a 1x1 conv + BN shortcut (timm's
``downsample_conv``); an empty stage adds nothing (no downsampling, no widening). Depth 0
is stem + head. A 32x32 input ends on an 8x8 grid at depth >= 3.

``model.options``: ``width`` (16: channels of the first stage), ``zero_init_last``
(true: the last BN of every block starts at zero, timm's default, so every block starts as
the identity). ``model.checkpointing`` recomputes each block in backward (BatchNorm
statistics move once per step). Other ModelConfig fields (routing, backbone, capsule
sizes, residual) do not apply and are ignored.

Example::

    >>> import torch
    >>> from capsbench.config import ModelConfig
    >>> net = build_timm_resnet(ModelConfig(arch="timm_resnet", depth=4), 10, 1, (32, 32))
    >>> net.stage_blocks, [b.name for b in net.telemetry_blocks][-1], net(torch.zeros(2, 1, 32, 32)).shape
    ((2, 1, 1), 'block4', torch.Size([2, 10]))
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from timm.models.resnet import BasicBlock, downsample_conv
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines.base import BaselineModel, name_blocks
from baselines.options import read_options
from capsbench.capsules.layers import frozen_buffers  # BN statistics move once per step
from capsbench.options import Option

NAME = "timm_resnet"
OPTIONS: dict[str, Option] = {
    "width": Option(int, 16, ge=1, doc="channels of the first stage (doubled at each later stage)"),
    "zero_init_last": Option(bool, True, doc="zero the last BatchNorm of every block (identity at init)"),
}
STAGES = 3


def stage_blocks(depth: int, stages: int = STAGES) -> tuple[int, ...]:
    """How ``depth`` blocks spread over the stages: as even as possible, earlier stages first.

    >>> stage_blocks(1), stage_blocks(4), stage_blocks(10)
    ((1, 0, 0), (2, 1, 1), (4, 3, 3))
    """
    return tuple(depth // stages + (1 if i < depth % stages else 0) for i in range(stages))


class CifarResNet(BaselineModel, nn.Module):
    """Stem + ``sum(stage_blocks)`` timm BasicBlocks + pooled linear head; ``forward`` returns logits."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        stage_blocks: tuple[int, ...],
        width: int = 16,
        zero_init_last: bool = True,
        checkpointing: bool = False,
    ):
        super().__init__()
        self.stage_blocks = tuple(stage_blocks)
        self.checkpointing = checkpointing
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),  # BN follows: no bias
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks, cin = [], width
        for stage, count in enumerate(self.stage_blocks):
            cout = width * 2**stage
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                shortcut = None
                if stride != 1 or cin != cout:
                    shortcut = downsample_conv(cin, cout, kernel_size=1, stride=stride, norm_layer=nn.BatchNorm2d)
                blocks.append(BasicBlock(cin, cout, stride=stride, downsample=shortcut))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        name_blocks(self.blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        self.num_features = cin
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # timm's ResNet init: Kaiming normal (fan_out) for convs, BN at identity
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for block in self.blocks:
                block.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled() and not torch.compiler.is_compiling():
                contexts = lambda b=block: (contextlib.nullcontext(), frozen_buffers(b))  # noqa: E731
                x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
            else:
                x = block(x)
        return self.head(x)


def build_timm_resnet(cfg: Any, num_classes: int, in_channels: int, image_size: Any) -> CifarResNet:
    """The ``timm_resnet`` baseline of ``cfg`` (a ModelConfig or a DictConfig with its fields)."""
    depth = int(cfg.depth)  # >= 0: checked when the spec loaded
    options = read_options(cfg.options, OPTIONS, NAME)
    return CifarResNet(
        num_classes,
        in_channels,
        stage_blocks(depth),
        width=options["width"],
        zero_init_last=options["zero_init_last"],
        checkpointing=bool(cfg.checkpointing),
    )
