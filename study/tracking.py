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
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.config import StudySpec

log = logging.getLogger(__name__)

ROLE, ARM, TRIAL_ID, PHASE = "kd_study.role", "kd_study.arm", "trial_id", "phase"
PARENT = "mlflow.parentRunId"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Model training, so MLflow 3.17's UI opens the runs table rather than its GenAI overview."""
MAX_PARAM_LEN = 6000


def experiment_name(spec: StudySpec) -> str:
    return f"{spec.name}-{spec.science_hash()[:8]}"


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

    def __init__(self, tracking_uri: str, spec: StudySpec) -> None:
        self.tracking_uri = tracking_uri
        self.name = experiment_name(spec)
        self._spec_json = spec.model_dump_json()
        self._science_hash = spec.science_hash()
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

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
    def trial_run(self, trial_id: str, arm: str, phase: str, params: dict[str, Any]) -> str:
        runs = self._find(f"tags.`{TRIAL_ID}` = '{trial_id}'")
        if runs:
            run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        parent = self.arm_runs().get(arm)
        tags = {ROLE: "trial", ARM: arm, TRIAL_ID: trial_id, PHASE: phase}
        if parent:
            tags[PARENT] = parent
        run = self.client.create_run(self.experiment_id, run_name=f"{arm}/{trial_id}", tags=tags)
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
        )
        return run.info.run_id

    def trial_runs(self) -> list:
        return self._find(f"tags.`{ROLE}` = 'trial'")


class MlflowTrialCallback(tune.Callback):
    """Driver-side: one MLflow child run per Tune trial, reopened (not duplicated) when a trial resumes."""

    METRICS = (
        "val_acc",
        "test_acc",
        "teacher_agreement",
        "train_loss",
        "images_per_s",
        "lr",
        "attack_success",
    )

    def __init__(self, tracker: StudyTracker, budget_images: int) -> None:
        self.tracker = tracker
        self.budget_images = budget_images
        self._runs: dict[str, str] = {}
        self._last_seen: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}}

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            config = dict(trial.config)
            arm, phase = config.pop("arm"), config.pop("phase", "search")
            self._runs[trial.trial_id] = self.tracker.trial_run(trial.trial_id, arm, phase, config)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("images_seen", result.get("training_iteration", 0)))
        self._last_seen[trial.trial_id] = step
        ts = int(result.get("timestamp", 0)) * 1000
        metrics = [Metric(k, float(result[k]), ts, step) for k in self.METRICS if k in result]
        self.tracker.client.log_batch(self._run_id(trial), metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        early = self._last_seen.get(trial.trial_id, 0) < self.budget_images
        self.tracker.client.log_batch(run_id, tags=[RunTag("early_stopped", str(early).lower())])
        self.tracker.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.client.set_terminated(self._run_id(trial), RunStatus.to_string(RunStatus.FAILED))
