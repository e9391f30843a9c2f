"""MobileNetV2 for small images: `mobilenetv2` (width 0.5, the KD zoo's student) and `mobilenetv2_w1`.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), in the CIFAR form of
RepDistiller (Tian et al., ICLR 2020) and mdistiller (`mobile_half`: expansion 6, width 0.5; 0.81M
parameters at 100 classes), with their parameter names. That form differs from torchvision's: the stem
conv has stride 2 while the second stage keeps stride 1, the t=1 block still has its 1x1 expansion conv,
widths are `int(c * width)` without rounding to multiples of 8, and the head has 1280 channels at any
width <= 1. Their fixed average pool becomes adaptive average pooling (identical at 32 px).
"""

from __future__ import annotations

import torch
from torch import nn

from study.models.registry import register_model
from study.models.weight_init import init_weights_

# (expansion t, output channels c, repeats n, first stride s); t=None means "the model's expansion".
_SETTING: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
_HEAD_CHANNELS = 1280


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; identity shortcut when shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 as in the CIFAR KD zoo.

    Args:
        expansion: t of the inverted residual blocks after the first.
        width: width multiplier of the stem and the blocks.
        num_classes: logits produced.
        in_channels: channels of the input images.
    """

    def __init__(self, expansion: int, width: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            out_channels = int(c * width)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(_HEAD_CHANNELS * width) if width > 1.0 else _HEAD_CHANNELS
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_weights_(self, linear="normal_0.01")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int) -> nn.Module:
    """The KD zoo's MobileNetV2 student (`mobile_half`: expansion 6, width 0.5)."""
    return MobileNetV2(6, 0.5, num_classes, in_channels)


@register_model("mobilenetv2_w1")
def mobilenetv2_w1(num_classes: int, in_channels: int) -> nn.Module:
    """Full-width MobileNetV2 of the same CIFAR form (expansion 6, width 1.0)."""
    return MobileNetV2(6, 1.0, num_classes, in_channels)
