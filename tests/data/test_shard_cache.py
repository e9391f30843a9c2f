"""The node-local shard cache: one download per shard and node, verified, bounded, used by the trial loader."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from study import storage
from study.config import CardSpec
from study.data import shards
from study.data.build import build_surrogate
from study.data.shards.cache import ShardCache, ShardCacheSpec, cache_counters
from study.data.shards.reader import ShardStream
from tests.s3_servers import S3Server


@pytest.fixture
def s3_surrogate(s3_env: S3Server) -> tuple[str, shards.Manifest]:
    card = CardSpec(
        name="leaves", kind="generated", generator="uniform_noise", count=1024, images_per_sample=128, seed=3
    )
    root = f"s3://{s3_env.make_bucket()}/shards"
    result = build_surrogate(card.model_copy(update={"samples_per_shard": 2}), root)
    return result.root, result.manifest


def delta(before: dict[str, int]) -> dict[str, int]:
    now = cache_counters()
    return {k: now.get(k, 0) - before.get(k, 0) for k in ("fills", "hits", "evictions", "verify_failures")}


def test_concurrent_readers_download_a_shard_once_and_read_the_same_bytes(s3_surrogate, tmp_path: Path) -> None:
    root, manifest = s3_surrogate
    info, uri = manifest.shards[0], manifest.shard_uris(root)[0]
    spec = ShardCacheSpec(str(tmp_path / "cache"), max_bytes=1 << 30)
    before, paths = cache_counters(), []

    def read() -> None:  # each reader its own ShardCache, as each trial process has
        paths.append(ShardCache(spec).local_path(uri, info.sha256, info.bytes))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert delta(before)["fills"] == 1 and delta(before)["hits"] == 3
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == storage.read_bytes(uri)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tar"] == [f"{info.sha256}.tar"]


def test_a_damaged_cached_copy_is_fetched_again(s3_surrogate, tmp_path: Path) -> None:
    root, manifest = s3_surrogate
    info, uri = manifest.shards[0], manifest.shard_uris(root)[0]
    spec = ShardCacheSpec(str(tmp_path / "cache"), max_bytes=1 << 30)
    path = Path(ShardCache(spec).local_path(uri, info.sha256, info.bytes))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = cache_counters()
    ShardCache(spec).local_path(uri, info.sha256, info.bytes)  # a new process: hashes the entry once
    assert delta(before)["verify_failures"] == 1 and delta(before)["fills"] == 1
    assert shards.sha256_of(str(path)) == info.sha256


def test_a_shard_that_differs_from_its_manifest_is_refused_naming_it(s3_surrogate, tmp_path: Path) -> None:
    root, manifest = s3_surrogate
    info, uri = manifest.shards[0], manifest.shard_uris(root)[0]
    cache = ShardCache(ShardCacheSpec(str(tmp_path / "cache"), max_bytes=1 << 30))
    with pytest.raises(shards.ShardError, match=r"shard-000000\.tar"):
        cache.local_path(uri, "0" * 64, info.bytes)
    assert not list((tmp_path / "cache").glob("*.tar"))


def test_eviction_keeps_the_folder_within_its_size(s3_surrogate, tmp_path: Path) -> None:
    root, manifest = s3_surrogate
    one = manifest.shards[0].bytes
    cache = ShardCache(ShardCacheSpec(str(tmp_path / "cache"), max_bytes=int(2.5 * one), grace_s=0))
    for info, uri in zip(manifest.shards, manifest.shard_uris(root), strict=True):
        cache.local_path(uri, info.sha256, info.bytes)
        assert cache.total_bytes() <= int(2.5 * one)
    assert len(manifest.shards) == 4 and len(list((tmp_path / "cache").glob("*.tar"))) == 2


def test_the_loader_reads_through_the_cache_the_same_batches(s3_surrogate, tmp_path: Path) -> None:
    root, manifest = s3_surrogate
    plain = ShardStream(root, manifest, batch_size=64, seed=1)
    cached = ShardStream(
        root, manifest, batch_size=64, seed=1, cache=ShardCache(ShardCacheSpec(str(tmp_path / "c"), 1 << 30))
    )
    before = cache_counters()
    a = [b.numpy() for _, b in zip(range(40), iter(plain), strict=False)]  # 40 batches: 2.5 epochs
    b = [b.numpy() for _, b in zip(range(40), iter(cached), strict=False)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert delta(before)["fills"] == len(manifest.shards) and delta(before)["hits"] >= len(manifest.shards)


def test_environment_overrides_the_spec_and_zero_turns_the_cache_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_STUDY_SHARD_CACHE", "/nvme/cache")
    assert ShardCacheSpec.from_settings("/spec/cache", 5).folder == "/nvme/cache"
    monkeypatch.setenv("KD_STUDY_SHARD_CACHE_GB", "0")
    assert ShardCacheSpec.from_settings("/spec/cache", 5) is None
    monkeypatch.delenv("KD_STUDY_SHARD_CACHE")
    monkeypatch.delenv("KD_STUDY_SHARD_CACHE_GB")
    assert ShardCacheSpec.from_settings("/spec/cache", 5) == ShardCacheSpec("/spec/cache", 5 << 30)
