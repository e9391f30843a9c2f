"""The MLflow layout of a study, and the only module that talks to MLflow.

Layout (DESIGN.md): one experiment per study, named and tagged with a hash of the spec's scientific content; a
parent run per arm (card params, criteria metrics, manifest, sample grid and class histogram as artifacts, so a
report needs nothing but the store); a child run per trial (hyperparameters, per-report metrics, tags `phase`,
`trial_id`). Child runs are written by one driver-side Tune callback keyed on `trial_id`: a resumed trial reopens
its run instead of making a second one, and early-stopped or failed trials end with the right status.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.config import StudySpec

log = logging.getLogger(__name__)

ROLE, ARM, TRIAL_ID, PHASE = "kd_study.role", "kd_study.arm", "trial_id", "phase"
OUTCOME, ERROR = "kd_study.outcome", "kd_study.error"
OUTCOMES = ("completed", "early_stopped", "diverged", "failed")
PARENT = "mlflow.parentRunId"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Model training, so MLflow 3.17's UI opens the runs table rather than its GenAI overview."""
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 5000
# MLflow's own HTTP retries wait minutes per call by default; kd-study retries whole writes itself (below), so each
# attempt is kept short. Users can still override them through the environment.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
FLUSH_TIMEOUT_S = float(os.environ.get("KD_STUDY_MLFLOW_FLUSH_TIMEOUT_S", "900"))


class TrackingError(RuntimeError):
    """MLflow writes that could not be delivered within the flush timeout."""


def short_http_retries() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


class MlflowWriter:
    """Delivers MLflow writes in order from one background thread, so Tune's event loop never waits on MLflow.

    A write that raises (a sqlite "database is locked", a tracking server restarting) stays at the head of the
    queue and is retried with exponential backoff (`min_backoff` doubling to `max_backoff`); later writes wait
    behind it, which keeps each run's writes in order (a run is created before its metrics, terminated last).
    Nothing is dropped: `flush` waits for the queue to drain. Writes are idempotent where a retry could repeat a
    write the server committed before failing (run creation looks the run up by `trial_id` first).
    """

    def __init__(self, tracking_uri: str, min_backoff: float = 0.5, max_backoff: float = 15.0) -> None:
        self.tracking_uri, self.min_backoff, self.max_backoff = tracking_uri, min_backoff, max_backoff
        self.pending: queue.Queue[tuple[str, Callable[[MlflowClient], None]]] = queue.Queue()
        self.failures = 0
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, what: str, write: Callable[[MlflowClient], None]) -> None:
        self.pending.put((what, write))
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._deliver, name="kd-study-mlflow-writer", daemon=True)
                self.thread.start()

    def _deliver(self) -> None:
        client = MlflowClient(tracking_uri=self.tracking_uri)
        while True:
            what, write = self.pending.get()
            backoff = self.min_backoff
            while True:
                try:
                    write(client)
                    break
                except Exception as err:  # any store error is retried; nothing reaches Tune
                    self.failures += 1
                    log.warning(
                        "MLflow write '%s' failed (%s: %s); retrying in %.1f s",
                        what,
                        type(err).__name__,
                        str(err)[:200],
                        backoff,
                    )
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
            self.pending.task_done()

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Wait until every submitted write is in the store; raises TrackingError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TrackingError(
                    f"{self.pending.unfinished_tasks} MLflow write(s) to {self.tracking_uri} still failing after "
                    f"{timeout:.0f} s (set KD_STUDY_MLFLOW_FLUSH_TIMEOUT_S to wait longer)"
                )
            time.sleep(0.05)


LIVE_TRACKERS: dict[str, StudyTracker] = {}


