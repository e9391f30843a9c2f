"""Surrogate shards on S3 end to end, through the real CLI and the trial's own reader: a build to `s3://` equals a
local build byte for byte, `verify`/`ls` work on it, the loader reads it back exactly, bad or missing shards are
named, faults are survived (retries, Range resumptions), SeaweedFS checks credentials, an unreachable location
fails before any work, and a 2-worker DataLoader splits shards so an epoch holds every image exactly once."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from study import storage
from study.cli.app import app
from study.data import shards
from study.data.shards import ShardError
from study.data.shards.reader import ShardStream, iter_blocks, read_all, stream_loader
from study.data.shards.s3_stream import ReadAhead
from study.storage import StorageError
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import S3Server, free_port

runner = CliRunner()

NAME = "leaves_s3"
COUNT = 192  # 4 shards of 3 blocks of 16 images
PER_SAMPLE, PER_SHARD = 16, 3


def write_card(folder: Path, image_size: int = 32, count: int = COUNT, per_shard: int = PER_SHARD) -> Path:
    card = folder / f"{NAME}.yaml"
    card.write_text(
        f"name: {NAME}\nkind: generated\ngenerator: dead_leaves\ncount: {count}\nimage_size: {image_size}\n"
        f"seed: 5\nimages_per_sample: {PER_SAMPLE}\nsamples_per_shard: {per_shard}\n"
    )
    return card


def cli(*args: str) -> tuple[int, str]:
    """Exit code and output of `kd-study ARGS`, the output unwrapped (rich folds long URIs at 80 columns)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output.replace("\n", "")


