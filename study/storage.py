"""URIs: local paths and `s3://bucket/key`.

One place opens, writes and lists storage, so every other module is indifferent to where shards, teachers and
reports live. S3 goes through boto3 with botocore's standard retry mode; the endpoint and credentials come only
from the standard AWS chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, instance roles), never from specs.
Local writes are atomic (temp file + rename), so a killed job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

S3_PREFIX = "s3://"


class StorageError(OSError):
    """A storage location is missing or unreachable; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def resolve(uri: str, root: str | Path = ".") -> str:
    """Absolute form of `uri`: s3 URIs unchanged, local paths made absolute against `root`."""
    if is_s3(uri):
        return uri.rstrip("/")
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = Path(root).expanduser().resolve() / path
    return str(path)


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    return bucket, key


@functools.cache
def s3_client():  # -> botocore client; untyped to keep boto3 stubs optional
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": int(os.environ.get("KD_STUDY_S3_MAX_ATTEMPTS", "8"))},
        s3={"addressing_style": os.environ.get("KD_STUDY_S3_ADDRESSING", "path")},
        connect_timeout=10,
        read_timeout=60,
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", region_name=region, config=config)


def _s3_error(uri: str, err: Exception) -> StorageError:
    return StorageError(f"{uri}: {type(err).__name__}: {err}")


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(uri, err) from err


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri}: not found") from None
    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        raise _s3_error(uri, err) from err


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as err:
            raise _s3_error(uri, err) from err
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3(uri)
    try:
        s3_client().upload_file(str(local), bucket, key, Config=TransferConfig(multipart_threshold=64 << 20))
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
        for page in s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        ):
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
            names.update(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
    except Exception as err:
        raise _s3_error(uri, err) from err
    return sorted(names)


def open_read(uri: str) -> IO[bytes]:
    """A binary stream: a file for local paths, boto3's streaming body for S3 (nothing is buffered whole)."""
    if not is_s3(uri):
        try:
            return open(uri, "rb")
        except FileNotFoundError:
            raise StorageError(f"{uri}: not found") from None
    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as err:
        raise _s3_error(uri, err) from err


def iter_chunks(uri: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    with open_read(uri) as stream:
        while chunk := stream.read(chunk_size):
            yield chunk


def local_path(uri: str) -> Path:
    """The path of a local URI; S3 URIs are refused, for code that needs a real file."""
    if is_s3(uri):
        raise StorageError(f"{uri}: this operation needs a local path")
    return Path(uri)
