"""The whole phase's demand is visible at once: with one logical GPU and 8 one-GPU trials, the sweep keeps the 7
trials that cannot run yet pending with their placement groups requested (what an autoscaler scales on), not
one (Tune's default for a custom searcher). A Ray runtime of its own, in a subprocess."""

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
import json, os, sys, threading, time
import ray
from ray.util import placement_group_table
from study.distill.trial import TrialPaths
from study.orchestrate.sweep import run_sweep
from study.tracking import StudyTracker
from tests.standin_sweep import standin_spec, standin_trial

init_ray(num_cpus=1, num_gpus=1)  # retried: a crowded machine can miss Ray's 30 s start
os.environ["STANDIN_SLEEP"] = "1.0"
spec = standin_spec(8, 2, 60.0)
peak, done = [0], threading.Event()

def watch():
    while not done.is_set():
        pending = sum(1 for pg in placement_group_table().values() if pg["state"] == "PENDING")
        peak[0] = max(peak[0], pending)
        time.sleep(0.2)

threading.Thread(target=watch, daemon=True).start()
tracker = StudyTracker(f"sqlite:///{sys.argv[1]}/mlflow.db", spec)
result = run_sweep(spec, TrialPaths("unused", "unused"), sys.argv[1] + "/tune", tracker, trainable_fn=standin_trial)
done.set()
print("PEAK " + json.dumps({"pending": peak[0], "trials": len(result.grid), "errors": result.grid.num_errors}))
"""


@pytest.mark.slow
def test_every_dealt_trial_of_the_phase_is_pending_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    env.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    peak = json.loads(done.stdout.split("PEAK ", 1)[1])
    assert peak["trials"] == 8 and peak["errors"] == 0
    assert peak["pending"] == 7, peak  # 8 trials, 1 GPU: one runs, the other 7 wait with their demand requested


def test_the_default_demand_is_the_phase_up_to_64_trials_and_the_spec_can_raise_it() -> None:
    from study.orchestrate.sweep import DEFAULT_MAX_PENDING, max_pending
    from tests.standin_sweep import standin_spec

    assert DEFAULT_MAX_PENDING == 64
    assert max_pending(standin_spec(8, 2, 60.0)) == 8  # the whole phase
    assert max_pending(standin_spec(2000, 2, 60.0)) == 64  # 2,000 pending cut the controller's rate to a tenth
    assert max_pending(standin_spec(2000, 2, 60.0, max_pending=500)) == 500
