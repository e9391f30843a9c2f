"""URIs: local paths and `s3://bucket/key`.

One place opens, writes and lists storage, so every other module is indifferent to where shards, teachers
and reports live. S3 goes through boto3 with botocore's standard retry mode; the endpoint and credentials
come only from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, instance roles),
never from specs. Local writes are atomic (temp file + rename), so a killed job never leaves a half-written
file under a final name.

Failure handling on S3 is botocore's standard retry mode (connection errors, 5xx, SlowDown throttling, with
exponential backoff and a retry quota) plus one thing botocore does not do: a GetObject whose body breaks
mid-stream is resumed with an HTTP Range request from the first byte not yet delivered (`S3RangeReader`),
so a multi-GB shard read survives a dropped connection without starting over. Uploads go through boto3's
transfer manager (`TransferConfig`: multipart above a threshold, parts retried independently).

Environment knobs (all optional): `KD_STUDY_S3_MAX_ATTEMPTS` (attempts per call, first included, default 8),
`KD_STUDY_S3_CONNECT_TIMEOUT` / `KD_STUDY_S3_READ_TIMEOUT` (seconds, default 10 / 60),
`KD_STUDY_S3_ADDRESSING` (path | virtual, default path), `KD_STUDY_S3_REGION` (the bucket's region for
pyarrow, instead of asking S3), `KD_STUDY_S3_MULTIPART_THRESHOLD` /
`KD_STUDY_S3_MULTIPART_CHUNKSIZE` (bytes, default 64 MiB / 16 MiB), `KD_STUDY_S3_MAX_CONCURRENCY`
(parallel parts, default 4), `KD_STUDY_S3_READ_RESUMES` (Range resumptions in a row without a new byte
before a read fails, default 5).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

S3_PREFIX = "s3://"


class StorageError(OSError):
    """A storage location is missing or unreachable; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def resolve(uri: str, root: str | Path = ".") -> str:
    """Absolute form of `uri`: s3 URIs unchanged, absolute local paths unchanged, relative parts joined onto
    `root` (itself a folder or an `s3://` URI, so a study rooted on S3 keeps every relative location on S3)."""
    if is_s3(uri):
        return uri.rstrip("/")
    path = Path(uri).expanduser()
    if path.is_absolute():
        return str(path)
    if is_s3(str(root)):
        return join(str(root), uri) if uri not in ("", ".") else str(root).rstrip("/")
    return str(Path(root).expanduser().resolve() / path)


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        kept = [p.strip("/") for p in parts if p.strip("/") not in ("", ".")]
        return "/".join([uri.rstrip("/"), *kept])
    return str(Path(uri, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return bucket, key


_counters: Counter[str] = Counter()
_counters_lock = threading.Lock()


def _count(name: str, n: int = 1) -> None:
    with _counters_lock:
        _counters[name] += n


def s3_counters() -> dict[str, int]:
    """Process-wide totals since import: `retries` (botocore re-sent a request), `range_resumes` (a broken
    GetObject body continued with a Range request) and `bytes_read` (object bytes streamed from S3).
    Monotonic; callers diff two snapshots."""
    with _counters_lock:
        return {name: _counters[name] for name in ("retries", "range_resumes", "bytes_read")}


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise StorageError(f"environment variable {name}={raw!r}: expected a number") from None


def _count_retry(request: Any, **_: Any) -> None:
    # botocore stamps every attempt with `amz-sdk-request: attempt=N; max=M`; attempt > 1 is a retry.
    header = request.headers.get("amz-sdk-request", "")
    if isinstance(header, bytes):
        header = header.decode()
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "attempt" and value.isdigit() and int(value) > 1:
            _count("retries")


# The environment a client is built from: a change to any of these gets a new client, so code and tests that
# point storage elsewhere (another endpoint, credentials, retry settings) never talk through a stale one.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def s3_client():  # -> botocore client; untyped to keep boto3 stubs optional
    """The S3 client for this process and its current environment (thread-safe; cached).

    A forked child or a changed AWS_*/KD_STUDY_S3_* variable gets a new client; `s3_client.cache_clear()`
    drops all cached clients.
    """
    env = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    knobs = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("KD_STUDY_S3_")))
    return _client_for(os.getpid(), env, knobs)


