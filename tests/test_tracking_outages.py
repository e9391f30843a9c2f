"""MLflow outages never stall or kill a study: trials keep reporting through real Tune while the store is down, and
every metric is in the store at the end. Real local Ray, a real `mlflow server` on 127.0.0.1, a real sqlite store."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from study.config import StudySpec
from study.orchestrate.trial_runs import MlflowTrialCallback
from study.tracking import MlflowWriter, StudyTracker

pytestmark = pytest.mark.slow

REPORTS, INTERVAL = 60, 0.4  # each trial reports for ~24 s


def run_trials(tracker: StudyTracker, storage: Path, during: threading.Thread) -> tune.ResultGrid:
    """Two trials through Tune with the study's MLflow callback, `during` running alongside (the outage)."""
    tracker.experiment_id  # noqa: B018 - the experiment exists before the outage, as in a study
    tracker.make_live()  # as run_sweep does: the callback Tune holds writes through this tracker

    def reporting_trainable(config: dict) -> None:  # local: pickled by value to Ray workers (tests/ is no package)
        for i in range(config["reports"]):
            time.sleep(config["interval"])
            tune.report({"val_acc": i / 100, "images_seen": float(i + 1), "reported_at": time.time()})

    tuner = tune.Tuner(
        reporting_trainable,
        param_space={"arm": "a", "phase": "search", "reports": REPORTS, "interval": INTERVAL},
        tune_config=tune.TuneConfig(num_samples=2, max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="outage", storage_path=str(storage), callbacks=[MlflowTrialCallback(tracker, REPORTS)], verbose=0
        ),
    )
    during.start()
    grid = tuner.fit()
    during.join()
    tracker.flush(timeout=120)
    return grid


def assert_everything_arrived(tracker: StudyTracker, grid: tune.ResultGrid, retried: bool) -> None:
    assert grid.num_errors == 0
    runs = tracker.trial_runs()
    assert len(runs) == 2
    for run in runs:
        history = tracker.client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, REPORTS + 1))
        assert run.info.status == "FINISHED" and run.data.tags["kd_study.outcome"] == "completed"
    for result in grid:
        # Tune's loop kept taking results: no gap near the outage's length between two reports of a trial
        times = result.metrics_dataframe["reported_at"].tolist()
        assert max(b - a for a, b in itertools.pairwise(times)) < 5.0
    if retried:  # a stopped server refuses writes (retried); a locked sqlite file makes them wait in its busy timeout
        assert tracker.writer.failures > 0


def wait_for_first_report(uri: str, experiment: str, timeout: float = 90.0) -> None:
    """Block until a trial run of `experiment` holds a metric, so the outage overlaps the trials' reports."""
    client, deadline = MlflowClient(uri), time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            runs = client.search_runs([found.experiment_id], filter_string="metrics.val_acc >= 0")
            if runs:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no trial of {experiment} reported within {timeout} s")


def spec() -> StudySpec:
    return StudySpec.model_validate({"name": "outage", "arms": [{"name": "a", "card": "digits_train"}]})


def test_a_sqlite_store_locked_for_20_s_loses_nothing(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mlflow.db"
    tracker = StudyTracker(f"sqlite:///{db}", spec())
    held: dict[str, float] = {}
    attempts: list[tuple[float, float]] = []  # (start, end) of every write attempt the writer made
    submit = MlflowWriter.submit

    def timed_submit(self: MlflowWriter, what: str, write: Callable[[MlflowClient], None]) -> None:
        def timed(client: MlflowClient) -> None:
            start = time.time()
            try:
                write(client)
            finally:
                attempts.append((start, time.time()))

        submit(self, what, timed)

    monkeypatch.setattr(MlflowWriter, "submit", timed_submit)

    def lock_for_20_s() -> None:
        wait_for_first_report(f"sqlite:///{db}", tracker.name)  # trial workers take ~10 s to start
        conn = sqlite3.connect(db, timeout=60)
        conn.execute("BEGIN EXCLUSIVE")
        held["from"] = time.time()
        time.sleep(20)
        held["to"] = time.time()
        conn.rollback()
        conn.close()

    grid = run_trials(tracker, tmp_path / "tune", threading.Thread(target=lock_for_20_s))
    assert_everything_arrived(tracker, grid, retried=False)
    # the lock overlapped the trials' writes: some were attempted while it was held
    assert any(held["from"] < start < held["to"] for start, _ in attempts), (held, attempts[-5:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, artifacts: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--artifacts-destination", str(artifacts)]
    # its own session: `mlflow server` forks a uvicorn worker that outlives a kill of the CLI process alone (it kept
    # serving through the "outage" until the test stopped the whole group)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("mlflow server did not become healthy in 90 s")


def stop_server(proc: subprocess.Popen, port: int | None = None) -> None:
    """SIGKILL the server and its worker (the whole process group); with `port`, check nothing answers there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if port is not None:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_tracking_server_stopped_and_restarted_loses_nothing(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    db, port = tmp_path / "server.db", free_port()
    server = {"proc": start_server(db, port, tmp_path / "artifacts")}
    tracker = StudyTracker(f"http://127.0.0.1:{port}", spec())
    try:

        def stop_then_restart() -> None:
            wait_for_first_report(f"http://127.0.0.1:{port}", tracker.name)  # trial workers take ~10 s to start
            stop_server(server["proc"], port)
            server["down_at"] = time.time()
            time.sleep(6)  # down for 15 reports of each trial, then ~9 s more while it starts
            server["proc"] = start_server(db, port, tmp_path / "artifacts")
            server["up_at"] = time.time()

        grid = run_trials(tracker, tmp_path / "tune", threading.Thread(target=stop_then_restart))
        assert_everything_arrived(tracker, grid, retried=True)
        # the outage overlapped the trials: they kept reporting while the server was down
        reported = [t for r in grid for t in r.metrics_dataframe["reported_at"].tolist()]
        assert any(server["down_at"] < t < server["up_at"] for t in reported)
        assert MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name(tracker.name) is not None
    finally:
        stop_server(server["proc"])
