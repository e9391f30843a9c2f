"""Device choice and the CUDA speed settings, in one place so trials, teachers and benchmarks agree."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Literal

import torch


class CudaUnavailableError(RuntimeError):
    """A GPU was requested but this process's torch cannot use one; the message names both sides and the fix."""


def driver_version() -> str:
    """The NVIDIA driver as `nvidia-smi` reports it, or why it cannot be told."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none visible (no nvidia-smi in this container: the GPU and driver were not passed in)"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown (nvidia-smi failed: {err})"
    return (
        out.stdout.strip().splitlines()[0]
        if out.returncode == 0 and out.stdout.strip()
        else (f"unknown (nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]})")
    )


def require_cuda(gpus: float, what: str = "this trial") -> None:
    """Raise CudaUnavailableError when `what` was given `gpus` > 0 and torch has no usable CUDA device.

    Without this a trial given a GPU silently trains on the CPU, hundreds of times slower. "Usable" means a
    kernel runs, not only `is_available()`: a driver older than the wheel's CUDA passes the latter on some setups.
    """
    if gpus <= 0:
        return
    problem = None
    if not torch.cuda.is_available():
        problem = "torch.cuda.is_available() is False"
    else:
        try:
            torch.ones(1, device="cuda").add_(1).item()
        except RuntimeError as err:
            problem = f"a CUDA kernel failed: {err}"
    if problem is None:
        return
    raise CudaUnavailableError(
        f"{what}: {gpus:g} GPU(s) requested but {problem}; torch {torch.__version__} is built for CUDA "
        f"{torch.version.cuda or 'none (a CPU-only wheel)'}, NVIDIA driver: {driver_version()}, CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}. Fix (`kd-study doctor` checks each node): run the "
        "container with the GPU passed in (`docker run --gpus all`, or nvidia.com/gpu on Kubernetes) on a host whose "
        "driver supports that CUDA version (docs/cluster.md, 'One CUDA stack'), or set resources.gpu to 0"
    )


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    return torch.device("cpu")


Precision = Literal["auto", "fp32", "bf16", "fp16"]


def autocast_dtype(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision`; None means full fp32.

    `auto` is bf16 on CUDA (fp16 on GPUs without bf16) and fp32 on CPU, where autocast rarely pays. `bf16` on CPU
    exists so the mixed-precision path is exercised where no GPU is (CI).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