@functools.lru_cache(maxsize=8)
def _client_for(pid: int, env: tuple[str | None, ...], knobs: tuple[tuple[str, str], ...]):
    # The arguments are the cache key only; boto3 and the knobs below read the same environment.
    import boto3
    from botocore.config import Config

    config = Config(
        # total_max_attempts counts the first try, like AWS_MAX_ATTEMPTS (botocore's max_attempts does not).
        retries={"mode": "standard", "total_max_attempts": int(_env_number("KD_STUDY_S3_MAX_ATTEMPTS", 8))},
        s3={"addressing_style": os.environ.get("KD_STUDY_S3_ADDRESSING", "path")},
        connect_timeout=_env_number("KD_STUDY_S3_CONNECT_TIMEOUT", 10),
        read_timeout=_env_number("KD_STUDY_S3_READ_TIMEOUT", 60),
        max_pool_connections=16,
    )
    region = _env_region()
    client = boto3.session.Session().client("s3", region_name=region, config=config)
    client.meta.events.register("before-send.s3", _count_retry, unique_id="kd-study-count-retries")
    return client


s3_client.cache_clear = _client_for.cache_clear  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    # A forked child (DataLoader worker, multiprocessing pool) must not reuse the parent's pooled HTTP
    # connections: two processes reading one socket interleave their responses.
    global _counters_lock
    _counters_lock = threading.Lock()
    s3_client.cache_clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def transfer_config():  # -> boto3.s3.transfer.TransferConfig
    """Multipart settings for uploads, from the environment (see the module docstring)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=int(_env_number("KD_STUDY_S3_MULTIPART_THRESHOLD", 64 << 20)),
        multipart_chunksize=int(_env_number("KD_STUDY_S3_MULTIPART_CHUNKSIZE", 16 << 20)),
        max_concurrency=int(_env_number("KD_STUDY_S3_MAX_CONCURRENCY", 4)),
    )


def _s3_error(uri: str, err: Exception) -> StorageError:
    return StorageError(f"{uri}: {type(err).__name__}: {err}")


@functools.cache
def _broken_stream_errors() -> tuple[type[BaseException], ...]:
    """What a GetObject body raises when its connection drops, stalls or ends short of Content-Length."""
    import http.client

    from botocore import exceptions as bx
    from urllib3 import exceptions as ux

    return (
        bx.ResponseStreamingError,
        bx.IncompleteReadError,
        bx.ReadTimeoutError,
        bx.ConnectionClosedError,
        ux.ProtocolError,
        ux.ReadTimeoutError,
        http.client.IncompleteRead,
        ConnectionError,
        TimeoutError,
    )


class S3RangeReader(io.RawIOBase):
    """A read-only stream over one S3 object that survives broken connections.

    botocore retries a GetObject that fails before its body arrives, but not one whose body breaks midway;
    this reader then re-issues GetObject with `Range: bytes=<pos>-` (and `If-Match` on the first response's
    ETag, so a concurrently replaced object fails loudly instead of splicing two versions) and continues
    from the first byte not yet returned: the approach of s3fs's and smart_open's retrying readers. After
    `KD_STUDY_S3_READ_RESUMES` resumptions in a row that deliver no new byte, `read` raises `StorageError`
    naming the URI. `resumes` counts this reader's resumptions; `s3_counters()["range_resumes"]` all of them.
    An unbroken read is verified against the object's checksum where the server returns one (botocore's
    flexible checksums, checked at the last byte); a resumed one only for length, since S3 sends no
    checksum for ranged reads.
    """

    def __init__(self, uri: str, max_resumes: int | None = None) -> None:
        super().__init__()
        self.uri = uri
        self._bucket, self._key = split_s3(uri)
        self.max_resumes = int(_env_number("KD_STUDY_S3_READ_RESUMES", 5)) if max_resumes is None else max_resumes
        self.resumes = 0
        self.pos = 0
        self.size = 0
        self._etag: str | None = None
        self._body: Any = None
        self._open_at(0)

    def _open_at(self, pos: int) -> None:
        extra: dict[str, str] = {}
        if pos:
            extra["Range"] = f"bytes={pos}-"
            if self._etag:
                extra["IfMatch"] = self._etag
        try:
            response = s3_client().get_object(Bucket=self._bucket, Key=self._key, **extra)
        except Exception as err:
            raise _s3_error(self.uri, err) from err
        if not pos:
            self.size = int(response["ContentLength"])
            self._etag = response.get("ETag")
        self._body = response["Body"]

    def _resume(self, stalls: int, err: BaseException | str) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        if stalls > self.max_resumes:
            raise StorageError(
                f"{self.uri}: read broke at byte {self.pos} of {self.size} {stalls} times in a row "
                f"({self.resumes} resumptions in all): {err}"
            )
        self.resumes += 1
        _count("range_resumes")
        logger.info("%s: resuming at byte %d of %d after %s", self.uri, self.pos, self.size, err)
        self._open_at(self.pos)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"{self.uri}: read from a closed stream")
        if size is None or size < 0:
            return self.readall()
        if size == 0 or self.pos >= self.size:
            return b""
        stalls = 0
        while True:
            try:
                chunk = self._body.read(min(size, self.size - self.pos))
            except _broken_stream_errors() as err:
                stalls += 1
                self._resume(stalls, err)
                continue
            if not chunk:  # the server closed cleanly before Content-Length: same as a break
                stalls += 1
                self._resume(stalls, "body ended early")
                continue
            self.pos += len(chunk)
            _count("bytes_read", len(chunk))
            if self.pos >= self.size:
                self._finish()
            return chunk

    def _finish(self) -> None:
        """At the last byte, one more read lets botocore check Content-Length and, where the server sent
        one, the object's checksum (S3 flexible checksums), before the caller gets the final chunk."""
        body, self._body = self._body, None
        try:
            body.read()
        except Exception as err:
            raise _s3_error(self.uri, err) from err
        finally:
            body.close()

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(1 << 20):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


