"""Convolutional backbones, each as defined by the original implementation it comes from.

Every backbone takes ``in_channels``, exposes ``out_channels`` and declares
``primary_caps``: the keyword arguments of the ``PrimaryCaps`` layer its reference puts
on top (kernel size, BatchNorm). Registered in ``capsbench.registry.BACKBONES``.

Output grids for a 32x32 input: ``sr_convnet`` 4x4, ``resnet20`` 8x8, ``vb_stem`` 14x14,
``em_stem`` 16x16, ``tiny`` 4x4. The class capsule layer adapts to whatever grid is left.

Example::

    >>> import torch
    >>> net = SRConvNet(in_channels=1)
    >>> net(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 128, 4, 4])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    padding = kernel // 2 if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),  # BN follows: no bias
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    out_channels: int
    primary_caps: ClassVar[dict[str, Any]] = {"kernel_size": 3, "batch_norm": True}


class SRConvNet(Backbone):
    """SR-CapsNet's "ConvNet" (smallNORB / MNIST-like): six 3x3 conv + BN + ReLU.

    Channels 16, 32, 32, 64, 64, 128; strides 1, 2, 1, 2, 1, 2; 32x32 -> 4x4.
    """

    def __init__(self, in_channels: int, planes: int = 16):
        super().__init__()
        widths = [planes, 2 * planes, 2 * planes, 4 * planes, 4 * planes, 8 * planes]
        strides = [1, 2, 1, 2, 1, 2]
        layers, cin = [], in_channels
        for cout, stride in zip(widths, strides):
            layers.append(conv_bn_relu(cin, cout, 3, stride))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _BasicBlock(nn.Module):
    """CIFAR ResNet block; the shortcut is "option A" (subsample, zero-pad channels) as in SR-CapsNet."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(Backbone):
    """CIFAR ResNet-20 (SR-CapsNet's CIFAR/SVHN backbone): 3 stages x 3 blocks, 16/32/64 channels.

    Strides 1, 2, 2: a 32x32 input leaves an 8x8 grid. SR-CapsNet reaches 4x4 by giving its
    first stacked capsule layer stride 2 (the builder's ``head: reference``); the paper's
    protocol keeps every stacked layer at stride 1, so there the class layer sees 8x8.
    """

    def __init__(self, in_channels: int, planes: int = 16, blocks: int = 3):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, planes, 3, 1)
        stages, cin = [], planes
        for width, stride in ((planes, 1), (2 * planes, 2), (4 * planes, 2)):
            for b in range(blocks):
                stages.append(_BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class VBStem(Backbone):
    """VB routing's stem: conv 5x5 stride 2, no padding, no bias, BN, ReLU, 64 channels.

    Kaiming-uniform conv init as in the reference; primary capsules 1x1 with affine BN.
    """

    primary_caps: ClassVar[dict[str, Any]] = {"kernel_size": 1, "batch_norm": True}

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        self.layers = conv_bn_relu(in_channels, channels, 5, 2, padding=0)
        nn.init.kaiming_uniform_(self.layers[0].weight)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class EMStem(Backbone):
    """EM routing's stem (yl-1993 port): conv 5x5 stride 2 padding 2, BN, ReLU, 64 channels.

    Primary capsules 1x1 with bias and no BatchNorm, as in the port.
    """

    primary_caps: ClassVar[dict[str, Any]] = {"kernel_size": 1, "batch_norm": False}

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        self.layers = conv_bn_relu(in_channels, channels, 5, 2, padding=2)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyConvNet(Backbone):
    """A small fast stem for quick starts and tests: three 3x3 stride-2 convs, 32x32 -> 4x4."""

    def __init__(self, in_channels: int, channels: int = 16):
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_relu(in_channels, channels // 2, 3, 2),
            conv_bn_relu(channels // 2, channels, 3, 2),
            conv_bn_relu(channels, channels, 3, 2),
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
