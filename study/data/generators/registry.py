"""Image generators for generated surrogates: one registry, created by name from a card.

A generator turns ``(params, seed, index)`` into one uint8 RGB image. The shard builder calls ``generate(seed,
start, count, image_size)`` on blocks in parallel processes and resumes builds part-way, so every generator
keeps one contract: image ``i`` depends only on ``(params, seed, i)`` and never on the block it was generated
in, i.e. ``generate(s, 0, 100)[37] == generate(s, 30, 10)[7]`` byte for byte. Per-image randomness therefore
comes from :func:`image_rng`, never from a generator seeded once per block.

Bump a generator's ``version`` whenever its output for the same params changes: manifests record it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeVar

import numpy as np
import pydantic
from pydantic import ConfigDict

ReferenceStats = tuple[list[float], list[float]]


class GeneratorError(ValueError):
    """A generator that cannot be created or run; the message names the generator and the param at fault."""


class Generator(abc.ABC):
    """Base of all generators: typed params, optional reference stats, block-independent generation."""

    name: ClassVar[str]
    version: ClassVar[str]

    class Params(pydantic.BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        self.params = params
        self.reference_stats = reference_stats

    @property
    def follows_teacher_stats(self) -> bool:
        """Whether its images depend on the teacher data's mean/std (matched noise whose params leave them unset):
        two teachers then need two builds of the same card."""
        return False

    @abc.abstractmethod
    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        """Images ``start .. start+count-1`` as uint8 ``(count, image_size, image_size, 3)``."""

    def _check_request(self, seed: int, start: int, count: int, image_size: int) -> None:
        if seed < 0 or start < 0 or count < 0:
            raise GeneratorError(
                f"generator '{self.name}': seed, start and count must be >= 0, got {seed}, {start}, {count}"
            )
        if image_size < 1:
            raise GeneratorError(f"generator '{self.name}': image_size must be >= 1, got {image_size}")


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a surrogate seeded ``seed`` (block independence)."""
    return np.random.default_rng([seed, index])


def channel_stats(
    name: str, mean: list[float] | None, std: list[float] | None, reference_stats: ReferenceStats | None,
    default: tuple[float, float] = (0.5, 0.25),
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per-channel (mean, std) in [0, 1] units as 3-vectors: params, else the teacher's stats, else default.

    One value applies to all three channels (grey teachers such as MNIST-like datasets have one).
    """
    ref_mean, ref_std = reference_stats if reference_stats is not None else (None, None)
    out = []
    for field, given, ref, fallback in (
        ("mean", mean, ref_mean, default[0]),
        ("std", std, ref_std, default[1]),
    ):
        values = given if given is not None else ref if ref is not None else [fallback]
        if len(values) not in (1, 3):
            raise GeneratorError(f"generator '{name}': {field} needs 1 or 3 values, got {list(values)}")
        out.append(np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)).copy())
    if np.any(out[1] < 0):
        raise GeneratorError(f"generator '{name}': std must be >= 0, got {out[1].tolist()}")
    return out[0], out[1]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8: clip, then round half to even (``np.rint``), the same on every machine."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


_REGISTRY: dict[str, type[Generator]] = {}
G = TypeVar("G", bound=type[Generator])


def register_generator(cls: G) -> G:
    """Class decorator: make ``cls`` creatable by ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise GeneratorError(f"generator '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_generator(name: str) -> None:
    """Remove a registered generator (a plugin or test that registered one for a while cleans up after itself)."""
    _REGISTRY.pop(name, None)


def list_generators() -> list[str]:
    """Names of all registered generators, sorted."""
    return sorted(_REGISTRY)


def _format_validation_error(name: str, error: pydantic.ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "params"
        message = "unknown param" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return f"generator '{name}': invalid params: " + "; ".join(parts)


def create_generator(
    name: str, params: dict[str, Any] | None = None, reference_stats: ReferenceStats | None = None
) -> Generator:
    """A generator by registered name, with its params validated (errors name the generator and the param)."""
    if name not in _REGISTRY:
        raise GeneratorError(f"unknown generator '{name}'; known: {', '.join(list_generators())}")
    cls = _REGISTRY[name]
    try:
        typed = cls.Params.model_validate(params or {})
    except pydantic.ValidationError as error:
        raise GeneratorError(_format_validation_error(name, error)) from None
    return cls(typed, reference_stats=reference_stats)
