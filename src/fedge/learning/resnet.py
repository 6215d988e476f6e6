"""ResNets built as flat sequences of blocks (stem layers, BasicBlocks, pooling, classifier).

Each block is a top-level child, so that applying the children in order computes the forward
pass and any boundary between two children is a cut point for split learning.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class SequentialNet(nn.Sequential):
    """An nn.Sequential whose top-level children are the model's blocks, in forward order."""

    def layers(self) -> list[nn.Module]:
        """The top-level blocks (cut points lie between consecutive ones)."""
        return list(self)


class ResidualAdd(nn.Module):
    """``a + b`` as a module, so that forward hooks (the profiler) see residual additions."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.add = ResidualAdd()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        result: torch.Tensor = self.relu2(self.add(out, identity))
        return result


def _stages(
    in_channels: int, widths: Sequence[int], depths: Sequence[int], strides: Sequence[int]
) -> list[tuple[str, nn.Module]]:
    blocks: list[tuple[str, nn.Module]] = []
    channels = in_channels
    for s, (width, depth, stride) in enumerate(zip(widths, depths, strides, strict=True), 1):
        for b in range(depth):
            blocks.append((f"layer{s}_{b}", BasicBlock(channels, width, stride if b == 0 else 1)))
            channels = width
    return blocks


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _head(channels: int, n_classes: int) -> list[tuple[str, nn.Module]]:
    return [
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels, n_classes)),
    ]


def resnet34_net(in_channels: int, n_classes: int) -> SequentialNet:
    """ResNet-34 (He et al. 2016, ImageNet layout: 7×7 stem, stages 3-4-6-3 of 64..512)."""
    stem: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)),
        ("bn1", nn.BatchNorm2d(64)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", nn.MaxPool2d(3, 2, 1)),
    ]
    body = _stages(64, (64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2))
    return _init(SequentialNet(OrderedDict(stem + body + _head(512, n_classes))))  # type: ignore[return-value]


def cifar_resnet(in_channels: int, n_classes: int, blocks_per_stage: int = 1) -> SequentialNet:
    """CIFAR-style ResNet-(6n+2) for small images: 3×3 stem, stages of 16, 32, 64 channels.

    ``blocks_per_stage`` n = 1 gives ResNet-8, n = 3 ResNet-20.
    """
    stem: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)),
        ("bn1", nn.BatchNorm2d(16)),
        ("relu", nn.ReLU(inplace=True)),
    ]
    n = blocks_per_stage
    body = _stages(16, (16, 32, 64), (n, n, n), (1, 2, 2))
    return _init(SequentialNet(OrderedDict(stem + body + _head(64, n_classes))))  # type: ignore[return-value]
