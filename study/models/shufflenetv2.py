"""ShuffleNetV2 1x for small images: `shufflenetv2`.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design" (ECCV 2018), in the
CIFAR form of RepDistiller (Tian et al., ICLR 2020) and mdistiller (`ShuffleV2`: net size 1, stage widths
116/232/464, 1024-channel head, blocks (3, 7, 3); 1.36M parameters at 100 classes), with their parameter
names: a 1x1 stem conv without max-pool, three stages each opened by a stride-2 down block. One deliberate
difference: the references leave PyTorch's default init here, kd-study initialises this model like the
rest of the zoo (Kaiming fan-out convs, BN 1/0) so that every student starts from the same recipe.
"""

from __future__ import annotations

import torch
from torch import nn

from study.models.registry import register_model
from study.models.weight_init import init_weights_

_STAGE_WIDTHS = (116, 232, 464)
_STAGE_BLOCKS = (3, 7, 3)
_HEAD_CHANNELS = 1024
_STEM_CHANNELS = 24


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleaves the channels of `groups` groups: [N, g*c, H, W] -> view [N, g, c] -> transpose -> merge."""
    n, channels, h, w = x.shape
    return x.reshape(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


class ShuffleBasicBlock(nn.Module):
    """Stride-1 unit: split the channels, transform one half (1x1, 3x3 depthwise, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        kept, transformed = x[:, :half], x[:, half:]
        out = torch.relu(self.bn1(self.conv1(transformed)))
        out = self.bn2(self.conv2(out))
        out = torch.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1))


class DownBlock(nn.Module):
    """Stride-2 unit: two branches over the whole input, each giving half the output channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 of the CIFAR KD zoo.

    Args:
        num_classes: logits produced.
        in_channels: channels of the input images.
    """

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, _STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        stages = []
        channels = _STEM_CHANNELS
        for width, blocks in zip(_STAGE_WIDTHS, _STAGE_BLOCKS, strict=True):
            stages.append(nn.Sequential(DownBlock(channels, width), *(ShuffleBasicBlock(width) for _ in range(blocks))))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, _HEAD_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(_HEAD_CHANNELS)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(_HEAD_CHANNELS, num_classes)
        init_weights_(self, linear="default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int) -> nn.Module:
    """The KD zoo's ShuffleNetV2 student (`ShuffleV2`, net size 1)."""
    return ShuffleNetV2(num_classes, in_channels)
