"""A build never reuses shards whose images a newer generator would draw differently."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import CardSpec
from study.data import shards
from study.data.build import build_surrogate


def test_shards_of_an_older_generator_version_are_not_reused(tmp_path: Path) -> None:
    """Dead leaves v2 covers the image: shards a v1 build left must not pass for the new surrogate."""
    card = CardSpec(name="dl", kind="generated", generator="dead_leaves", count=16, image_size=8, images_per_sample=8)
    root = build_surrogate(card, str(tmp_path)).root
    assert build_surrogate(card, str(tmp_path)).reused
    old = shards.read_manifest(root)
    shards.write_manifest(root, old.model_copy(update={"generator_version": "1"}))
    with pytest.raises(shards.ShardError, match="generator version"):
        build_surrogate(card, str(tmp_path))
