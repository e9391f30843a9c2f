"""A manifest on storage is untrusted input: its names never become paths outside the shard cache or the root.

Whoever can write the study's bucket prefix can write a manifest; `name` and `sha256` become storage keys, cache
file names and lock file names, so a `../` in either must be refused, naming the field, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from study import storage
from study.config import CardSpec
from study.data import shards
from study.data.build import build_surrogate
from study.data.shards.cache import ShardCache, ShardCacheSpec
from tests.s3_servers import S3Server


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def crafted(s3_env: S3Server) -> tuple[str, dict]:
    """A real surrogate on the loopback S3 server whose manifest was then rewritten with `../` in both fields."""
    card = CardSpec(
        name="leaves", kind="generated", generator="uniform_noise", count=256, images_per_sample=128, seed=1
    )
    result = build_surrogate(card, f"s3://{s3_env.make_bucket()}/shards")
    raw = json.loads(result.manifest.model_dump_json())
    raw["shards"][0]["name"] = "../../escaped.tar"
    raw["shards"][0]["sha256"] = "../../../escaped"
    storage.write_text(storage.join(result.root, shards.MANIFEST), json.dumps(raw))
    return result.root, raw


def test_crafted_manifest_is_refused_naming_both_fields(crafted: tuple[str, dict]) -> None:
    root, _ = crafted
    with pytest.raises(shards.ShardError) as caught:
        shards.read_manifest(root)
    message = str(caught.value)
    assert "manifest.json: invalid manifest" in message
    assert "shards.0.name" in message and "shards.0.sha256" in message


def test_cache_refuses_a_crafted_sha256_and_writes_nothing_outside_its_folder(
    crafted: tuple[str, dict], tmp_path: Path
) -> None:
    """The cache checks the digest itself too, so a caller that skipped the manifest's validation is still safe."""
    root, raw = crafted
    cache = ShardCache(ShardCacheSpec(str(tmp_path / "a" / "b" / "cache"), max_bytes=1 << 30))
    uri = storage.join(root, "shard-000000.tar")
    with pytest.raises(shards.ShardError) as caught:
        cache.local_path(uri, raw["shards"][0]["sha256"], raw["shards"][0]["bytes"])
    assert files_under(tmp_path) == {"a", "a/b", "a/b/cache"}  # ../../../ from the cache is tmp_path
    assert "sha256 '../../../escaped': expected 64 lowercase hex digits" in str(caught.value)


def test_a_genuine_digest_still_fills_the_cache(crafted: tuple[str, dict], tmp_path: Path) -> None:
    root, _ = crafted
    uri = storage.join(root, "shard-000000.tar")
    data = storage.read_bytes(uri)
    cache = ShardCache(ShardCacheSpec(str(tmp_path / "cache"), max_bytes=1 << 30))
    path = cache.local_path(uri, hashlib.sha256(data).hexdigest(), len(data))
    assert Path(path).parent == tmp_path / "cache" and Path(path).read_bytes() == data
