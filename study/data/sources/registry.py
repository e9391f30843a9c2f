"""The registry of real image sources: each source module registers its loaders here by name.

This module imports none of the sources (the `study.data.sources` package imports them for their registration),
so a source can use the registry without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from study.data.images import LabelledImages

SPLITS = ("train", "val", "test")


class SourceError(ValueError):
    """A real source is unknown, misconfigured or missing its files; the message says how to fix it."""


RealLoader = Callable[..., LabelledImages]


_SOURCES: dict[str, RealLoader] = {}


def register_source(name: str) -> Callable[[RealLoader], RealLoader]:
    def wrap(fn: RealLoader) -> RealLoader:
        _SOURCES[name] = fn
        return fn

    return wrap


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def load_source(
    name: str,
    split: str,
    image_size: int,
    *,
    root: str | None = None,
    count: int | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
) -> LabelledImages:
    if name not in _SOURCES:
        raise SourceError(f"unknown real source '{name}'; known: {list_sources()}")
    return _SOURCES[name](split=split, image_size=image_size, root=root, count=count, seed=seed, **(params or {}))


def check_split(name: str, split: str, allowed: tuple[str, ...] = SPLITS) -> None:
    if split not in allowed:
        raise SourceError(f"source '{name}' has no split '{split}'; splits: {list(allowed)}")
