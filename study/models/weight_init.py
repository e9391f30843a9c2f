"""Weight initialisation shared by the CIFAR KD zoo.

RepDistiller and mdistiller (Tian et al., ICLR 2020; Zhao et al., CVPR 2022) initialise every conv with
He/Kaiming normal in fan-out mode for ReLU, N(0, 2 / (k*k*C_out)) (their WRN, VGG and MobileNetV2 write it
out by hand, their ResNet calls `kaiming_normal_`: the same distribution), and every BatchNorm with weight 1,
bias 0. They differ only in the classifier, hence the `linear` switch.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

LinearInit = Literal["default", "zero_bias", "normal_0.01"]


def init_weights_(model: nn.Module, linear: LinearInit = "default") -> None:
    """Initialises `model` in place as the references do.

    Args:
        model: the network; every `nn.Conv2d`, `nn.BatchNorm2d` and `nn.Linear` inside it is touched.
        linear: `default` keeps PyTorch's Linear init (reference ResNet); `zero_bias` zeroes the bias only
            (reference WRN); `normal_0.01` draws weights from N(0, 0.01^2) and zeroes the bias (reference
            VGG and MobileNetV2).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear == "normal_0.01":
                nn.init.normal_(module.weight, 0.0, 0.01)
            if linear != "default" and module.bias is not None:
                nn.init.zeros_(module.bias)
