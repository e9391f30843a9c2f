"""The zoo's model names, without importing torch: what `kd-study validate` checks a spec's archs against.

`tests/models/test_models.py` pins this list to the registry's (`study.models.list_models()`).
"""

from __future__ import annotations

ZOO_MODELS = (
    "mobilenetv2",
    "mobilenetv2_w1",
    "resnet110",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet8",
    "resnet8x4",
    "shufflenetv2",
    "tv_resnet18",
    "tv_resnet34",
    "tv_resnet50",
    "vgg11",
    "vgg13",
    "vgg8",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
)
IMPORTED_FORMATS = ("torchscript", "export")
"""A teacher's `arch` when it was imported as a program (no registry entry)."""


def is_known_arch(arch: str) -> bool:
    """A zoo name, else a torchvision.models classification name (torchvision is imported only for those)."""
    if arch in ZOO_MODELS:
        return True
    from study.models.registry import torchvision_name

    return torchvision_name(arch) is not None
