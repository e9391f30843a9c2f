"""Ray Tune orchestration: one Tuner, an independent search and early stopping per arm.

Why per arm: the study needs every arm's best student, not the best arm. A single search would spend its budget on
the strongest surrogates and starve the weak ones, and one set of ASHA rungs would stop weak arms' trials early just
for being on a weak surrogate. Why one Tuner: concurrent Tuners starve each other and Ray does not support them.
So `PerArmSearch` keeps one seeded Optuna study per arm and hands out trials round-robin (equal trials per arm),
and `PerArmASHA` keeps one set of ASHA rungs per arm.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study import storage
from study.config import ParamSpace, StudySpec
from study.distill.trial import TrialPaths, tune_trainable
from study.tracking import MlflowTrialCallback, StudyTracker

log = logging.getLogger(__name__)

METRIC, MODE = "val_acc", "max"


def optuna_space(space: dict[str, ParamSpace]) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, p in space.items():
        if p.type == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(p.values or [])
        elif p.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(p.low or 0), int(p.high or 0))
        else:
            out[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform")
    return out


class PerArmSearch(Searcher):
    """One seeded Optuna (TPE) study per arm; trials are dealt to arms round-robin, `trials_per_arm` each."""

    def __init__(self, arms: list[str], space: dict[str, ParamSpace], trials_per_arm: int, seed: int) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.arms, self.trials_per_arm, self.seed = list(arms), trials_per_arm, seed
        self.space = optuna_space(space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per arm is noise
        self.searchers: dict[str, OptunaSearch] = {}
        if self.space:
            for i, arm in enumerate(self.arms):
                sampler = optuna.samplers.TPESampler(seed=seed + 1000 * i)
                self.searchers[arm] = OptunaSearch(space=self.space, metric=METRIC, mode=MODE, sampler=sampler)
        self.started: dict[str, int] = dict.fromkeys(self.arms, 0)
        self.trial_arm: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric and mode are fixed by the study

    def suggest(self, trial_id: str) -> dict | None:
        open_arms = [a for a in self.arms if self.started[a] < self.trials_per_arm]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda a: (self.started[a], self.arms.index(a)))
        config: dict[str, Any] = {}
        if arm in self.searchers:
            suggested = self.searchers[arm].suggest(trial_id)
            if suggested is None or suggested == Searcher.FINISHED:
                return suggested
            config.update(suggested)
        self.started[arm] += 1
        self.trial_arm[trial_id] = arm
        return {**config, "arm": arm, "seed": self.seed, "phase": "search"}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        arm = self.trial_arm.get(trial_id)
        if arm in self.searchers:
            self.searchers[arm].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arm = self.trial_arm.get(trial_id)
        if arm in self.searchers:
            self.searchers[arm].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))


class PerArmASHA(FIFOScheduler):
    """ASHA rungs kept separately for each arm (trials compete only with trials of their own arm)."""

    def __init__(self, max_reports: int, grace_reports: int, reduction_factor: int) -> None:
        super().__init__()
        self._metric, self._mode = METRIC, MODE
        self.max_reports, self.grace_reports, self.reduction_factor = max_reports, grace_reports, reduction_factor
        self.rungs: dict[str, ASHAScheduler] = {}

    def _for(self, trial: Trial) -> ASHAScheduler:
        arm = trial.config["arm"]
        if arm not in self.rungs:
            self.rungs[arm] = ASHAScheduler(
                time_attr="training_iteration",
                metric=METRIC,
                mode=MODE,
                max_t=self.max_reports,
                grace_period=min(self.grace_reports, self.max_reports),
                reduction_factor=self.reduction_factor,
            )
        return self.rungs[arm]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{arm}: {s.debug_string()}" for arm, s in self.rungs.items())


class TrialProgress(tune.Callback):
    """Forwards trial completions to a UI callable (not pickled: reattached when a study resumes)."""

    def __init__(self, on_update: Callable[[int, int], None] | None, total: int) -> None:
        self.on_update, self.total, self.done = on_update, total, 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_update": None}

    def _tick(self) -> None:
        self.done += 1
        if self.on_update:
            self.on_update(self.done, self.total)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tick()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tick()


def total_trials(spec: StudySpec) -> int:
    return spec.search.trials_per_arm * len(spec.arms)


def run_sweep(
    spec: StudySpec,
    paths: TrialPaths,
    tune_dir: str,
    tracker: StudyTracker,
    on_update: Callable[[int, int], None] | None = None,
) -> tune.ResultGrid:
    """Run (or resume) the study's search phase in one Tuner; raises if any trial failed."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=spec.resources.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    total = total_trials(spec)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, spec_json=spec.model_dump_json(), paths=paths),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    callbacks = [MlflowTrialCallback(tracker, spec.budget.images), TrialProgress(on_update, total)]
    name = tracker.name
    # On S3 Tune gets a pyarrow filesystem and a bucket/key path, so state and checkpoints live in the bucket and
    # a study resumes from any machine (Ray refuses a head-local storage_path on a multi-node cluster).
    filesystem, storage_path = storage.arrow_filesystem(tune_dir)
    experiment_dir = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(experiment_dir, storage_filesystem=filesystem):
        log.info("resuming Tune experiment %s", tune_dir)
        tuner = tune.Tuner.restore(
            experiment_dir, trainable=trainable, resume_errored=True, storage_filesystem=filesystem
        )
        # Tune restores callbacks from its pickle; give it live ones (UI, MLflow client) instead.
        tuner._local_tuner.get_run_config().callbacks = callbacks
    else:
        max_reports = math.ceil(spec.budget.images / spec.budget.report_every)
        sched = spec.search.scheduler
        scheduler: TrialScheduler = (
            PerArmASHA(max_reports, sched.grace_reports, sched.reduction_factor)
            if sched.kind == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=PerArmSearch(
                    [a.name for a in spec.arms], spec.search.space, spec.search.trials_per_arm, spec.seed
                ),
                scheduler=scheduler,
                num_samples=total,
                max_concurrent_trials=spec.resources.max_concurrent or None,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                callbacks=callbacks,
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
    results = tuner.fit()
    if results.num_errors:
        errors = "; ".join(f"{r.path}: {r.error}" for r in results if r.error is not None)
        raise RuntimeError(f"{results.num_errors} trial(s) failed: {errors[:2000]}")
    return results
