"""torchvision ResNet-18/34/50 with a small-image stem: `tv_resnet18`, `tv_resnet34`, `tv_resnet50`.

He et al. (CVPR 2016) as torchvision builds it, with the stem changed the usual way for 28-64 px inputs
(as in the CIFAR ResNet-18/50 of kuangliu/pytorch-cifar and RepDistiller's `resnetv2`): the 7x7 stride-2
conv becomes a 3x3 stride-1 conv and the max-pool is removed, so a 32 px image still has 4x4 features
before the last pool instead of 1x1. Weights are never loaded: these are trained from scratch as teachers.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

from study.models.registry import register_model

_STEM_CHANNELS = 64


def small_image_resnet(
    builder: Callable[..., torchvision.models.ResNet], num_classes: int, in_channels: int
) -> torchvision.models.ResNet:
    """Builds an untrained torchvision ResNet and swaps its stem for a 3x3 stride-1 conv without max-pool."""
    model = builder(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, _STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
    # torchvision's own init for convs, applied to the new stem as well.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


@register_model("tv_resnet18")
def tv_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    return small_image_resnet(torchvision.models.resnet18, num_classes, in_channels)


@register_model("tv_resnet34")
def tv_resnet34(num_classes: int, in_channels: int) -> nn.Module:
    return small_image_resnet(torchvision.models.resnet34, num_classes, in_channels)


@register_model("tv_resnet50")
def tv_resnet50(num_classes: int, in_channels: int) -> nn.Module:
    return small_image_resnet(torchvision.models.resnet50, num_classes, in_channels)