def build(card: Path, out: str) -> str:
    code, output = cli("data", "build", str(card), "--out", out)
    assert code == 0, output
    return storage.join(out, NAME)


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The card and the same surrogate built into a local folder (the reference for every S3 comparison)."""
    folder = tmp_path_factory.mktemp("local")
    card = write_card(folder)
    return card, build(card, str(folder / "shards"))


def sha256_files(root: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).glob("shard-*.tar"))}


def sha256_objects(server: S3Server, root: str) -> dict[str, str]:
    bucket, prefix = storage.split_s3(root)
    client = server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/shard-")["Contents"]]
    return {
        key.rsplit("/", 1)[1]: hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
        for key in sorted(keys)
    }


def expected_counts(root: str, manifest: shards.Manifest) -> dict[str, int]:
    return {u: s.count for u, s in zip(manifest.shard_uris(root), manifest.shards, strict=True)}


def first_batches(root: str, n: int) -> list[np.ndarray]:
    stream = ShardStream(root, shards.read_manifest(root), batch_size=16, seed=3, shuffle_buffer=32)
    it = iter(stream)
    return [next(it).numpy() for _ in range(n)]


class TestBuildAndReadOnMoto:
    def test_cli_build_to_s3_is_byte_identical_to_the_local_build(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        card, local_root = local_build
        root = build(card, f"s3://{s3_env.make_bucket()}/surrogates")
        assert sha256_objects(s3_env, root) == sha256_files(local_root)
        assert len(sha256_files(local_root)) == 4
        s3_manifest, local_manifest = shards.read_manifest(root), shards.read_manifest(local_root)
        assert s3_manifest.shards == local_manifest.shards and s3_manifest.count == COUNT

    def test_verify_passes_and_ls_lists_the_s3_surrogate(self, s3_env: S3Server, local_build: tuple[Path, str]) -> None:
        out = f"s3://{s3_env.make_bucket()}/surrogates"
        root = build(local_build[0], out)
        code, output = cli("data", "verify", root)
        assert code == 0 and f"ok: {NAME}: {COUNT} images in 4 shards" in output, output
        code, output = cli("data", "ls", out)
        assert code == 0 and NAME in output and str(COUNT) in output, output

    def test_trial_reader_delivers_the_same_bytes_from_s3_as_from_the_folder(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        card, local_root = local_build
        root = build(card, f"s3://{s3_env.make_bucket()}/surrogates")
        s3_images, _ = read_all(root, shards.read_manifest(root))
        local_images, _ = read_all(local_root, shards.read_manifest(local_root))
        assert s3_images.shape == (COUNT, 32, 32, 3) and s3_images.dtype == np.uint8
        assert s3_images.tobytes() == local_images.tobytes()
        for s3_batch, local_batch in zip(first_batches(root, 14), first_batches(local_root, 14), strict=True):
            assert s3_batch.tobytes() == local_batch.tobytes()

    def test_truncated_shard_object_is_named_by_verify_and_by_the_loader(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        root = build(local_build[0], f"s3://{s3_env.make_bucket()}/surrogates")
        bad = storage.join(root, "shard-000002.tar")
        bucket, key = storage.split_s3(bad)
        whole = s3_env.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        s3_env.client().put_object(Bucket=bucket, Key=key, Body=whole[: len(whole) * 2 // 3])
        code, output = cli("data", "verify", root)
        assert code == 2 and bad in output and "truncated" in output and "Traceback" not in output, output
        code, output = cli("data", "build", str(local_build[0]), "--out", root.rsplit("/", 1)[0])
        assert code == 2 and bad in output, output  # a rebuild does not call it reusable
        manifest = shards.read_manifest(root)
        with pytest.raises(ShardError, match=bad):
            read_all(root, manifest)
        with pytest.raises(ShardError, match=bad):
            list(iter_blocks(manifest.shard_uris(root), expected_counts(root, manifest)))

    def test_missing_shard_object_is_named_by_verify_and_by_the_loader(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        root = build(local_build[0], f"s3://{s3_env.make_bucket()}/surrogates")
        gone = storage.join(root, "shard-000001.tar")
        s3_env.client().delete_object(Bucket=storage.split_s3(gone)[0], Key=storage.split_s3(gone)[1])
        code, output = cli("data", "verify", root)
        assert code == 2 and gone in output and "missing" in output, output
        with pytest.raises(ShardError, match=f"^{gone}"):  # the missing shard, not the one read before it
            read_all(root, shards.read_manifest(root))

    def test_abandoned_shard_read_stops_its_read_ahead_thread(self, s3_env: S3Server) -> None:
        uri = f"s3://{s3_env.make_bucket()}/big-shard.tar"
        storage.write_bytes(uri, data := np.random.default_rng(0).bytes(24 << 20))  # > the 8 MiB read-ahead
        stream = ReadAhead(storage.open_read(uri))
        assert stream.read(1000) == data[:1000]
        assert any(t.name == "kd-study-s3-read-ahead" for t in threading.enumerate())  # blocked, queue full
        stream.close()  # a trial that stops mid-shard
        assert not any(t.name == "kd-study-s3-read-ahead" for t in threading.enumerate())

    def test_two_dataloader_workers_split_the_shards_and_deliver_each_image_once_per_epoch(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        root = build(local_build[0], f"s3://{s3_env.make_bucket()}/surrogates")
        manifest = shards.read_manifest(root)
        expected, _ = read_all(root, manifest)
        stream = ShardStream(root, manifest, batch_size=16, seed=1, shuffle_buffer=32)
        loader = stream_loader(stream, workers=2)
        # 4 equal shards, 2 per worker, 96 images = 6 batches each; the loader alternates workers
        batches = []
        for batch in loader:
            batches.append(batch.numpy())
            if len(batches) == COUNT // 16:
                break
        del loader
        seen = Counter(img.tobytes() for batch in batches for img in batch)
        assert seen == Counter(img.tobytes() for img in expected)
        from_worker = [np.concatenate(batches[w::2]) for w in range(2)]
        assert all(len(f) == COUNT // 2 for f in from_worker)

    def test_bytes_two_dataloader_workers_stream_from_s3_are_counted_for_the_trial_process(
        self, s3_env: S3Server, local_build: tuple[Path, str]
    ) -> None:
        root = build(local_build[0], f"s3://{s3_env.make_bucket()}/surrogates")
        manifest = shards.read_manifest(root)
        surrogate_bytes = sum(s.bytes for s in manifest.shards)
        stream = ShardStream(root, manifest, batch_size=16, seed=1, shuffle_buffer=32)
        loader = iter(stream_loader(stream, workers=2))
        before = storage.s3_counters()["bytes_read"]
        for _ in range(COUNT // 16):  # one epoch: every shard streamed once, by one worker or the other
            next(loader)
        assert storage.s3_counters()["bytes_read"] == before  # nothing was read in this process...
        # ...and the workers' reads are seen here: at least one epoch, at most the next one prefetched too
        assert surrogate_bytes <= stream.worker_s3_bytes() <= 2 * surrogate_bytes
        del loader


class TestFaults:
    def test_build_verify_and_read_through_twenty_percent_faults(
        self,
        faulty_s3: FaultProxy,
        moto_server: S3Server,
        monkeypatch: pytest.MonkeyPatch,
        local_build: tuple[Path, str],
    ) -> None:
        card, local_root = local_build
        moto_server.activate(monkeypatch, AWS_ENDPOINT_URL=faulty_s3.endpoint_url)
        bucket = moto_server.make_bucket()
        before = storage.s3_counters()
        faulty_s3.set_faults(FaultRates(reset_before=0.05, slow_down=0.05, reset_mid_body=0.10), seed=11)
        root = build(card, f"s3://{bucket}/surrogates")
        code, output = cli("data", "verify", root)
        assert code == 0, output
        manifest = shards.read_manifest(root)
        faulty_s3.force("reset_mid_body", "GET")  # at least one, whatever the draw (few GETs in so small a build)
        images, _ = read_all(root, manifest)
        faulty_s3.set_faults(FaultRates())
        after = storage.s3_counters()
        local_images, _ = read_all(local_root, shards.read_manifest(local_root))
        assert images.tobytes() == local_images.tobytes()
        assert sha256_objects(moto_server, root) == sha256_files(local_root)
        counts = faulty_s3.counts
        assert counts["reset_before"] + counts["slow_down"] > 0 and counts["reset_mid_body"] > 0, counts
        assert after["retries"] > before["retries"], (before, after, counts)
        assert after["range_resumes"] > before["range_resumes"], (before, after, counts)


class TestSeaweedFS:
    def test_build_verify_read_round_trip_with_its_credentials(
        self, seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch, local_build: tuple[Path, str]
    ) -> None:
        card, local_root = local_build
        seaweedfs_server.activate(monkeypatch)
        root = build(card, f"s3://{seaweedfs_server.make_bucket()}/surrogates")
        code, output = cli("data", "verify", root)
        assert code == 0, output
        images, _ = read_all(root, shards.read_manifest(root))
        assert images.tobytes() == read_all(local_root, shards.read_manifest(local_root))[0].tobytes()
        seaweedfs_server.activate(monkeypatch, AWS_SECRET_ACCESS_KEY="not-the-secret")
        code, output = cli("data", "verify", root)
        assert code == 2 and storage.join(root, shards.MANIFEST) in output, output
        assert "SignatureDoesNotMatch" in output or "403" in output, output


class TestUnreachable:
    """A build to a location it cannot write fails at once, naming the URI, before generating anything.

    The card renders 256x256 dead leaves (~1-2 images/s on these CPUs): generating even one shard of it would
    take far longer than the limit asserted here."""

    LIMIT_S = 8.0

    def test_missing_bucket_fails_before_generating(self, s3_env: S3Server, tmp_path: Path) -> None:
        card = write_card(tmp_path, image_size=256, count=64, per_shard=4)
        out = "s3://no-such-bucket-kd/surrogates"
        start = time.monotonic()
        code, output = cli("data", "build", str(card), "--out", out)
        assert time.monotonic() - start < self.LIMIT_S
        assert code == 2 and "no-such-bucket-kd" in output and "Traceback" not in output, output

    def test_unreachable_endpoint_fails_before_generating(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        closed = S3Server("closed", f"http://127.0.0.1:{free_port()}", "k", "s")
        closed.activate(monkeypatch, KD_STUDY_S3_MAX_ATTEMPTS="2", KD_STUDY_S3_CONNECT_TIMEOUT="1")
        card = write_card(tmp_path, image_size=256, count=64, per_shard=4)
        out = "s3://somewhere/surrogates"
        start = time.monotonic()
        code, output = cli("data", "build", str(card), "--out", out)
        assert time.monotonic() - start < self.LIMIT_S
        assert code == 2 and out in output and "Traceback" not in output, output

    def test_loader_on_an_unreachable_endpoint_is_storage_error_naming_the_uri(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        closed = S3Server("closed", f"http://127.0.0.1:{free_port()}", "k", "s")
        closed.activate(monkeypatch, KD_STUDY_S3_MAX_ATTEMPTS="2", KD_STUDY_S3_CONNECT_TIMEOUT="1")
        with pytest.raises((ShardError, StorageError), match=r"s3://somewhere/s/manifest\.json"):
            shards.read_manifest("s3://somewhere/s")
