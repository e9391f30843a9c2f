"""Sync cost at scale: 300 stand-in trials through kd-study's real sweep, S3 storage (moto behind the fault proxy,
which logs every request), a sqlite MLflow store, the driver SIGKILLed mid-sweep and rerun.

The bound on experiment-state uploads. Tune snapshots and uploads the experiment state (1) when its period has
passed since the last snapshot (10 s at least, `TUNE_GLOBAL_CHECKPOINT_S=auto`), (2) when a trial has made
`KEEP_CHECKPOINTS` checkpoints since the last sync (forced), (3) at the start and end of `fit`. A trial checkpoints
at most once per `checkpoint_s`, so (2) happens at most once per `checkpoint_s` of wall time whatever the number
of trials: uploads <= wall / 10 + wall / checkpoint_s + 3. With a checkpoint per report (the old schedule) a sync
is forced after almost every result: hundreds of uploads for the same sweep.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.tracking import experiment_name
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import S3Server
from tests.standin_sweep import standin_spec, state_uploads

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("KD_TEST_SYNC_TRIALS", "300"))  # lower it on a crowded machine; the bound scales
REPORTS, CHECKPOINT_S, SLEEP_S, GPUS = 5, 1.0, 0.3, 8  # a checkpoint at report 4, the last report after it
EXCESSIVE_SYNC = "Experiment state snapshotting has been triggered multiple times"


def driver(tune_dir: str, tracking_uri: str, s3: S3Server, endpoint: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **s3.env(), "AWS_ENDPOINT_URL": endpoint, "STANDIN_SLEEP": str(SLEEP_S)}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", RAY_AUTH_MODE="disabled")
    env.update(RAY_ADDRESS="", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    env.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)  # the sweep itself must turn Tune's logger files off
    cmd = [sys.executable, "-m", "tests.standin_sweep", "--trials", str(TRIALS), "--tune-dir", tune_dir]
    cmd += ["--tracking-uri", tracking_uri, "--reports", str(REPORTS), "--checkpoint-s", str(CHECKPOINT_S)]
    cmd += ["--gpus", str(GPUS)]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a driver's process group (its Ray runtime with it), if it is still running."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def finished_runs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.timeout(1800)  # its own deadlines (600 s to the kill, 900 s for the rerun), not the suite's 600 s
def test_state_uploads_are_bounded_and_a_killed_sweep_loses_and_duplicates_nothing(
    moto_server: S3Server, tmp_path: Path
) -> None:
    bucket = moto_server.make_bucket()
    tune_dir, db = f"s3://{bucket}/tune", tmp_path / "mlflow.db"
    tracking_uri = f"sqlite:///{db}"
    port = int(moto_server.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port), FaultRates(latency_s=0.005)) as proxy:
        # ---- first run: SIGKILL once a third of the trials are FINISHED in the store
        first = driver(tune_dir, tracking_uri, moto_server, proxy.endpoint_url, tmp_path / "first.log")
        start, deadline = time.monotonic(), time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None and finished_runs(db) < TRIALS // 3:
            time.sleep(0.5)
        first_wall = time.monotonic() - start
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        kill(first)
        first_uploads = state_uploads(proxy.requests)
        # ---- rerun: the same command resumes and completes the sweep
        proxy.requests.clear()
        second = driver(tune_dir, tracking_uri, moto_server, proxy.endpoint_url, tmp_path / "second.log")
        try:
            assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
        finally:
            kill(second)
        second_uploads = state_uploads(proxy.requests)
        keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    out = (tmp_path / "second.log").read_text()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["restored"] and summary["trials"] == TRIALS and summary["errors"] == 0, out[-3000:]

    # uploads of the experiment state: bounded by wall time, not by results (1,500 here)
    for uploads, wall in ((first_uploads, first_wall), (second_uploads, summary["wall_s"])):
        bound = wall / 10 + wall / CHECKPOINT_S + 3
        assert 0 < uploads <= bound, (uploads, bound, wall)
    assert EXCESSIVE_SYNC not in (tmp_path / "first.log").read_text() + out
    # no per-trial logger files (progress.csv, result.json, TensorBoard events) in the synced folder
    assert not [k for k in keys if k.rsplit("/", 1)[-1].startswith(("progress", "result", "events.out", "params"))]

    # every trial ran exactly once to its end, in one run, every report recorded once
    spec = standin_spec(TRIALS, REPORTS, CHECKPOINT_S)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name(spec))
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], "tags.`kd_study.role` = 'trial'", page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == TRIALS
    assert all(r.info.status == "FINISHED" and r.data.tags["kd_study.outcome"] == "completed" for r in runs)
    for r in runs[:: max(1, TRIALS // 30)]:  # a sample: the history reads are one request per run
        steps = sorted({m.step for m in client.get_metric_history(r.info.run_id, "val_acc")})
        assert steps == list(range(1, REPORTS + 1)), (r.data.tags["trial_id"], steps)
