"""Device choice and the CUDA speed settings, in one place so trials, teachers and benchmarks agree."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Literal

import torch


class CudaUnavailableError(RuntimeError):
    """Work that was given a GPU cannot use it (so it fails at start instead of training on the CPU)."""


def driver_version() -> str:
    """The NVIDIA driver's version as `nvidia-smi` reports it, or why it is unknown."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown (no nvidia-smi on PATH)"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown (nvidia-smi failed: {err})"
    versions = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
    return ", ".join(versions) if out.returncode == 0 and versions else f"unknown (nvidia-smi: {out.stderr.strip()})"


def require_cuda(gpus: float, what: str = "this trial") -> None:
    """Raise `CudaUnavailableError` when `what` was given `gpus` > 0 and torch sees no usable CUDA device."""
    if gpus <= 0 or torch.cuda.is_available():
        return
    raise CudaUnavailableError(
        f"{what} was given {gpus:g} GPU but torch sees no usable CUDA device: torch {torch.__version__} built "
        f"for CUDA {torch.version.cuda or 'none (a CPU-only wheel)'}, NVIDIA driver {driver_version()}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}. Fix: install a torch wheel "
        "whose CUDA version the node's driver supports (or update the driver), check `kd-study doctor` on that "
        "node, or set resources.gpu: 0 to train on the CPU."
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
