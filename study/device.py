"""Device choice and the CUDA speed settings, in one place so trials, teachers and benchmarks agree."""

from __future__ import annotations

from typing import Literal

import torch


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