def experiment_name(spec: StudySpec, content: dict[str, Any] | None = None) -> str:
    """`<study>-<hash>`: the hash covers the spec's science and `content` (teacher weights, cards' contents)."""
    return f"{spec.name}-{spec.science_hash(content)[:8]}"


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts beside a sqlite store (MLflow's default is ./mlruns in whatever directory the job started in).

    A tracking server decides for itself (None).
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = Path(tracking_uri[len(prefix) :]).expanduser().resolve()
    return (db.parent / "mlartifacts" / experiment).as_uri()


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


class StudyTracker:
    """Reads and writes one study's experiment. Holds only plain data, so it pickles into Tune's state."""

    def __init__(self, tracking_uri: str, spec: StudySpec, content: dict[str, Any] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.name = experiment_name(spec, content)
        self._spec_json = spec.model_dump_json()
        self._science_hash = spec.science_hash(content)
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._writer: MlflowWriter | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_writer": None}

    @property
    def writer(self) -> MlflowWriter:
        """The background writer of trial runs (its own client: MLflow clients are not shared across threads)."""
        if self._writer is None:
            self._writer = MlflowWriter(self.tracking_uri)
        return self._writer

    def make_live(self) -> None:
        """Route the callbacks of a Tuner restored from its pickle (same experiment) through this tracker."""
        LIVE_TRACKERS[self.name] = self

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        if self._writer is not None:
            self._writer.flush(timeout)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.name)
            if found is not None:
                self._experiment_id = found.experiment_id
                if not set(EXPERIMENT_KIND.items()) <= set(found.tags.items()):
                    for key, value in EXPERIMENT_KIND.items():
                        self.client.set_experiment_tag(self._experiment_id, key, value)
            else:
                self._experiment_id = self.client.create_experiment(
                    self.name,
                    artifact_location=artifact_location(self.tracking_uri, self.name),
                    tags={"kd_study.science_hash": self._science_hash, "kd_study.study": "1", **EXPERIMENT_KIND},
                )
                self.client.set_experiment_tag(self._experiment_id, "kd_study.spec", self._spec_json[:MAX_PARAM_LEN])
        return self._experiment_id

    def _find(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=10_000)

    # ---------------------------------------------------------------------------------------- arms
    def arm_run(self, arm: str, params: dict[str, Any]) -> str:
        """The parent run of `arm`, created with `params` on first use."""
        runs = self._find(f"tags.`{ROLE}` = 'arm' and tags.`{ARM}` = '{arm}'")
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=arm, tags={ROLE: "arm", ARM: arm})
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        self.client.log_batch(
            run.info.run_id, params=[Param(k[:250], v[:MAX_PARAM_LEN]) for k, v in sorted(flat.items())]
        )
        return run.info.run_id

    def arm_runs(self) -> dict[str, str]:
        return {r.data.tags[ARM]: r.info.run_id for r in self._find(f"tags.`{ROLE}` = 'arm'")}

    def run_data(self, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
        """A run's latest metrics and its params."""
        data = self.client.get_run(run_id).data
        return dict(data.metrics), dict(data.params)

    def log_arm_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])

    def log_arm_artifacts(self, run_id: str, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            self.client.log_artifacts(run_id, tmp)

    def set_arm_terminated(self) -> None:
        for run_id in self.arm_runs().values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "FINISHED")

    # ---------------------------------------------------------------------------------------- report reads
    @property
    def spec_json(self) -> str:
        return self._spec_json

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of `key` (trials log at step = images seen), in step order."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def artifacts(self, run_id: str, dst: Path) -> Path:
        """Download all of the run's artifacts into folder `dst` (one call: an arm run holds a few small files)."""
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, "", str(dst)))

    # ---------------------------------------------------------------------------------------- trials
    def find_trial_run(self, trial_id: str, client: MlflowClient | None = None) -> Any:
        client = client or self.client
        runs = client.search_runs([self.experiment_id], filter_string=f"tags.`{TRIAL_ID}` = '{trial_id}'")
        return runs[0] if runs else None

    def trial_run(
        self, trial_id: str, arm: str, phase: str, params: dict[str, Any], client: MlflowClient | None = None
    ) -> str:
        """The run of `trial_id`, reopened (RUNNING) if it exists, else created under its arm's parent run."""
        client = client or self.client
        experiment_id = self.experiment_id
        found = self.find_trial_run(trial_id, client)
        if found is not None:
            if found.info.status != "RUNNING":
                client.update_run(found.info.run_id, status="RUNNING")
            return found.info.run_id
        parents = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'arm' and tags.`{ARM}` = '{arm}'")
        tags = {ROLE: "trial", ARM: arm, TRIAL_ID: trial_id, PHASE: phase}
        if parents:
            tags[PARENT] = parents[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"{arm}/{trial_id}", tags=tags)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())])
        return run.info.run_id

    def trial_runs(self, client: MlflowClient | None = None) -> list:
        client = client or self.client
        return client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'", max_results=10_000)


def trial_error_text(trial: Any) -> str:
    """The error a trial raised. Tune writes it to the driver's staging copy of the trial dir (`error_file`) and
    copies that to the storage path only at its next experiment sync, while `get_error()` reads the storage path:
    read at `on_trial_error` time, storage may not have it yet (CI lost a shard error that way). So the staged file
    comes first, storage second."""
    staged = trial.error_file
    if staged and os.path.exists(staged):
        text = Path(staged).read_text(errors="replace").strip()
        if text:
            return text
    return str(trial.get_error() or "the trial raised (no error text was recorded)")


