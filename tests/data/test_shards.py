"""Shard layout, manifest, verification, resumable builds and the trial's streaming reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from study.config import CardSpec
from study.data import shards
from study.data.build import build_surrogate
from study.data.build_plan import plan_shards
from study.data.shards import ShardError
from study.data.shards.reader import ShardStream, read_all, to_teacher_input


def digits_card(**kw) -> CardSpec:
    return CardSpec(
        name="digits_train",
        kind="real",
        source={"name": "digits", "split": "train"},
        images_per_sample=64,
        samples_per_shard=4,
        **kw,
    )


@pytest.fixture
def built(tmp_path: Path):
    return build_surrogate(digits_card(), str(tmp_path))


class TestBuild:
    def test_manifest_counts_match_the_shards(self, built) -> None:
        m = built.manifest
        assert m.count == 1257 and sum(s.count for s in m.shards) == 1257
        assert [s.name for s in m.shards] == [f"shard-{i:06d}.tar" for i in range(5)]
        assert m.labelled and sum(m.class_histogram) == 1257
        shards.verify(built.root)

    def test_same_card_gives_byte_identical_shards(self, tmp_path: Path, built) -> None:
        other = build_surrogate(digits_card(), str(tmp_path / "again"))
        assert [s.sha256 for s in other.manifest.shards] == [s.sha256 for s in built.manifest.shards]

    def test_first_images_are_class_interleaved(self, built) -> None:
        _, labels = read_all(built.root, built.manifest, limit=30)
        assert labels.tolist() == list(range(10)) * 3

    def test_rebuild_reuses_a_finished_surrogate(self, tmp_path: Path, built) -> None:
        again = build_surrogate(digits_card(), str(tmp_path))
        assert again.reused and again.shards_written == 0

    def test_killed_build_resumes_without_rewriting_finished_shards(self, tmp_path: Path, built) -> None:
        root = Path(built.root)
        (root / shards.MANIFEST).unlink()  # as if killed before the manifest was written
        (root / "shard-000003.tar").unlink()  # ... and before shard 3 finished
        mtimes = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*.tar")}
        resumed = build_surrogate(digits_card(), str(tmp_path))
        assert resumed.shards_written == 1 and resumed.shards_kept == 4
        assert {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*.tar") if p.name in mtimes} == mtimes
        assert resumed.manifest == built.manifest

    def test_a_different_card_under_the_same_name_is_refused(self, tmp_path: Path, built) -> None:
        with pytest.raises(ShardError, match="different card"):
            build_surrogate(digits_card(seed=5), str(tmp_path))

    def test_plan_covers_every_image_once(self) -> None:
        plan = plan_shards(1000, 64, 4)
        ranges = [r for shard in plan for r in shard]
        assert sum(n for _, n in ranges) == 1000 and ranges[-1] == (960, 40)


class TestCorruption:
    def test_verify_names_a_truncated_shard(self, built) -> None:
        path = Path(built.root) / "shard-000002.tar"
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(ShardError, match=r"shard-000002\.tar"):
            shards.verify(built.root)

    def test_verify_names_an_altered_shard(self, built) -> None:
        path = Path(built.root) / "shard-000001.tar"
        data = bytearray(path.read_bytes())
        data[5000] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(ShardError, match=r"shard-000001.tar: sha256"):
            shards.verify(built.root)

    def test_reader_names_a_truncated_shard(self, built) -> None:
        path = Path(built.root) / "shard-000004.tar"
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(ShardError, match=r"shard-000004\.tar"):
            read_all(built.root, built.manifest)

    def test_missing_manifest_says_how_to_build(self, tmp_path: Path) -> None:
        with pytest.raises(ShardError, match="kd-study data build"):
            shards.read_manifest(str(tmp_path / "nothing"))


class TestStream:
    def test_stream_yields_shuffled_full_batches_from_every_shard(self, built) -> None:
        stream = ShardStream(built.root, built.manifest, batch_size=100, seed=0, shuffle_buffer=256)
        it = iter(stream)
        batches = [next(it) for _ in range(13)]  # one epoch is 12 full batches
        assert all(b.shape == (100, 32, 32, 1) and b.dtype == torch.uint8 for b in batches)
        first_epoch = torch.cat(batches[:12])
        all_images, _ = read_all(built.root, built.manifest)
        # every image of an epoch comes from the surrogate, in an order unlike the stored one
        assert not torch.equal(first_epoch[:100], torch.from_numpy(all_images[:100]))
        assert len({bytes(x.numpy()) for x in first_epoch}) > 1150

    def test_same_seed_gives_the_same_stream(self, built) -> None:
        a = iter(ShardStream(built.root, built.manifest, 64, seed=1))
        b = iter(ShardStream(built.root, built.manifest, 64, seed=1))
        assert all(torch.equal(next(a), next(b)) for _ in range(30))

    def test_limit_reads_only_the_first_images(self, built) -> None:
        stream = ShardStream(built.root, built.manifest, batch_size=50, seed=0, limit=100, shuffle_buffer=50)
        seen = torch.cat([b for _, b in zip(range(4), stream, strict=False)])
        first, _ = read_all(built.root, built.manifest, limit=100)
        allowed = {bytes(x) for x in first}
        assert all(bytes(x.numpy()) in allowed for x in seen)


def test_rgb_surrogates_are_converted_for_grey_teachers_and_resized() -> None:
    rgb = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    rgb[..., 1] = 255
    out = to_teacher_input(rgb, channels=1, image_size=32)
    assert out.shape == (2, 1, 32, 32) and int(out[0, 0, 5, 5]) == round(0.587 * 255)
    grey = torch.full((1, 8, 8, 1), 7, dtype=torch.uint8)
    assert to_teacher_input(grey, 3, 8).shape == (1, 3, 8, 8)
