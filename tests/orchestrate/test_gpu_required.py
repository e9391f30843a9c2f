"""A trial given a GPU on a node where torch sees no CUDA fails at start with the versions and the fix, instead of
training on the CPU. Ray places it on a logical GPU (this machine has none), in a runtime of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
from tests.standin_sweep import init_ray
import json, sys
import ray
from study.config import StudySpec
from study.distill.trial import TrialPaths
from study.orchestrate.sweep import run_sweep
from study.tracking import StudyTracker

init_ray(num_cpus=1, num_gpus=1)  # retried: a crowded machine can miss Ray's 30 s start
spec = StudySpec.model_validate({
    "name": "gpu", "arms": [{"name": "a", "card": "digits_train"}],
    "search": {"trials_per_arm": 1, "max_failures": 0}, "resources": {"cpu": 0, "gpu": 1},
})
tracker = StudyTracker(f"sqlite:///{sys.argv[1]}/mlflow.db", spec)
result = run_sweep(spec, TrialPaths(sys.argv[1] + "/no-shards", sys.argv[1] + "/no-teacher"), sys.argv[1] + "/tune",
                   tracker)
runs = tracker.trial_runs()
print("RUNS " + json.dumps([{**r.data.tags, "metrics": sorted(r.data.metrics)} for r in runs]))
"""


@pytest.mark.slow
def test_a_gpu_trial_without_cuda_fails_at_start_naming_versions_and_fix(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.split("RUNS ", 1)[1])
    assert len(runs) == 1 and runs[0]["kd_study.outcome"] == "failed"
    error = runs[0]["kd_study.error"]
    assert "1 GPU(s) requested but torch.cuda.is_available() is False" in error
    assert "is built for CUDA" in error and "NVIDIA driver" in error and "Fix" in error
    assert runs[0]["metrics"] == []  # failed at start: not one report (no CPU training behind the GPU's back)