# (endpoint, bucket) pairs seen to exist in this process: `exists` checks a bucket once, not per object.
_known_buckets: set[tuple[str, str]] = set()


def _check_bucket(uri: str, bucket: str) -> None:
    """Raise StorageError naming `uri` unless `bucket` exists (HeadBucket; a positive answer is cached)."""
    from botocore.exceptions import ClientError

    client = s3_client()
    known = (client.meta.endpoint_url, bucket)
    if known in _known_buckets:
        return
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{uri}: bucket '{bucket}' does not exist") from None
        raise _s3_error(uri, err) from err
    except Exception as err:
        raise _s3_error(uri, err) from err
    _known_buckets.add(known)


def exists(uri: str) -> bool:
    """Whether the object (or local path) exists.

    On S3 a missing *bucket* is an error, not False: HeadObject answers a bare 404 for both, and a build that
    took "no manifest yet" for "nowhere to write" would generate its first shard before the upload failed.
    An unreachable endpoint or refused credentials are StorageError naming the URI, like every other call.
    """
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise _s3_error(uri, err) from err
    except Exception as err:
        raise _s3_error(uri, err) from err
    _check_bucket(uri, bucket)
    return False


def size(uri: str) -> int:
    """Bytes in the object or file; StorageError naming `uri` when it is missing (one HeadObject on S3)."""
    if not is_s3(uri):
        try:
            return Path(uri).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"{uri}: not found") from None
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            _check_bucket(uri, bucket)
            raise StorageError(f"{uri}: not found") from None
        raise _s3_error(uri, err) from err
    except Exception as err:
        raise _s3_error(uri, err) from err


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri}: not found") from None
    with S3RangeReader(uri) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        config = transfer_config()
        try:
            if len(data) < config.multipart_threshold:
                # What the transfer manager would send anyway, without its per-call thread pool (~2x slower
                # for 1 MB objects on loopback).
                s3_client().put_object(Bucket=bucket, Key=key, Body=data)
            else:
                s3_client().upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
        except Exception as err:
            raise _s3_error(uri, err) from err
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files: teammates sharing a study folder must read them (the umask still applies)
        os.fchmod(fd, shared_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


SHARED_FILE_MODE = 0o644
"""Files kd-study writes are readable by the group and others (minus the umask); only secrets are 0600."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it; threads may be writing later)


def shared_file_mode() -> int:
    """The mode of files kd-study writes: `SHARED_FILE_MODE` less the process's umask."""
    return SHARED_FILE_MODE & ~_UMASK


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def upload_file(local: str | Path, uri: str) -> None:
    """Copy a finished local file to `uri` (multipart on S3 through boto3's transfer manager)."""
    if not is_s3(uri):
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != dest.resolve():
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_bytes(Path(local).read_bytes())
            os.replace(tmp, dest)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().upload_file(str(local), bucket, key, Config=transfer_config())
    except Exception as err:
        raise _s3_error(uri, err) from err


def list_names(uri: str) -> list[str]:
    """Names directly under a directory URI, sorted."""
    if not is_s3(uri):
        path = Path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    names: set[str] = set()
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
    except Exception as err:
        raise _s3_error(uri, err) from err
    return sorted(names)


def open_read(uri: str) -> IO[bytes]:
    """A binary stream: a file for local paths, an `S3RangeReader` for S3 (streamed, never whole)."""
    if not is_s3(uri):
        try:
            return open(uri, "rb")
        except FileNotFoundError:
            raise StorageError(f"{uri}: not found") from None
    return S3RangeReader(uri)  # type: ignore[return-value]


def iter_chunks(uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    with open_read(uri) as stream:
        while chunk := stream.read(chunk_size):
            yield chunk


def local_path(uri: str) -> Path:
    """The path of a local URI; S3 URIs are refused, for code that needs a real file."""
    if is_s3(uri):
        raise StorageError(f"{uri}: this operation needs a local path")
    return Path(uri)


def remove(uri: str) -> None:
    """Delete one object or file; one already gone is fine (a rebuild may have been interrupted)."""
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except Exception as err:
        raise _s3_error(uri, err) from err


def bucket_region(bucket: str) -> str:
    """The AWS region `bucket` lives in, asked of S3 itself (cached per endpoint and bucket).

    pyarrow's S3 filesystem does not follow S3's region redirects, so Tune's state on a bucket outside the
    environment's default region fails at its first sync while boto3 (which follows them) works. On AWS the
    answer comes from `pyarrow.fs.resolve_s3_region`; with a custom endpoint (`AWS_ENDPOINT_URL(_S3)`: MinIO,
    SeaweedFS), which pyarrow's resolver cannot reach, from the `x-amz-bucket-region` header of a HeadBucket on
    that endpoint (the same request pyarrow sends), and the environment's region when the server sends none.
    `KD_STUDY_S3_REGION` skips the question. Raises StorageError naming the bucket when S3 cannot answer.
    """
    if forced := os.environ.get("KD_STUDY_S3_REGION"):
        return forced
    return _bucket_region(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "", bucket)


@functools.lru_cache(maxsize=64)
def _bucket_region(endpoint: str, bucket: str) -> str:
    hint = (
        f"s3://{bucket}: cannot tell which region the bucket is in (pyarrow's S3 filesystem, which holds Tune's "
        "state, needs it); check the bucket name and the credentials (s3:ListBucket on it), or set "
        "KD_STUDY_S3_REGION to the bucket's region"
    )
    if not endpoint:
        from pyarrow import fs

        try:
            return fs.resolve_s3_region(bucket)
        except Exception as err:
            raise StorageError(f"{hint}: {err}") from None
    from botocore.exceptions import ClientError

    try:
        response = s3_client().head_bucket(Bucket=bucket)
    except ClientError as err:
        response = err.response  # a 301/403 still names the region in its header
        if not response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region"):
            raise StorageError(f"{hint}: {err}") from None
    except Exception as err:
        raise StorageError(f"{hint}: {err}") from None
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers.get("x-amz-bucket-region") or _env_region()


def _env_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """`(pyarrow filesystem, path)` for `uri`, for libraries that take one (Ray Tune's `storage_filesystem`).

    Local URIs give `(None, absolute path)`: the library then uses the local disk. S3 URIs give a
    `pyarrow.fs.S3FileSystem` in the bucket's own region (`bucket_region`), with path-style addressing on the
    endpoint of `AWS_ENDPOINT_URL(_S3)` when set (SeaweedFS, MinIO), and `bucket/key` as the path. Credentials
    are left to the AWS SDK's own chain on each process that uses the filesystem, so none is pickled into state
    that Tune writes to storage.
    """
    if not is_s3(uri):
        return None, resolve(uri)
    from urllib.parse import urlparse

    from pyarrow import fs

    bucket, key = split_s3(uri.rstrip("/"))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {
        "region": bucket_region(bucket),
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=int(_env_number("KD_STUDY_S3_MAX_ATTEMPTS", 8))),
        "connect_timeout": _env_number("KD_STUDY_S3_CONNECT_TIMEOUT", 10),
        "request_timeout": _env_number("KD_STUDY_S3_READ_TIMEOUT", 60),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https", force_virtual_addressing=False)
    return fs.S3FileSystem(**options), f"{bucket}/{key}".rstrip("/")
