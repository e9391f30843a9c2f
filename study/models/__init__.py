"""kd-study's model zoo: the CIFAR knowledge-distillation networks plus torchvision ResNets, one registry.

Build any model by name with `create_model(name, num_classes, in_channels)`; `list_models()` names them all.
Every model maps (N, in_channels, H, W) images, 28 <= H, W <= 64, to (N, num_classes) logits and ends in
adaptive average pooling, so one architecture serves grey 28 px digits and 64 px RGB alike.

Families (the CIFAR ones follow RepDistiller / mdistiller layer for layer, Tian et al., ICLR 2020):
resnet8 ... resnet110, resnet8x4, resnet32x4 (`cifar_resnet`); wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
(`wide_resnet`); vgg8, vgg11, vgg13 with BN (`vgg`); mobilenetv2 (width 0.5), mobilenetv2_w1
(`mobilenetv2`); shufflenetv2 (`shufflenetv2`); tv_resnet18/34/50 (`torchvision_resnet`).
"""

# The family modules register their models on import.
from study.models import cifar_resnet, mobilenetv2, shufflenetv2, torchvision_resnet, vgg, wide_resnet
from study.models.registry import ModelFactory, create_model, list_models, register_model

__all__ = [
    "ModelFactory",
    "cifar_resnet",
    "create_model",
    "list_models",
    "mobilenetv2",
    "register_model",
    "shufflenetv2",
    "torchvision_resnet",
    "vgg",
    "wide_resnet",
]
