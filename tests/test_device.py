"""The start-up check a trial runs: a GPU requested but unusable fails loudly, naming both sides of the CUDA stack."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from study.device import require_cuda

CHECK = "from study.device import require_cuda; require_cuda({gpus})"


def run_without_visible_gpus(gpus: float) -> subprocess.CompletedProcess[str]:
    """In a process that sees no GPU on any machine (CUDA_VISIBLE_DEVICES empty), CPU-only CI or a GPU host alike."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", CHECK.format(gpus=gpus)], env=env, capture_output=True, text=True, timeout=120
    )


def test_gpu_requested_without_a_usable_device_names_torch_cuda_driver_and_fix() -> None:
    result = run_without_visible_gpus(1)
    assert result.returncode != 0
    (last,) = [line for line in result.stderr.splitlines() if line.startswith("study.device.CudaUnavailableError")]
    assert "1 GPU(s) requested but torch.cuda.is_available() is False" in last
    assert f"torch {torch.__version__} is built for CUDA {torch.version.cuda or 'none'}" in last
    assert "NVIDIA driver: " in last and "--gpus all" in last and "resources.gpu to 0" in last


def test_cpu_trials_and_usable_gpus_pass() -> None:
    require_cuda(0)
    if torch.cuda.is_available():  # on a GPU machine the check must let a real GPU through
        require_cuda(1)
