"""The MLflow layout of a study: the study's one way into the MLflow store.

Layout: one experiment per study, named and tagged with a hash of the spec's scientific content; a
parent run per arm (card params, criteria metrics, manifest, sample grid and class histogram as artifacts, so a
report needs nothing but the store); a child run per trial (hyperparameters, per-report metrics, tags `phase`,
`trial_id`). Child runs are written by one driver-side Tune callback keyed on `trial_id`
(`study.orchestrate.trial_runs`, through this module's writer): a resumed trial reopens
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

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.config import StudySpec

log = logging.getLogger(__name__)

ROLE, ARM, TRIAL_ID, PHASE = "kd_study.role", "kd_study.arm", "trial_id", "phase"
OUTCOME, ERROR = "kd_study.outcome", "kd_study.error"
TEACHER = "kd_study.teacher"
"""The teacher id of an arm's parent run and its trial runs (`teacher` in a one-teacher study)."""
OUTCOMES = ("completed", "early_stopped", "diverged", "failed")
ENVIRONMENT = "kd_study.environment"
"""Experiment tags `kd_study.environment.<id>` hold each environment the study ran in (JSON, `study.environment`);
a trial run's tag of this name is the id of the environment whose driver started it."""
PARENT = "mlflow.parentRunId"
STUDY_RUN = "study"
"""Name and role of the study-level run: the full spec and the report as artifacts."""
SPEC_TAG_ELSEWHERE = "too long for a tag: see the artifact spec.json of the run 'study'"
COPIED_PREFIXES = ("criteria.", "perturbation.")
"""Arm metrics copied onto each of its trial runs, so MLflow's charts can plot a criterion against accuracy."""
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Model training, so MLflow 3.17's UI opens the runs table rather than its GenAI overview."""
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 5000
# MLflow's own HTTP retries wait minutes per call by default; kd-study retries whole writes itself (below), so each
# attempt is kept short. Users can still override them through the environment.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
FLUSH_TIMEOUT_S = float(os.environ.get("KD_STUDY_MLFLOW_FLUSH_TIMEOUT_S", "900"))
PAGE_SIZE = 5000
"""Runs per `search_runs` request; every read pages through all of them (`page_token`), so nothing is cut off."""


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run matching `filter_string`, read `PAGE_SIZE` at a time (MLflow returns one page per call)."""
    runs: list = []
    token: str | None = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


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
        self.arm_teachers = {a.name: a.teacher or "teacher" for a in spec.arms}
        self._experiment_id: str | None = None
        self._environment_id: str | None = None
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
                # the whole spec is an artifact of the study run (`log_study`); a tag holds it only when it fits whole
                spec_tag = self._spec_json if len(self._spec_json) <= MAX_PARAM_LEN else SPEC_TAG_ELSEWHERE
                self.client.set_experiment_tag(self._experiment_id, "kd_study.spec", spec_tag)
        return self._experiment_id

    # ---------------------------------------------------------------------------------------- environment
    def record_environment(self, environment_id: str, environment: dict[str, Any]) -> None:
        """Tag the experiment with the environment this invocation runs in (`study.environment.probe()`, under its
        `fingerprint`), once per distinct environment: a study resumed on another machine or with other packages
        gets a second tag, and trial runs created from now on carry this id (tag `kd_study.environment`)."""
        key = f"{ENVIRONMENT}.{environment_id}"
        tags = self.client.get_experiment(self.experiment_id).tags
        if key not in tags:
            record = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **environment}
            self.client.set_experiment_tag(self.experiment_id, key, json.dumps(record, sort_keys=True)[:MAX_TAG_LEN])
        self._environment_id = environment_id

    def environments(self) -> dict[str, dict[str, Any]]:
        """Every environment the study ran in, by id, oldest first."""
        tags = self.client.get_experiment(self.experiment_id).tags
        prefix = ENVIRONMENT + "."
        found = {k[len(prefix) :]: json.loads(v) for k, v in tags.items() if k.startswith(prefix)}
        return dict(sorted(found.items(), key=lambda kv: (str(kv[1].get("recorded_at", "")), kv[0])))

    def _find(self, filter_string: str) -> list:
        return search_all(self.client, [self.experiment_id], filter_string)

    # ---------------------------------------------------------------------------------------- arms
    def arm_run(self, arm: str, params: dict[str, Any]) -> str:
        """The parent run of `arm`, created with `params` on first use."""
        runs = self._find(f"tags.`{ROLE}` = 'arm' and tags.`{ARM}` = '{arm}'")
        if runs:
            return runs[0].info.run_id
        tags = {ROLE: "arm", ARM: arm, TEACHER: self.teacher_of(arm)}
        run = self.client.create_run(self.experiment_id, run_name=arm, tags=tags)
        flat: dict[str, str] = {}
        _flatten("", params, flat)
        self.client.log_batch(
            run.info.run_id, params=[Param(k[:250], v[:MAX_PARAM_LEN]) for k, v in sorted(flat.items())]
        )
        return run.info.run_id

    def teacher_of(self, arm: str) -> str:
        return getattr(self, "arm_teachers", {}).get(arm, "teacher")  # a tracker pickled before it existed

    def arm_runs(self) -> dict[str, str]:
        return {r.data.tags[ARM]: r.info.run_id for r in self._find(f"tags.`{ROLE}` = 'arm'")}

    def run_data(self, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
        """A run's latest metrics and its params."""
        data = self.client.get_run(run_id).data
        return dict(data.metrics), dict(data.params)

    def log_arm_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])

    def tag_arm(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v[:MAX_TAG_LEN]) for k, v in tags.items()])

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
        runs = search_all(client, [self.experiment_id], f"tags.`{TRIAL_ID}` = '{trial_id}'")
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
        parents = search_all(client, [experiment_id], f"tags.`{ROLE}` = 'arm' and tags.`{ARM}` = '{arm}'")
        tags = {ROLE: "trial", ARM: arm, TRIAL_ID: trial_id, PHASE: phase, TEACHER: self.teacher_of(arm)}
        if self._environment_id is not None:
            tags[ENVIRONMENT] = self._environment_id
        if parents:
            tags[PARENT] = parents[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"{arm}/{trial_id}", tags=tags)
        copied = []
        if parents:
            arm_metrics = parents[0].data.metrics
            copied = [
                Metric(k, float(v), 0, 0) for k, v in sorted(arm_metrics.items()) if k.startswith(COPIED_PREFIXES)
            ]
        client.log_batch(
            run.info.run_id,
            metrics=copied,
            params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())],
        )
        return run.info.run_id

    def log_recipe(self, run_id: str, recipe: dict[str, Any], client: MlflowClient | None = None) -> None:
        """The trial's resolved recipe as params `recipe.<name>` (temperature, perturbation, crop, ...), so runs
        can be filtered on what a trial actually trained with, defaults resolved, not only what was searched."""
        client = client or self.client
        have = client.get_run(run_id).data.params  # a resumed trial logs its recipe again: params are immutable
        params = [Param(f"recipe.{k}"[:250], str(v)[:MAX_PARAM_LEN]) for k, v in sorted(recipe.items())]
        client.log_batch(run_id, params=[p for p in params if p.key not in have])

    # ---------------------------------------------------------------------------------------- results
    def log_arm_results(self, results: dict[str, dict[str, float]], basis: dict[str, str]) -> None:
        """Each arm's final result on its parent run: metrics `result.<name>` (mean and interval of the ranked
        score, rank, outcome counts) and the tag `kd_study.result_basis` (final seeds or the best search trial)."""
        runs = self.arm_runs()
        for arm, values in results.items():
            if arm not in runs:
                continue
            metrics = [Metric(f"result.{k}", float(v), 0, 0) for k, v in sorted(values.items())]
            tags = [RunTag("kd_study.result_basis", basis[arm])] if arm in basis else []
            self.client.log_batch(runs[arm], metrics=metrics, tags=tags)

    def study_run(self) -> str:
        """The study-level run (one per experiment), created on first use."""
        runs = self._find(f"tags.`{ROLE}` = '{STUDY_RUN}'")
        if runs:
            return runs[0].info.run_id
        return self.client.create_run(self.experiment_id, run_name=STUDY_RUN, tags={ROLE: STUDY_RUN}).info.run_id

    def log_study(self, report_dir: Path | None = None) -> str:
        """The full spec (`spec.json`) and, when given, the report folder (`report/`) on the study run."""
        run_id = self.study_run()
        self.client.log_text(run_id, json.dumps(json.loads(self._spec_json), indent=2), "spec.json")
        if report_dir is not None:
            self.client.log_artifacts(run_id, str(report_dir), "report")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def trial_runs(self, client: MlflowClient | None = None) -> list:
        client = client or self.client
        return search_all(client, [self.experiment_id], f"tags.`{ROLE}` = 'trial'")
