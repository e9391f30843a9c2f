"""A real multi-node Ray cluster on loopback for tests: `ray start --head` plus worker nodes, stopped by PID.

Each node is a `ray start` with its own `--temp-dir` and a marker in its environment (`KD_TEST_RAY_NODE`), which
every process it starts inherits: GCS, raylet, dashboard, workers and the drivers of submitted jobs. They are
found by that marker and stopped by PID: `ray stop` would kill every Ray process on the machine, other
developers' and the session's `ray_session` included.

Token authentication stays on (Ray 2.60's default for `ray.init`): the cluster gets a fresh token through Ray's
standard settings, `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN`, in the environment of its nodes and of the
clients the test starts (`LocalRayCluster.client_env`). A client without them is refused.

Health checks are shortened (RAY_health_check_*) so that the GCS declares a killed node dead within seconds.
The nodes' temp dirs (their logs: `session_latest/logs/job-driver-*.log`, raylet, workers) are removed at exit
unless KD_TEST_KEEP_RAY=1, for reading after a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.s3_servers import free_port

START_TIMEOUT_S = 90.0
# The GCS pings each raylet every 500 ms and declares it dead after 3 misses of 500 ms each.
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def ray_executable() -> str:
    return str(Path(sys.executable).parent / "ray")


NODE_MARKER = "KD_TEST_RAY_NODE"


def pids_with_env(name: str, value: str) -> list[int]:
    """PIDs of live processes (other than this one) started with `name=value` in their environment."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace_s`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class RayNode:
    """One `ray start` and the processes it left running (found by its temp dir)."""

    name: str
    temp_dir: Path
    log: Path

    @property
    def marker(self) -> str:
        return str(self.temp_dir)

    def pids(self) -> list[int]:
        return pids_with_env(NODE_MARKER, self.marker)

    def raylet_pid(self) -> int:
        for pid in self.pids():
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if exe.endswith(b"/raylet"):
                return pid
        raise RuntimeError(f"node {self.name}: no raylet process under {self.temp_dir}")

    def node_id(self) -> str:
        """The Ray node id, as `ray.get_runtime_context().get_node_id()` gives it (from the raylet's flags)."""
        args = Path(f"/proc/{self.raylet_pid()}/cmdline").read_bytes().decode().split("\0")
        for arg in args:
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise RuntimeError(f"node {self.name}: its raylet has no --node_id flag ({args[:3]}...)")

    def stop(self) -> None:
        stop_pids(self.pids())


@dataclass
class LocalRayCluster:
    """A head and its workers on 127.0.0.1, plus the environment clients need to reach it."""

    root: Path
    port: int
    dashboard_port: int
    env: dict[str, str]
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def client_env(self, **extra: str) -> dict[str, str]:
        """os.environ plus the cluster's settings (token, PYTHONPATH, health checks) and `extra`."""
        return {**os.environ, **self.env, **extra}

    def _start(self, name: str, args: list[str]) -> RayNode:
        # Short paths: Ray's Unix sockets live under the temp dir (limit ~107 characters).
        node = RayNode(name, Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)), self.root / f"{name}.log")
        with node.log.open("ab") as log:
            proc = subprocess.run(
                [ray_executable(), "start", f"--temp-dir={node.temp_dir}", *args],
                # each node its own kd-study shard cache, as on a real cluster
                env=self.client_env(**{NODE_MARKER: node.marker, "KD_STUDY_SHARD_CACHE": str(node.temp_dir / "cache")}),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
            )
        self.nodes.append(node)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) exited {proc.returncode}:\n{node.log.read_text()[-3000:]}")
        return node

    def start_head(self, num_cpus: int, *extra: str) -> RayNode:
        """`extra`: more `ray start` flags (benchmarks/autoscale.py adds `--autoscaling-config`)."""
        node = self._start(
            "head",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                "--disable-usage-stats",
                *extra,
            ],
        )
        self._wait_dashboard()
        return node

    def add_worker(self, num_cpus: int) -> RayNode:
        return self._start(
            f"worker{len(self.nodes)}",
            [
                f"--address={self.gcs_address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                "--disable-usage-stats",
            ],
        )

    def _wait_dashboard(self) -> None:
        """Until the job API answers (with the token: the dashboard refuses requests without it)."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version", headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        log = self.head.log.read_text()[-3000:]
        raise RuntimeError(f"Ray dashboard at {self.dashboard_url} did not answer:\n{log}")

    def stop(self) -> None:
        """Workers first, then the head; each by the PIDs of its own processes."""
        for node in reversed(self.nodes):
            node.stop()


@contextlib.contextmanager
def local_ray_cluster(worker_cpus: list[int], head_cpus: int = 1, **env: str) -> Iterator[LocalRayCluster]:
    """A head with `head_cpus` CPUs and one worker node per entry of `worker_cpus`; stopped by PID at exit."""
    root = Path(tempfile.mkdtemp(prefix="kdray-", dir="/tmp"))
    cluster = LocalRayCluster(
        root,
        port=free_port(),
        dashboard_port=free_port(),
        env={
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_DISABLE_USAGE_STATS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            **HEALTH_CHECK_ENV,
            **env,
        },
    )
    try:
        cluster.start_head(head_cpus)
        for cpus in worker_cpus:
            cluster.add_worker(cpus)
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("KD_TEST_KEEP_RAY"):
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (one worker, no job execution: ~9 s to healthy); yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = folder / "mlflow-server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
        f"--backend-store-uri=sqlite:///{folder / 'mlflow.db'}",
        f"--artifacts-destination={folder / 'artifacts'}",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield uri
    finally:
        # the server forks its workers into the session started above: stop them all by that group's PIDs
        stop_pids([proc.pid, *_session_members(proc.pid)])
        proc.wait(timeout=10)


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and int(entry.name) != sid:  # field 6 of stat: session id
                members.append(int(entry.name))
    return members
