"""Wide residual networks wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016): pre-activation blocks (BN-ReLU-conv), depth
6n+4, stage widths 16k, 32k, 64k, in the form RepDistiller (Tian et al., ICLR 2020) and mdistiller use for
CIFAR KD (wrn_40_2: 2.26M, wrn_16_2: 0.70M parameters at 100 classes), with their parameter names. As in
the reference, a block that changes width applies its projection shortcut to the pre-activated input.
Dropout is left out: the KD zoo trains with dropRate 0.
"""

from __future__ import annotations

import torch
from torch import nn

from study.models.registry import register_model
from study.models.weight_init import init_weights_


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus identity or 1x1 projection shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        # Name kept from the reference so that its checkpoints map onto this module key for key.
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(pre) + out


class NetworkBlock(nn.Module):
    """One stage: `depth` wide blocks, the first one changing width and stride."""

    def __init__(self, depth: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for small images.

    Args:
        depth: 6n+4 (n blocks per stage).
        widen_factor: k, the width multiplier of the three stages.
        num_classes: logits produced.
        in_channels: channels of the input images.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights_(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(depth: int, widen_factor: int) -> None:
    @register_model(f"wrn_{depth}_{widen_factor}")
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes, in_channels)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
