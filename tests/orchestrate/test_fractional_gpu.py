"""Fractional GPUs: `resources.gpu: 0.25` packs four trials on one GPU (logical GPUs, a Ray runtime of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Its own Ray runtime in a subprocess: the suite's shared runtime declares no GPUs, and a process holds one runtime.
SCRIPT = """
import json, sys, time
import ray
from ray import tune
from study.config import StudySpec
from study.orchestrate.sweep import trial_resources

ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
spec = StudySpec.model_validate(
    {"name": "pack", "arms": [{"name": "a", "card": "digits_train"}], "resources": {"cpu": 1, "gpu": 0.25}}
)

def trainable(config):
    start = time.time()
    time.sleep(8)
    tune.report({"start": start, "end": time.time(), "gpu_ids": json.dumps([str(g) for g in ray.get_gpu_ids()])})

tuner = tune.Tuner(
    tune.with_resources(trainable, trial_resources(spec)),
    param_space={"i": tune.grid_search(list(range(8)))},
    tune_config=tune.TuneConfig(reuse_actors=False),
    run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0),
)
grid = tuner.fit()
rows = [{k: r.metrics[k] for k in ("start", "end", "gpu_ids")} for r in grid]
print("ROWS " + json.dumps(rows))
"""


def max_overlap(rows: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows], key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


@pytest.mark.slow
def test_quarter_gpu_trials_pack_four_per_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "tune")], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.split("ROWS ", 1)[1])
    assert len(rows) == 8
    # one logical GPU, 8 CPUs: four quarter-GPU trials at once (CPUs are not the limit), never more
    assert max_overlap(rows) == 4
    assert {r["gpu_ids"] for r in rows} == {json.dumps(["0"])}  # all on the one device, each seeing it
