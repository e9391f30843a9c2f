"""`kd-study doctor`: is this machine (and every node of a cluster) ready to run a study?

Each check is one row: torch/CUDA/driver/devices, EGL for shader surrogates, read/write to the storage URI, the
MLflow tracking server, free disk where the shard cache lives. On a cluster the same checks run on every alive
node as a Ray task pinned to it (`NodeAffinitySchedulingStrategy`, soft=False), so a node with a bad driver or no
route to the bucket shows up before a study puts trials on it.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIN_FREE_GB = 5.0
"""Free disk the shard cache's folder needs (a few surrogates of a study)."""


@dataclass(frozen=True)
class Check:
    node: str
    name: str
    ok: bool
    detail: str


def _row(node: str, name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(node, name, True, fn())
    except Exception as err:  # a check's failure is its row, never the doctor's crash
        return Check(node, name, False, f"{type(err).__name__}: {err}"[:500])


def check_torch(gpus_expected: bool) -> str:
    import torch

    from study.device import driver_version

    cuda = torch.version.cuda or "none (CPU-only wheel)"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return (
            f"torch {torch.__version__}, CUDA {cuda}, driver {driver_version()}, "
            f"{torch.cuda.device_count()} device(s): {', '.join(names)}"
        )
    if gpus_expected:
        raise RuntimeError(
            f"this node has GPUs but torch {torch.__version__} (CUDA {cuda}) sees none; driver {driver_version()}: "
            "install a torch wheel whose CUDA version the driver supports, or update the driver"
        )
    return f"torch {torch.__version__}, CUDA {cuda}, no GPU on this node (CPU trials only)"


def check_egl() -> str:
    import moderngl

    ctx = moderngl.create_standalone_context(backend="egl")
    try:
        return f"EGL context: {ctx.info['GL_RENDERER']}, GL {ctx.info['GL_VERSION']}"
    finally:
        ctx.release()


def check_storage(uri: str) -> str:
    from study import storage

    probe = storage.join(uri, ".kd-study-doctor", f"{socket.gethostname()}-{uuid.uuid4().hex}.txt")
    payload = f"kd-study doctor {uuid.uuid4().hex}"
    storage.write_text(probe, payload)
    try:
        if storage.read_text(probe) != payload:
            raise RuntimeError(f"{probe} read back different bytes")
    finally:
        storage.remove(probe)
    return f"wrote, read and removed {probe}"


def check_tracking(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    from study.tracking import short_http_retries

    short_http_retries()
    experiments = MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return f"{uri} answers ({len(experiments)} experiment(s) on the first page)"


def check_disk(folder: str | None) -> str:
    from study.data.shards.cache import ShardCacheSpec

    spec = ShardCacheSpec.from_settings(folder, 1.0)
    path = Path(spec.folder if spec else folder or "/")
    existing = path
    while not existing.exists():
        existing = existing.parent
    free_gb = shutil.disk_usage(existing).free / 2**30
    if free_gb < MIN_FREE_GB:
        raise RuntimeError(f"{free_gb:.1f} GiB free at {path} (needs {MIN_FREE_GB:g}); set KD_STUDY_SHARD_CACHE")
    return f"{free_gb:.1f} GiB free at {path}"


FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
"""The driver's S3 settings, which fill in what a node's own environment lacks (a node's own settings win)."""


def node_checks(
    node: str,
    storage_uri: str | None,
    tracking_uri: str | None,
    cache: str | None,
    gpus_expected: bool,
    env_defaults: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every check on the machine this runs on; plain dicts, so a Ray task can return them."""
    added = [k for k in (env_defaults or {}) if k not in os.environ]
    os.environ.update({k: (env_defaults or {})[k] for k in added})
    try:
        return _node_checks(node, storage_uri, tracking_uri, cache, gpus_expected)
    finally:
        for key in added:
            os.environ.pop(key, None)
        if added:
            from study import storage

            storage.s3_client.cache_clear()


def _node_checks(
    node: str, storage_uri: str | None, tracking_uri: str | None, cache: str | None, gpus_expected: bool
) -> list[dict[str, Any]]:
    rows = [
        _row(node, "torch / CUDA", lambda: check_torch(gpus_expected or shutil.which("nvidia-smi") is not None)),
        _row(node, "EGL (shaders)", check_egl),
    ]
    if storage_uri:
        rows.append(_row(node, "storage", lambda: check_storage(storage_uri)))
    if tracking_uri:
        rows.append(_row(node, "tracking", lambda: check_tracking(tracking_uri)))
    rows.append(_row(node, "shard cache disk", lambda: check_disk(cache)))
    return [asdict(r) for r in rows]


def run_doctor(
    storage_uri: str | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    cache: str | None = None,
) -> list[Check]:
    """The checks here, and with `ray_address` on every alive node of that cluster (one pinned task each)."""
    rows = [Check(**r) for r in node_checks(f"local ({platform.node()})", storage_uri, tracking_uri, cache, False)]
    if not ray_address:
        return rows
    rows += cluster_checks(ray_address, storage_uri, tracking_uri, cache)
    return rows


def cluster_checks(
    ray_address: str, storage_uri: str | None, tracking_uri: str | None, cache: str | None
) -> list[Check]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=0)(node_checks)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        refs, names = [], []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            name = f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            gpus = float(node.get("Resources", {}).get("GPU", 0)) > 0
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            refs.append(
                remote.options(scheduling_strategy=strategy).remote(name, storage_uri, tracking_uri, cache, gpus, env)
            )
            names.append(name)
        rows: list[Check] = []
        for name, ref in zip(names, refs, strict=True):
            try:
                rows += [Check(**r) for r in ray.get(ref, timeout=300)]
            except Exception as err:
                rows.append(Check(name, "ray task", False, f"{type(err).__name__}: {err}"[:500]))
        return rows
    finally:
        if started:
            ray.shutdown()
