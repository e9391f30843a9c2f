"""What a study ran on: the facts that decide whether its numbers can be reproduced bit for bit.

A seeded study gives the same trials, early-stopping decisions and accuracies on a rerun in the same environment.
Across environments float results may differ: another kd-study commit, other torch/numpy builds (pip resolves
ranges), another CPU instruction set (torch dispatches its kernels by `torch.backends.cpu.get_cpu_capability()`;
AVX2 and AVX-512 kernels sum in different orders), another thread count, a GPU and its driver, or torch's
deterministic switches. `probe()` gathers them as plain JSON data; the pipeline records them on the study's MLflow
experiment and the report shows them, so that two runs that disagree can be told apart by what differed.

Importable without Ray: package versions come from installed metadata, never from importing the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("kd-study", "torch", "torchvision", "ray", "numpy", "scipy", "optuna", "mlflow", "webdataset", "pillow")
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
)
"""Vector units that change which float kernels run (and so the order of their sums)."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")
CHECKOUT = Path(__file__).resolve().parents[1]
"""The folder above the `study` package: a git checkout when kd-study runs from a clone (`pip install -e .`)."""


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None for one not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """The commit kd-study's code came from, when it runs from a git checkout; None otherwise (an installed wheel,
    or a package folder inside some other repository). `dirty` is True when tracked files differ from the commit,
    so the commit alone does not name the code that ran."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != CHECKOUT:
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model, the instruction-set flags that change float kernels, and the ISA torch's kernels dispatch to."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or None,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS} if flags else None,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def gpu_info() -> dict[str, Any] | None:
    """Visible GPUs and the driver, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            driver = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            driver = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"devices": names, "driver": driver, "cuda": torch.version.cuda, "cudnn": cudnn}


def torch_settings() -> dict[str, Any]:
    """Torch's switches that trade reproducibility for speed, as this process has them."""
    return {
        "build": torch.__version__,  # the local label says which wheel: +cu130, +cpu, ...
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "environment": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def probe() -> dict[str, Any]:
    """The environment of this process, as JSON-ready data (keys sorted when serialised by `fingerprint`)."""
    return {
        "kd_study": {"version": package_versions(("kd-study",))["kd-study"], "git": git_state()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "platform": platform.platform(),
        "packages": package_versions(PACKAGES[1:]),
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "torch": torch_settings(),
    }


def fingerprint(env: dict[str, Any]) -> str:
    """A short id of an environment: equal probes give equal ids."""
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:12]
