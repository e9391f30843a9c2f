"""CIFAR ResNets of the KD literature: resnet8 ... resnet110, resnet8x4, resnet32x4.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2: a 3x3 stem and three stages
of 6n+2 layers, in the variant of RepDistiller (Tian et al., "Contrastive Representation Distillation",
ICLR 2020) that mdistiller (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022) reuses: 1x1-conv
projection shortcuts (option B) and, for the "x4" models, stage widths (32, 64, 128, 256) instead of
(16, 16, 32, 64). Layer shapes and parameter names match theirs (resnet8x4: 1.23M, resnet32x4: 7.43M
parameters at 100 classes). The reference's fixed `AvgPool2d(8)` becomes adaptive average pooling, which
is identical at 32 px and also serves 28-64 px inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from study.models.registry import register_model
from study.models.weight_init import init_weights_


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, a ReLU between them and after the residual sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + residual)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        depth: total layer count, 6n+2 (n basic blocks per stage).
        widths: channels of the stem and of the three stages.
        num_classes: logits produced.
        in_channels: channels of the input images.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[1], blocks, stride=1)
        self.layer2 = self._make_layer(widths[2], blocks, stride=2)
        self.layer3 = self._make_layer(widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights_(self, linear="default")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_THIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register_model(name)
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _THIN)
_register("resnet8x4", 8, _X4)
_register("resnet32x4", 32, _X4)
