"""VGG with batch norm for small images: vgg8, vgg11, vgg13.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015), in the
CIFAR form of RepDistiller (Tian et al., ICLR 2020) and mdistiller: five conv blocks (configurations S, A, B),
max-pooling after the first three, a fourth pool only for 64 px inputs (as the reference does for
Tiny-ImageNet), global average pooling and a single linear classifier on 512 features (vgg8: 3.96M, vgg13:
9.46M parameters at 100 classes). Convs keep their bias, as in the reference. Each block leaves out its
last ReLU and the forward pass applies it, so the block outputs are the pre-activations feature KD uses.
"""

from __future__ import annotations

import torch
from torch import nn

from study.models.registry import register_model
from study.models.weight_init import init_weights_

_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}

# Inputs at least this tall get the fourth max-pool (the reference pools there for exactly 64 px).
_POOL3_MIN_SIZE = 64


def _conv_block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN for 28-64 px images.

    Args:
        config: channels of the convs in each of the five blocks.
        num_classes: logits produced.
        in_channels: channels of the input images.
    """

    def __init__(self, config: list[list[int]], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.block0 = _conv_block(config[0], in_channels)
        self.block1 = _conv_block(config[1], config[0][-1])
        self.block2 = _conv_block(config[2], config[1][-1])
        self.block3 = _conv_block(config[3], config[2][-1])
        self.block4 = _conv_block(config[4], config[3][-1])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[4][-1], num_classes)
        init_weights_(self, linear="normal_0.01")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(torch.relu(self.block0(x)))
        x = self.pool1(torch.relu(self.block1(x)))
        x = self.pool2(torch.relu(self.block2(x)))
        x = torch.relu(self.block3(x))
        if height >= _POOL3_MIN_SIZE:
            x = self.pool3(x)
        x = torch.relu(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def _register(name: str) -> None:
    @register_model(name)
    def build(num_classes: int, in_channels: int) -> nn.Module:
        return VGG(_CONFIGS[name], num_classes, in_channels)


for _name in _CONFIGS:
    _register(_name)
