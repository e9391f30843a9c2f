"""study.storage: local atomic writes, URI rules, and S3 against real servers on loopback (moto, SeaweedFS),
including a fault-injecting proxy that resets connections, cuts bodies short and throttles."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import time
from pathlib import Path

import pytest

from study import storage
from study.data.shards.s3_stream import register_webdataset_s3
from study.storage import StorageError
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import S3Server, free_port

MB = 1 << 20


def _payload(seed: int, size: int = MB) -> bytes:
    return random.Random(seed).randbytes(size)


class TestLocal:
    def test_write_bytes_overwrites_and_leaves_no_temp_files(self, tmp_path: Path) -> None:
        target = tmp_path / "sub" / "blob.bin"
        storage.write_bytes(str(target), b"first")
        storage.write_bytes(str(target), b"second")
        assert target.read_bytes() == b"second"
        assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]

    def test_failed_write_keeps_previous_content_and_removes_its_temp_file(self, tmp_path: Path) -> None:
        target = tmp_path / "blob.bin"
        storage.write_bytes(str(target), b"kept")
        with pytest.raises(TypeError):
            storage.write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
        assert target.read_bytes() == b"kept"
        assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]

    def test_missing_local_file_is_storage_error_naming_it(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "nope.txt")
        with pytest.raises(StorageError, match=r"nope\.txt"):
            storage.read_bytes(missing)
        with pytest.raises(StorageError, match=r"nope\.txt"):
            storage.open_read(missing)

    def test_resolve_makes_local_paths_absolute_and_leaves_s3_alone(self, tmp_path: Path) -> None:
        assert storage.resolve("a/b", root=tmp_path) == str(tmp_path.resolve() / "a" / "b")
        assert storage.resolve(str(tmp_path / "x")) == str(tmp_path / "x")
        assert storage.resolve("s3://bucket/prefix/") == "s3://bucket/prefix"

    def test_join_and_split_s3(self) -> None:
        assert storage.join("s3://bucket/root/", "/shards/", "a.tar") == "s3://bucket/root/shards/a.tar"
        assert storage.join("/data", "shards", "a.tar") == "/data/shards/a.tar"
        assert storage.split_s3("s3://bucket/root/a.tar") == ("bucket", "root/a.tar")
        assert storage.split_s3("s3://bucket") == ("bucket", "")
        with pytest.raises(StorageError, match="s3:///key"):
            storage.split_s3("s3:///key")

    def test_local_path_refuses_s3(self) -> None:
        with pytest.raises(StorageError, match="s3://b/k"):
            storage.local_path("s3://b/k")


class TestMoto:
    def test_write_read_exists_and_list(self, s3_env: S3Server) -> None:
        root = f"s3://{s3_env.make_bucket()}/study"
        storage.write_text(storage.join(root, "a", "manifest.json"), '{"n": 1}')
        storage.write_bytes(storage.join(root, "a", "shard-000000.tar"), b"\x00" * 10)
        storage.write_bytes(storage.join(root, "top.bin"), b"top")
        assert storage.read_text(storage.join(root, "a", "manifest.json")) == '{"n": 1}'
        assert storage.exists(storage.join(root, "top.bin"))
        assert not storage.exists(storage.join(root, "absent.bin"))
        assert storage.list_names(root) == ["a", "top.bin"]
        assert storage.list_names(storage.join(root, "a")) == ["manifest.json", "shard-000000.tar"]
        assert storage.list_names(storage.join(root, "empty")) == []
        storage.write_bytes(storage.join(root, "zero.bin"), b"")
        assert storage.read_bytes(storage.join(root, "zero.bin")) == b""

    @pytest.mark.parametrize("write", ["upload_file", "write_bytes"])
    def test_large_writes_go_multipart_above_the_configured_threshold(
        self, write: str, s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KD_STUDY_S3_MULTIPART_THRESHOLD", str(5 * MB))
        monkeypatch.setenv("KD_STUDY_S3_MULTIPART_CHUNKSIZE", str(5 * MB))
        data = _payload(1, 12 * MB)
        bucket = s3_env.make_bucket()
        if write == "upload_file":
            (local := tmp_path / "big.bin").write_bytes(data)
            storage.upload_file(local, f"s3://{bucket}/big.bin")
        else:
            storage.write_bytes(f"s3://{bucket}/big.bin", data)
        assert storage.read_bytes(f"s3://{bucket}/big.bin") == data
        etag = s3_env.client().head_object(Bucket=bucket, Key="big.bin")["ETag"]
        assert etag.strip('"').endswith("-3")  # S3's multipart ETag: md5-of-part-md5s, dash, part count

    def test_iter_chunks_streams_the_object_in_pieces(self, s3_env: S3Server) -> None:
        uri = f"s3://{s3_env.make_bucket()}/obj.bin"
        storage.write_bytes(uri, data := _payload(2, 3 * MB + 17))
        chunks = list(storage.iter_chunks(uri, chunk_size=MB))
        assert [len(c) for c in chunks] == [MB, MB, MB, 17]
        assert b"".join(chunks) == data

    def test_missing_object_is_storage_error_naming_the_uri(self, s3_env: S3Server) -> None:
        uri = f"s3://{s3_env.make_bucket()}/missing.bin"
        with pytest.raises(StorageError, match=uri):
            storage.read_bytes(uri)
        with pytest.raises(StorageError, match=uri):
            storage.open_read(uri)

    def test_client_follows_the_environment(self, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
        first = storage.s3_client()
        assert storage.s3_client() is first
        monkeypatch.setenv("KD_STUDY_S3_MAX_ATTEMPTS", "3")
        assert storage.s3_client().meta.config.retries["total_max_attempts"] == 3
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        assert storage.s3_client().meta.endpoint_url == "http://127.0.0.1:9"
        monkeypatch.undo()
        s3_env.activate(monkeypatch)
        assert storage.s3_client().meta.endpoint_url == s3_env.endpoint_url

    def test_forked_child_makes_its_own_client_and_reads(self, s3_env: S3Server) -> None:
        uri = f"s3://{s3_env.make_bucket()}/obj.bin"
        storage.write_bytes(uri, data := _payload(6, 300_000))
        parent_client = storage.s3_client()
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()

        def child() -> None:
            results.put((storage.s3_client() is parent_client, storage.read_bytes(uri) == data))

        process = ctx.Process(target=child)
        process.start()
        process.join(timeout=30)
        assert process.exitcode == 0
        assert results.get(timeout=5) == (False, True)

    def test_webdataset_reads_s3_shards_through_the_registered_scheme(self, s3_env: S3Server, tmp_path: Path) -> None:
        import webdataset as wds

        with wds.ShardWriter(str(tmp_path / "shard-%06d.tar"), maxcount=5, verbose=0, mtime=0) as sink:
            for i in range(12):
                sink.write({"__key__": f"{i:06d}", "txt": f"sample {i}", "bin": _payload(i, 4096)})
        bucket = s3_env.make_bucket()
        shards = sorted(tmp_path.glob("shard-*.tar"))
        assert len(shards) == 3
        for shard in shards:
            storage.upload_file(shard, f"s3://{bucket}/surrogate/{shard.name}")
        register_webdataset_s3()
        register_webdataset_s3()  # idempotent
        urls = [f"s3://{bucket}/surrogate/{s.name}" for s in shards]
        samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=True))
        assert [s["txt"] for s in samples] == [f"sample {i}".encode() for i in range(12)]
        assert all(s["bin"] == _payload(i, 4096) for i, s in enumerate(samples))


class TestSeaweedFS:
    def test_broken_read_resumes_with_a_signed_range_request(
        self, seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        port = int(seaweedfs_server.endpoint_url.rsplit(":", 1)[1])
        with FaultProxy(("127.0.0.1", port)) as proxy:
            seaweedfs_server.activate(monkeypatch, AWS_ENDPOINT_URL=proxy.endpoint_url)
            uri = f"s3://{seaweedfs_server.make_bucket()}/obj.bin"
            storage.write_bytes(uri, data := _payload(10, 3 * MB))
            proxy.force("reset_mid_body", "GET")
            with storage.open_read(uri) as stream:
                assert stream.read() == data
                assert stream.resumes == 1
            assert len(proxy.range_headers) == 1

    def test_round_trip_with_its_credentials(self, seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
        seaweedfs_server.activate(monkeypatch)
        root = f"s3://{seaweedfs_server.make_bucket()}/run"
        storage.write_bytes(storage.join(root, "x.bin"), data := _payload(3, 2 * MB))
        assert storage.read_bytes(storage.join(root, "x.bin")) == data
        assert storage.list_names(root) == ["x.bin"]
        assert storage.exists(storage.join(root, "x.bin"))

    def test_wrong_secret_is_storage_error_naming_the_uri(
        self, seaweedfs_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bucket = seaweedfs_server.make_bucket()
        seaweedfs_server.activate(monkeypatch, AWS_SECRET_ACCESS_KEY="not-the-secret")
        uri = f"s3://{bucket}/x.bin"
        with pytest.raises(StorageError, match=rf"{uri}.*SignatureDoesNotMatch"):
            storage.write_bytes(uri, b"data")
        with pytest.raises(StorageError, match=uri):
            storage.read_bytes(uri)


def test_unreachable_endpoint_fails_fast_naming_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = S3Server("closed", f"http://127.0.0.1:{free_port()}", "k", "s")
    closed.activate(monkeypatch, KD_STUDY_S3_MAX_ATTEMPTS="2", KD_STUDY_S3_CONNECT_TIMEOUT="1")
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://nowhere/x\.bin"):
        storage.read_bytes("s3://nowhere/x.bin")
    with pytest.raises(StorageError, match=r"s3://nowhere/y\.bin"):
        storage.write_bytes("s3://nowhere/y.bin", b"data")
    assert time.monotonic() - start < 10


class TestFaultyNetwork:
    def _via(self, proxy: FaultProxy, server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
        server.activate(monkeypatch, AWS_ENDPOINT_URL=proxy.endpoint_url)

    def test_mid_body_reset_is_resumed_with_a_range_request(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        uri = f"s3://{moto_server.make_bucket()}/obj.bin"
        storage.write_bytes(uri, data := _payload(4))
        before = storage.s3_counters()["range_resumes"]
        faulty_s3.force("reset_mid_body", "GET")
        with storage.open_read(uri) as stream:
            assert stream.read() == data
            assert stream.resumes == 1
        assert faulty_s3.counts["reset_mid_body"] == 1
        (range_header,) = faulty_s3.range_headers
        assert 0 < int(range_header.removeprefix("bytes=").rstrip("-")) < len(data)
        assert storage.s3_counters()["range_resumes"] == before + 1

    def test_webdataset_stream_survives_a_mid_body_reset(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        import webdataset as wds

        self._via(faulty_s3, moto_server, monkeypatch)
        shard = tmp_path / "shard-000000.tar"
        with wds.TarWriter(str(shard), mtime=0) as sink:
            for i in range(8):
                sink.write({"__key__": f"{i:06d}", "bin": _payload(i, 100_000)})
        uri = f"s3://{moto_server.make_bucket()}/surrogate/shard-000000.tar"
        storage.upload_file(shard, uri)
        register_webdataset_s3()
        faulty_s3.force("reset_mid_body", "GET")
        samples = list(wds.WebDataset([uri], shardshuffle=False))
        assert [s["bin"] for s in samples] == [_payload(i, 100_000) for i in range(8)]
        assert faulty_s3.counts["reset_mid_body"] == 1
        assert len(faulty_s3.range_headers) == 1

    def test_stalled_body_is_resumed_after_the_read_timeout(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        uri = f"s3://{moto_server.make_bucket()}/obj.bin"
        storage.write_bytes(uri, data := _payload(11))
        monkeypatch.setenv("KD_STUDY_S3_READ_TIMEOUT", "0.5")
        # A stall far longer than the read timeout, so a loaded CI runner's overhead (2.3 s seen on one)
        # cannot pass for "waited for the close" and a resume on the close cannot pass for a timeout.
        faulty_s3.rates.stall_s = 15.0
        faulty_s3.force("stall_mid_body", "GET")
        start = time.monotonic()
        with storage.open_read(uri) as stream:
            assert stream.read() == data
            assert stream.resumes == 1
        assert faulty_s3.counts["stall_mid_body"] == 1
        assert time.monotonic() - start < faulty_s3.rates.stall_s  # resumed on timeout, not on the close

    def test_corrupted_body_fails_the_checksum_instead_of_returning_bad_bytes(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        uri = f"s3://{moto_server.make_bucket()}/obj.bin"
        storage.write_bytes(uri, _payload(12))
        faulty_s3.force("corrupt_body", "GET")
        with pytest.raises(StorageError, match=rf"{uri}.*[Cc]hecksum"):
            storage.read_bytes(uri)
        assert faulty_s3.counts["corrupt_body"] == 1

    def test_reader_gives_up_naming_the_uri_when_resumptions_run_out(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        monkeypatch.setenv("KD_STUDY_S3_READ_RESUMES", "0")
        uri = f"s3://{moto_server.make_bucket()}/obj.bin"
        storage.write_bytes(uri, _payload(5))
        faulty_s3.force("reset_mid_body", "GET")
        with storage.open_read(uri) as stream, pytest.raises(StorageError, match=rf"{uri}: read broke"):
            stream.read()
        assert faulty_s3.range_headers == []

    def test_object_replaced_during_a_resumed_read_fails_instead_of_splicing(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        uri = f"s3://{moto_server.make_bucket()}/obj.bin"
        storage.write_bytes(uri, _payload(7))
        faulty_s3.force("reset_mid_body", "GET")
        with storage.open_read(uri) as stream:
            assert stream.read(1000) == _payload(7)[:1000]
            storage.write_bytes(uri, _payload(8))
            with pytest.raises(StorageError, match=rf"{uri}.*PreconditionFailed"):
                stream.read()

    def test_multipart_upload_through_faults_is_byte_exact(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        monkeypatch.setenv("KD_STUDY_S3_MULTIPART_THRESHOLD", str(5 * MB))
        monkeypatch.setenv("KD_STUDY_S3_MULTIPART_CHUNKSIZE", str(5 * MB))
        local = tmp_path / "big.bin"
        local.write_bytes(data := _payload(9, 16 * MB))
        uri = f"s3://{moto_server.make_bucket()}/big.bin"
        faulty_s3.set_faults(FaultRates(reset_before=0.15, slow_down=0.15), seed=3)
        storage.upload_file(local, uri)
        faulty_s3.set_faults(FaultRates())
        assert faulty_s3.faults > 0
        assert storage.read_bytes(uri) == data

    def test_fifty_uploads_and_reads_through_twenty_percent_faults_are_byte_exact(
        self, faulty_s3: FaultProxy, moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._via(faulty_s3, moto_server, monkeypatch)
        bucket = moto_server.make_bucket()
        rates = FaultRates(reset_before=0.05, slow_down=0.05, reset_mid_body=0.10, latency_s=0.02)
        faulty_s3.set_faults(rates, seed=7)
        before = storage.s3_counters()
        digests = {}
        for i in range(50):
            data = _payload(100 + i, MB + i)
            digests[i] = hashlib.sha256(data).hexdigest()
            storage.write_bytes(f"s3://{bucket}/obj-{i:02d}.bin", data)
        for i in range(50):
            sink = io.BytesIO()
            for chunk in storage.iter_chunks(f"s3://{bucket}/obj-{i:02d}.bin", chunk_size=256 << 10):
                sink.write(chunk)
            assert hashlib.sha256(sink.getvalue()).hexdigest() == digests[i], f"obj-{i:02d}.bin"
        after = storage.s3_counters()
        counts = faulty_s3.counts
        assert all(counts[kind] > 0 for kind in ("reset_before", "slow_down", "reset_mid_body")), counts
        # every request-level fault costs botocore one retry; every broken body one Range resumption
        assert after["retries"] - before["retries"] == counts["reset_before"] + counts["slow_down"]
        assert after["range_resumes"] - before["range_resumes"] == counts["reset_mid_body"]
        assert counts["range_requests"] >= counts["reset_mid_body"]  # a Range GET may itself be retried
        assert 0.1 < faulty_s3.faults / counts["requests"] < 0.3


def test_written_files_are_readable_by_the_group_and_others(tmp_path: Path) -> None:
    """A shared study folder: teammates read what kd-study wrote (0644 less the umask, not mkstemp's 0600)."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    storage.write_text(str(tmp_path / "a" / "meta.json"), "{}")
    assert (tmp_path / "a" / "meta.json").stat().st_mode & 0o777 == 0o644 & ~mask
