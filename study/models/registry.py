"""The one model registry of kd-study: every architecture is built by name, the way timm does it.

Teachers, students and specs refer to a model by a string (`arch: resnet8x4`); this module maps that string to
a factory. Factories take the number of classes and the number of input channels and return an untrained
`nn.Module` whose `forward(x)` returns logits of shape (N, num_classes). No factory ever loads weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn


class ModelFactory(Protocol):
    """Builds an untrained classifier; the contract every registered model follows."""

    def __call__(self, num_classes: int, in_channels: int) -> nn.Module: ...


_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers a factory under `name` (timm's `@register_model`, with an explicit name).

    Raises:
        ValueError: `name` is already registered, so two modules would silently fight over it.
    """

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Builds the registered model `name` with freshly initialised weights.

    The initial weights depend only on the torch RNG state, so seeding torch before this call makes them
    reproducible.

    Raises:
        ValueError: `name` is not registered (the message lists the known names), or `num_classes` /
            `in_channels` is not a positive integer.
    """
    if name not in _REGISTRY and torchvision_name(name) is None:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}, "
            "or a torchvision.models classification model (e.g. resnet18, efficientnet_b0)"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r} for model {name!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r} for model {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels)
    if in_channels != 3:
        raise ValueError(f"torchvision model {name!r} takes 3-channel input, not {in_channels}")
    import torchvision

    return torchvision.models.get_model(torchvision_name(name), weights=None, num_classes=num_classes)


TORCHVISION_PREFIX = "torchvision."


def torchvision_name(name: str) -> str | None:
    """The torchvision.models classification name `name` stands for, or None.

    A zoo name wins over torchvision's (`vgg11` is the zoo's CIFAR VGG); `torchvision.vgg11` picks torchvision's.
    torchvision's own models keep their own stems (ImageNet-style, e.g. resnet18's 7x7 conv), unlike `tv_*`.
    """
    import torchvision

    bare = name.removeprefix(TORCHVISION_PREFIX)
    if name in _REGISTRY and not name.startswith(TORCHVISION_PREFIX):
        return None
    return bare if bare in torchvision.models.list_models(module=torchvision.models) else None