class MlflowTrialCallback(tune.Callback):
    """Driver-side: one MLflow child run per Tune trial, reopened (not duplicated) when a trial resumes.

    Every write goes through the tracker's `MlflowWriter`, so a slow or unreachable store delays writes but never
    Tune. Each run ends with `kd_study.outcome`: `completed`, `early_stopped` (stopped by ASHA before the budget),
    `diverged` (NaN/inf loss: FINISHED, keeps its last real metrics) or `failed` (raised after its retries: FAILED,
    error text as a tag and an `error.txt` artifact). After a restore, Tune unpickles this callback; it then
    writes through `LIVE_TRACKERS[experiment]`, the tracker of the process that runs the study.
    """

    METRICS = (
        "val_acc",
        "test_acc",
        "teacher_agreement",
        "agreement",
        "train_loss",
        "images_per_s",
        "lr",
        "attack_success",
        "s3_bytes_read",
    )

    def __init__(self, tracker: StudyTracker, budget_images: int) -> None:
        self.tracker = tracker
        self.budget_images = budget_images
        self.run_ids: dict[str, str] = {}
        self.opening: set[str] = set()
        self.ended_before: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "run_ids": {}, "opening": set(), "ended_before": set()}

    @property
    def live(self) -> StudyTracker:
        return LIVE_TRACKERS.get(self.tracker.name, self.tracker)

    def _submit(self, trial: Any, what: str, write: Callable[[MlflowClient, str], None]) -> None:
        """Queue `write(client, run_id)` for the trial's run, creating or reopening the run first if needed."""
        tracker, trial_id = self.live, trial.trial_id
        if trial_id not in self.opening:
            config = dict(trial.config)
            arm, phase = config.pop("arm"), config.pop("phase", "search")

            def ensure(client: MlflowClient) -> None:
                if trial_id in self.run_ids:
                    return
                found = tracker.find_trial_run(trial_id, client)
                if found is not None and found.data.tags.get(OUTCOME):
                    # ended in an earlier driver that died before Tune saved the trial as ended: keep its end
                    self.ended_before.add(trial_id)
                    self.run_ids[trial_id] = found.info.run_id
                else:
                    self.run_ids[trial_id] = tracker.trial_run(trial_id, arm, phase, config, client)

            self.opening.add(trial_id)  # later writes queue behind the creation
            tracker.writer.submit(f"open run of {trial_id}", ensure)

        def guarded(client: MlflowClient) -> None:
            if trial_id not in self.ended_before:
                write(client, self.run_ids[trial_id])

        tracker.writer.submit(f"{what} of {trial_id}", guarded)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(trial, "reopen", lambda client, run_id: None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("diverged"):
            return  # its 0 scores are for the search; the run keeps its last real metrics
        step = int(result.get("images_seen", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0)) * 1000
        metrics = [Metric(k, float(result[k]), ts, step) for k in self.METRICS if k in result]
        # the node of the latest report: a trial resumed elsewhere after a node failure shows its new node
        tags = [RunTag("node_id", str(result["node_id"]))] if "node_id" in result else []
        self._submit(trial, "metrics", lambda client, run_id: client.log_batch(run_id, metrics=metrics, tags=tags))

    def outcome(self, trial: Any) -> tuple[str, str]:
        last = trial.last_result or {}
        if last.get("diverged"):
            return "diverged", str(last.get("diverged_reason", ""))
        # an arm's own budget (`budget.mode: epochs` scales it with the arm's amount), else the study's
        if float(last.get("images_seen", 0)) < float(last.get("budget_images", self.budget_images)):
            return "early_stopped", ""
        return "completed", ""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome, reason = self.outcome(trial)
        tags = [RunTag(OUTCOME, outcome), RunTag("early_stopped", str(outcome == "early_stopped").lower())]
        if reason:
            tags.append(RunTag(ERROR, reason[:MAX_TAG_LEN]))

        def finish(client: MlflowClient, run_id: str) -> None:
            client.log_batch(run_id, tags=tags)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

        self._submit(trial, "finish", finish)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Delete (MLflow's soft delete) runs of trials Tune no longer knows: a driver killed after a trial started
        but before Tune saved its state loses that trial, and the restored search deals it again under a new id."""
        tracker, known = self.live, {t.trial_id for t in trials}

        def drop_lost(client: MlflowClient) -> None:
            for run in tracker.trial_runs(client):
                tags = run.data.tags
                if tags.get(TRIAL_ID) not in known and not tags.get(OUTCOME):
                    log.info("deleting the run of trial %s, lost with a killed driver", tags.get(TRIAL_ID))
                    client.delete_run(run.info.run_id)

        tracker.writer.submit("drop runs of lost trials", drop_lost)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial_error_text(trial)

        def fail(client: MlflowClient, run_id: str) -> None:
            client.log_batch(run_id, tags=[RunTag(OUTCOME, "failed"), RunTag(ERROR, error[-MAX_TAG_LEN:])])
            client.log_text(run_id, error, "error.txt")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

        self._submit(trial, "fail", fail)
