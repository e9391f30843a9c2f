"""The driver-side Tune callback that writes one MLflow run per trial, through the study's `StudyTracker`.

Kept apart from `study.tracking` (the MLflow store, which the report layer reads) because it is Tune's side of
the study: it runs in the Tune controller and knows trials, not only runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.tracking import ERROR, LIVE_TRACKERS, MAX_TAG_LEN, OUTCOME, TRIAL_ID, StudyTracker

log = logging.getLogger(__name__)


def reached_budget(result: dict | None, study_budget: int | None) -> bool:
    """Whether a trial's latest result is at the end of its budget in images seen.

    The budget is the one the trial reports (`budget_images`): with `budget.mode: epochs` it is the arm's epochs times
    its own image count, so it differs per arm and never equals `budget.images`. `study_budget` is for results that
    carry no budget of their own (a stand-in trainable); None (epochs mode) leaves such a result short of its budget,
    since nothing says what its budget was.
    """
    result = result or {}
    budget = result.get("budget_images", study_budget)
    if budget is None:
        log.warning("a trial result carries no budget_images and the study has no fixed budget: counted as short")
        return False
    return float(result.get("images_seen", 0)) >= float(budget)


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

    def __init__(self, tracker: StudyTracker, budget_images: int | None) -> None:
        self.tracker = tracker
        self.budget_images = budget_images
        self.run_ids: dict[str, str] = {}
        self.opening: set[str] = set()
        self.ended_before: set[str] = set()
        self.recipe_logged: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "run_ids": {}, "opening": set(), "ended_before": set(), "recipe_logged": set()}

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
        recipe = {k.removeprefix("recipe."): v for k, v in result.items() if k.startswith("recipe.")}
        logged = self.__dict__.setdefault("recipe_logged", set())  # a callback pickled before it existed
        if recipe and trial.trial_id not in logged:
            logged.add(trial.trial_id)
            tracker = self.live
            self._submit(trial, "recipe", lambda client, run_id: tracker.log_recipe(run_id, recipe, client))

    def outcome(self, trial: Any) -> tuple[str, str]:
        last = trial.last_result or {}
        if last.get("diverged"):
            return "diverged", str(last.get("diverged_reason", ""))
        if not reached_budget(last, self.budget_images):
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
