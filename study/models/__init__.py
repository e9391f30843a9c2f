"""kd-study's model zoo: the CIFAR knowledge-distillation networks plus torchvision ResNets, one registry.

Build any model by name with `create_model(name, num_classes, in_channels)`; `list_models()` names them all.
Every model maps (N, in_channels, H, W) images, 28 <= H, W <= 64, to (N, num_classes) logits and ends in
adaptive average pooling, so one architecture serves grey 28 px digits and 64 px RGB alike.

Families (the CIFAR ones follow RepDistiller / mdistiller layer for layer, Tian et al., ICLR 2020):
resnet8 ... resnet110, resnet8x4, resnet32x4 (`cifar_resnet`); wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
(`wide_resnet`); vgg8, vgg11, vgg13 with BN (`vgg`); mobilenetv2 (width 0.5), mobilenetv2_w1
(`mobilenetv2`); shufflenetv2 (`shufflenetv2`); tv_resnet18/34/50 (`torchvision_resnet`).
"""

from __future__ import annotations

import importlib
from typing import Any

# The family modules register their models when imported; they import torch, so the package loads them on first
# use of the registry (PEP 562): `study.models.names` (the zoo's names, for checking a spec) stays torch-free.
_FAMILIES = ("cifar_resnet", "mobilenetv2", "shufflenetv2", "torchvision_resnet", "vgg", "wide_resnet")
_REGISTRY_NAMES = ("ModelFactory", "create_model", "list_models", "register_model")

__all__ = [*_REGISTRY_NAMES, *_FAMILIES]


def __getattr__(name: str) -> Any:
    if name in _FAMILIES or name in _REGISTRY_NAMES:
        for family in _FAMILIES:
            importlib.import_module(f"study.models.{family}")
        if name in _FAMILIES:
            return importlib.import_module(f"study.models.{name}")
        return getattr(importlib.import_module("study.models.registry"), name)
    raise AttributeError(f"module 'study.models' has no attribute {name!r}")
