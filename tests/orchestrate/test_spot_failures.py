"""Spot-aware failures (study/orchestrate/failures.py): a lost node does not spend a trial's `max_failures`.

1. On a real two-node loopback cluster (tests/ray_cluster.py; the head takes no trials), the worker node's raylet is
   SIGKILLed twice during one trial, each time with `search.max_failures: 0`; a fresh worker joins after each loss
   (as the autoscaler would replace a reclaimed spot node). The trial resumes from its last checkpoint in the
   (loopback S3) bucket each time, finishes, and its MLflow run is one row.
2. On the session's Ray, a trial whose own code raises still spends `max_failures` and then fails, with its
   own error named (the guard's refusal carries it).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.ray_cluster import local_ray_cluster
from tests.s3_servers import S3Server

pytestmark = pytest.mark.slow
REPORTS = 10
PROGRESS_ENV = "KD_TEST_SPOT_PROGRESS"


def checkpointed_standin(config: dict[str, Any], spec_json: str, paths: Any) -> None:
    """A stand-in trial: one report a second with a checkpoint each; resumes from its checkpoint; logs progress."""
    import ray
    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = json.loads(Path(directory, "state.json").read_text())["report"]
    node = ray.get_runtime_context().get_node_id()
    for report in range(start + 1, REPORTS + 1):
        time.sleep(1.0)
        with tempfile.TemporaryDirectory() as directory:
            Path(directory, "state.json").write_text(json.dumps({"report": report}))
            metrics = {"val_acc": report / REPORTS, "test_acc": 0.5, "train_loss": 1.0, "images_seen": float(report)}
            tune.report({**metrics, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(directory))
        with open(os.environ[PROGRESS_ENV], "a") as progress:
            progress.write(f"{node} {report}\n")


def always_raises(config: dict[str, Any], spec_json: str, paths: Any) -> None:
    raise ValueError("the trial's own bug: shard-000007.tar is corrupt")


DRIVER = """
import json, sys
from study.config import StudySpec
from study.distill.trial import TrialPaths
from study.orchestrate.sweep import run_sweep
from study.tracking import StudyTracker
from tests.orchestrate.test_spot_failures import {trainable}

spec = StudySpec.model_validate({{
    "name": "spot",
    "arms": [{{"name": "a", "card": "digits_train"}}],
    "search": {{"trials_per_arm": 1, "max_failures": {max_failures}}},
    "budget": {{"images": {reports}, "report_every": 1}},
    "resources": {{"cpu": 1, "gpu": 0}},
}})
tracker = StudyTracker(sys.argv[1], spec)
result = run_sweep(spec, TrialPaths("unused", "unused"), sys.argv[2], tracker, trainable_fn={trainable})
tracker.flush()
(trial,) = result.grid
print("RESULT " + json.dumps({{"error": str(trial.error) if trial.error else None,
    "reports": (trial.metrics or {{}}).get("images_seen"), "experiment": tracker.experiment_id}}))
"""


def driver(trainable: str, max_failures: int, tracking: str, tune_dir: str, env: dict[str, str]) -> subprocess.Popen:
    code = DRIVER.format(trainable=trainable, max_failures=max_failures, reports=REPORTS)
    return subprocess.Popen(
        [sys.executable, "-c", code, tracking, tune_dir],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result_of(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def progress_lines(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(n, int(r)) for n, r in (ln.split() for ln in path.read_text().splitlines() if ln.strip())]


def wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited while waiting for {what}:\n{proc.stdout.read()[-4000:]}")
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_two_node_losses_during_one_trial_spend_no_retries_and_it_finishes_once(
    moto_server: S3Server, tmp_path: Path
) -> None:
    bucket = moto_server.make_bucket("spot")
    progress = tmp_path / "progress.txt"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a loaded CI machine can take longer than Ray's default 30 s to register a node
    s3 = {**moto_server.env(), "AWS_EC2_METADATA_DISABLED": "true", "RAY_raylet_start_wait_time_s": "120"}
    # the nodes' environment reaches the trials (the driver's does not)
    with local_ray_cluster([1], head_cpus=0, **s3, **{PROGRESS_ENV: str(progress)}) as cluster:
        env = cluster.client_env(
            RAY_ADDRESS=cluster.gcs_address, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", **{PROGRESS_ENV: str(progress)}
        )
        proc = driver("checkpointed_standin", 0, tracking, f"s3://{bucket}/tune", env)
        try:
            killed: list[tuple[str, int]] = []
            for _ in range(2):
                victim = cluster.nodes[-1]
                victim_id = victim.node_id()

                def reported_on_victim(victim_id: str = victim_id) -> tuple[str, int] | None:
                    mine = [p for p in progress_lines(progress) if p[0] == victim_id]
                    return mine[-1] if mine else None

                last = wait_for("a report from the worker node", reported_on_victim, 600, proc)
                os.kill(victim.raylet_pid(), signal.SIGKILL)
                assert last[1] < REPORTS, "the trial ended before its node died: nothing to resume"
                killed.append(last)
                victim.stop()  # what the raylet left behind: the machine is gone
                cluster.add_worker(1)  # the autoscaler's replacement node
            result = result_of(proc, timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert result["error"] is None, result["error"]
    assert result["reports"] == REPORTS
    lines = progress_lines(progress)
    nodes = list(dict.fromkeys(n for n, _ in lines))
    assert nodes[:2] == [k[0] for k in killed] and len(nodes) == 3  # the first worker and two replacements
    for before, after in itertools.pairwise(nodes):
        reached = max(r for n, r in lines if n == before)
        resumed = min(r for n, r in lines if n == after)
        # from the checkpoint of the last report before the loss (the one after it may have been saved just
        # before the kill landed), never from the start
        assert reached + 1 <= resumed <= reached + 2, (reached, resumed)
    runs = MlflowClient(tracking).search_runs([result["experiment"]])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_a_trial_that_raises_still_spends_max_failures_and_fails_naming_its_error(ray_session, tmp_path: Path) -> None:
    from study.config import StudySpec
    from study.distill.trial import TrialPaths
    from study.orchestrate.failures import ledger_location, read_ledger
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker

    spec = StudySpec.model_validate(
        {
            "name": "raises",
            "arms": [{"name": "a", "card": "digits_train"}],
            "search": {"trials_per_arm": 1, "max_failures": 1},
            "budget": {"images": REPORTS, "report_every": 1},
            "resources": {"cpu": 1, "gpu": 0},
        }
    )
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", spec)
    tune_dir = str(tmp_path / "tune")
    # by its package path, so the session's Ray workers import it (pytest imports this file as a bare module)
    trainable = importlib.import_module("tests.orchestrate.test_spot_failures").always_raises
    result = run_sweep(spec, TrialPaths("unused", "unused"), tune_dir, tracker, trainable_fn=trainable)
    tracker.flush()
    (trial,) = result.grid
    assert "shard-000007.tar is corrupt" in str(trial.error)
    # the first run and its one retry raised; the next start was the guard's refusal, before any training
    (entry,) = read_ledger(ledger_location(tune_dir, tracker.name)).values()
    assert entry["errors"] == 2 and entry["exhausted"] and entry["node_losses"] == 0
    assert "TrialFailuresExhausted" in str(trial.error)
    runs = MlflowClient(tracker.tracking_uri).search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
