"""Ray Tune orchestration: one Tuner, an independent search and early stopping per arm, resumable.

Why per arm: the study needs every arm's best student, not the best arm. A single search would spend its budget on
the strongest surrogates and starve the weak ones, and one set of ASHA rungs would stop weak arms' trials early just
for being on a weak surrogate. Why one Tuner: concurrent Tuners starve each other and Ray does not support them.
So `PerArmSearch` keeps one seeded Optuna study per arm and hands out trials round-robin (equal trials per arm),
and `PerArmASHA` keeps one set of ASHA rungs per arm.

A trial's config always carries `arm`, `seed` and `phase` (`TRIAL_KEYS`); everything else in it overrides the
arm's `TrainSpec`. Only phases in `EARLY_STOPPED_PHASES` are early-stopped, so a later phase (e.g. `final`:
the best configs rerun with several seeds, queued with `PerArmSearch.enqueue`) runs to its full budget.

Resume uses public APIs only. Tune saves the searcher with the experiment (`Searcher.save`/`restore`, here as
JSON) but not the scheduler, so `PerArmASHA` writes its rungs beside the experiment (from a background thread,
the latest state only, never on the controller's thread) and reloads them when a restored Tuner hands it its
first trial. Tune restores callbacks and the scheduler from its own
pickle; what must not be pickled (the UI hook, the rungs' location, the MLflow client) is looked up at call time
in `LIVE`, keyed by experiment name, which `run_sweep` fills before every `fit`.

Scale: the cost of a result does not grow with the trial count. Trials checkpoint every `resources.checkpoint_s`
(not every report) and Tune keeps `KEEP_CHECKPOINTS` per trial, so it forces an experiment-state sync at most once
per period whatever the number of trials; Tune's per-trial CSV/JSON/TensorBoard logger files are off (MLflow is
the record), so the synced folder holds only the experiment state. `max_pending` trials are kept pending so an
autoscaler sees the whole demand of a phase at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study import storage
from study.config import FinalSpec, ParamSpace, StudySpec
from study.distill.trial import TrialPaths, tune_trainable
from study.orchestrate.failures import FailureBudget, guarded, ledger_location, prepare_restore
from study.orchestrate.trial_runs import MlflowTrialCallback, reached_budget
from study.orchestrate.validation import total_trials
from study.tracking import ARM, OUTCOME, PHASE, TRIAL_ID, StudyTracker

log = logging.getLogger(__name__)

METRIC, MODE = "val_acc", "max"
TRIAL_KEYS = ("arm", "seed", "phase")
EARLY_STOPPED_PHASES = frozenset({"search"})
TPE_STARTUP_TRIALS = 10
"""Optuna's TPESampler default `n_startup_trials`: its first suggestions per arm are seeded random draws that ignore
results, so only later ones depend on which results it has been told."""
RUNGS_SUFFIX = ".kd_study_rungs.json"
KEEP_CHECKPOINTS = 2
"""Checkpoints Tune keeps per trial. Tune forces an experiment-state sync when a trial has checkpointed this many
times since the last sync, so that the synced state never names a deleted checkpoint; with trials checkpointing
every `checkpoint_s`, that is at most one forced sync per `checkpoint_s`."""


def rungs_location(tune_dir: str, experiment: str) -> str:
    """Where an experiment's ASHA rungs live: beside its Tune folder, not inside it. Tune stages the experiment
    folder on the driver and syncs the staged copy back over the folder, which would restore a stale file."""
    return storage.join(tune_dir, experiment + RUNGS_SUFFIX)


@dataclass(frozen=True)
class FinishedRun:
    """A trial run the MLflow store holds with an outcome, as a restored searcher needs it to adopt the trial."""

    trial_id: str
    arm: str
    phase: str
    seed: int
    params: dict[str, str]
    value: float | None  # the objective Optuna would have been told; None: the trial failed
    full: bool  # reached its budget (eligible for the final phase)


def finished_runs(tracker: StudyTracker, metric: str) -> list[FinishedRun]:
    """Every trial run with an outcome in the study's store (one paged read, done once per restore)."""
    found = []
    for run in tracker.trial_runs():
        tags, params = run.data.tags, run.data.params
        outcome = tags.get(OUTCOME)
        if not outcome or TRIAL_ID not in tags or ARM not in tags or not params.get("seed", "").isdigit():
            continue
        value = None if outcome == "failed" else 0.0 if outcome == "diverged" else run.data.metrics.get(metric)
        if value is None and outcome != "failed":
            continue  # its objective was not recorded: the slot runs again rather than count as a failure
        phase = tags.get(PHASE, "search")
        found.append(
            FinishedRun(
                tags[TRIAL_ID], tags[ARM], phase, int(params["seed"]), dict(params), value, outcome == "completed"
            )
        )
    return found


@dataclass
class LiveContext:
    """What a restored Tuner's unpickled callbacks, searcher and scheduler need from the process that runs it."""

    on_update: Callable[[int, int], None] | None = None
    rungs_uri: str | None = None
    rungs_writer: RungsWriter | None = None
    finished_runs: list[FinishedRun] | None = None  # set on restore, taken by the searcher (`PerArmSearch.adopt`)
    adopted: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


LIVE: dict[str, LiveContext] = {}
ADOPTED_SLOT: Any = object()
"""What `PerArmSearch._deal_search` returns when it filled the slot with an adopted trial instead of dealing it."""


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


def objective_value(result: dict | None, metric: str) -> float | None:
    """The value Optuna and ASHA see: a diverged trial scores 0 (a result, not a failure)."""
    if not result:
        return None
    if result.get("diverged"):
        return 0.0
    value = result.get(metric)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def param_value(dist: optuna.distributions.BaseDistribution, text: str) -> Any:
    """A searched value as MLflow stored it (a string) back in its distribution's type; ValueError if it is not
    one of the distribution's values."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not among {list(dist.choices)}")
    if not isinstance(dist, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution):
        raise ValueError(f"no reading for {type(dist).__name__}")
    value: Any = int(float(text)) if isinstance(dist, optuna.distributions.IntDistribution) else float(text)
    if not dist.low <= value <= dist.high:
        raise ValueError(f"{text!r} is outside [{dist.low}, {dist.high}]")
    return value


# ------------------------------------------------------------------------------------------------ search
def in_arm_order_matters(spec: StudySpec) -> bool:
    """Whether two search trials of one arm running at once could make a decision depend on which result arrived
    first: ASHA compares a trial with the values recorded at its rung before it, and TPE (after its start-up
    trials) suggests from the results it has been told so far. Then `PerArmSearch(sequential=True)` runs each arm's
    search trials one after another (arms still run side by side), so a study with `max_concurrent` 1 or 8 makes
    the same decisions: no decision depends on which result arrived first."""
    tpe_learns = bool(spec.search.space) and spec.search.trials_per_arm > TPE_STARTUP_TRIALS
    return spec.search.scheduler.kind == "asha" or tpe_learns


class PerArmSearch(Searcher):
    """One Optuna (TPE) study per arm; trials are dealt to arms round-robin, `trials_per_arm` each.

    The state is plain data (saved as JSON with the experiment): each arm's Optuna trials and which Tune trial
    holds which Optuna trial. Each suggestion uses a sampler seeded from (study seed, arm, trial number), so an
    interrupted and resumed study suggests exactly what an uninterrupted one would.

    A search trial is eligible for the final phase when it reached the budget its own result reports
    (`budget_images`: per arm in `budget.mode: epochs`); `budget_images` here only stands in for results that
    report none (`fixed_budget_images`).

    With `sequential`, an arm gets its next search trial only when its previous ones have ended (see
    `in_arm_order_matters`); the slots go to other arms meanwhile. A restored searcher forgets which trials were
    running (a trial that ended while the driver was dead would otherwise hold its arm forever), so only a resumed
    study may overlap an arm's trials.

    Adoption. Tune snapshots the experiment every few seconds, so a driver killed between snapshots loses the
    trials it dealt since the last one; the restored search deals their slots again. A lost trial that had already
    finished has its run, with an outcome, in the MLflow store: `adopt` takes those runs, and when the search comes
    to a slot one of them filled (same arm, phase and seed: a slot's seed is fixed by `trial_seed`) it records that
    trial's params and result (Optuna, the final phase) instead of dealing the slot again. Nothing runs twice and
    no finished result is dropped; the adopted trial is in the store but not in Tune's result grid.
    """

    def __init__(
        self,
        arms: list[str],
        space: dict[str, ParamSpace],
        trials_per_arm: int,
        seed: int,
        metric: str = METRIC,
        final: FinalSpec | None = None,
        budget_images: int | None = None,
        sequential: bool = False,
        experiment: str | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=MODE)
        self.experiment = experiment  # its `LIVE` entry: where a restored searcher finds runs to adopt
        self.adoptable: dict[tuple[str, str, int], FinishedRun] = {}
        self.final, self.budget_images, self.sequential = final, budget_images, sequential
        self.searching: dict[str, list[str]] = {arm: [] for arm in arms}  # search trials running, per arm
        self.search_results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        self.final_queued: list[str] = []  # arms whose final phase has been queued
        self.arms, self.trials_per_arm, self.seed, self.objective = list(arms), trials_per_arm, seed, metric
        self.space = optuna_space(space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per arm is noise
        self.studies = {arm: optuna.create_study(direction="maximize") for arm in self.arms}
        self.started: dict[str, int] = dict.fromkeys(self.arms, 0)
        self.trials: dict[str, dict[str, Any]] = {}  # Tune trial id -> {arm, phase, number}
        self.queued: list[dict[str, Any]] = []

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric and mode are fixed by the study

    def enqueue(self, config: dict[str, Any]) -> None:
        """Run `config` (with `arm`, `seed`, `phase`) before any further search trial, e.g. a final-phase rerun."""
        missing = [k for k in TRIAL_KEYS if k not in config]
        if missing:
            raise ValueError(f"a queued trial config needs {missing}")
        self.queued.append(dict(config))

    def adopt(self, finished: list[FinishedRun]) -> None:
        """Runs that finished in the store; those of trials this searcher does not know fill their slots when
        the search reaches them (see the class docstring)."""
        self.adoptable = {
            (r.arm, r.phase, r.seed): r for r in finished if r.trial_id not in self.trials and r.arm in self.studies
        }
        if self.adoptable:
            log.info("%d finished trial(s) lost with the killed driver can be adopted", len(self.adoptable))

    def _take_live_runs(self) -> None:
        live = LIVE.get(self.__dict__.get("experiment") or "")
        if live is not None and live.finished_runs is not None:
            self.adopt(live.finished_runs)
            live.finished_runs = None

    def _adopted(self, run: FinishedRun) -> None:
        log.info(
            "arm %s: adopted %s trial %s (finished before the driver was killed)", run.arm, run.phase, run.trial_id
        )
        live = LIVE.get(self.__dict__.get("experiment") or "")
        if live is not None:
            live.adopted.append(run.trial_id)

    def _adopt_search(self, arm: str, run: FinishedRun) -> bool:
        """Record a lost, finished search trial in its slot; False (the slot is dealt again) when its params do
        not fit the search space."""
        try:
            params = {name: param_value(dist, run.params[name]) for name, dist in self.space.items()}
        except (KeyError, ValueError) as err:
            log.warning("trial %s cannot be adopted (param %s); its slot runs again", run.trial_id, err)
            return False
        number = None
        if self.space:
            study = self.studies[arm]
            number = len(study.trials)
            state = optuna.trial.TrialState.FAIL if run.value is None else optuna.trial.TrialState.COMPLETE
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=self.space, state=state, value=run.value)
            )
        info = {"arm": arm, "phase": "search", "number": number, "params": params, "index": self.started[arm]}
        self.started[arm] += 1
        self.trials[run.trial_id] = info
        if self.final is not None:
            self._record_search_value(run.trial_id, info, run.value, run.full)
        self._adopted(run)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        self._take_live_runs()
        while True:
            adoptable = self.__dict__.setdefault("adoptable", {})  # a searcher pickled before adoption existed
            if self.queued:
                config = self.queued.pop(0)
                run = adoptable.pop((config["arm"], config["phase"], int(config["seed"])), None)
                if run is not None:
                    self.trials[run.trial_id] = {"arm": run.arm, "phase": run.phase, "number": None}
                    self._adopted(run)
                    continue
                self.trials[trial_id] = {"arm": config["arm"], "phase": config["phase"], "number": None}
                return config
            config = self._deal_search(trial_id, adoptable)
            if config is not ADOPTED_SLOT:
                return config

    def _deal_search(self, trial_id: str, adoptable: dict[tuple[str, str, int], FinishedRun]) -> Any:
        open_arms = [a for a in self.arms if self.started[a] < self.trials_per_arm]
        if not open_arms:
            if self.final is not None and len(self.final_queued) < len(self.arms):
                return None  # an arm's search is still running: its final phase comes after it
            return Searcher.FINISHED
        if self.sequential:
            open_arms = [a for a in open_arms if not self.searching[a]]
            if not open_arms:
                return None  # every open arm has a search trial running: asked again when one ends
        arm = min(open_arms, key=lambda a: (self.started[a], self.arms.index(a)))
        seed = trial_seed(self.seed, arm, "search", self.started[arm])
        run = adoptable.pop((arm, "search", seed), None)
        if run is not None and self._adopt_search(arm, run):
            return ADOPTED_SLOT
        config: dict[str, Any] = {}
        number = None
        if self.space:
            study = self.studies[arm]
            number = len(study.trials)
            study.sampler = optuna.samplers.TPESampler(seed=self.seed + 1000 * self.arms.index(arm) + 7919 * number)
            config.update(study.ask(self.space).params)
        index = self.started[arm]
        self.started[arm] += 1
        self.searching[arm].append(trial_id)
        self.trials[trial_id] = {"arm": arm, "phase": "search", "number": number, "params": config, "index": index}
        return {**config, "arm": arm, "seed": seed, "phase": "search"}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        info = self.trials.get(trial_id)
        if info is None:
            return
        if trial_id in self.searching.get(info["arm"], []):
            self.searching[info["arm"]].remove(trial_id)
        if info["phase"] == "search" and self.final is not None:
            self._record_search_result(trial_id, info, result, error)
        if info["number"] is None:
            return
        study = self.studies[info["arm"]]
        if study.trials[info["number"]].state.is_finished():
            return
        value = None if error else objective_value(result, self.objective)
        if value is None:
            # TPE ignores failed trials; only crashes land here (a diverged trial is told 0 above)
            study.tell(info["number"], state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(info["number"], value)

    # -------------------------------------------------------------------------------------- final phase
    def _record_search_result(self, trial_id: str, info: dict[str, Any], result: dict | None, error: bool) -> None:
        arm = info["arm"]
        if any(r["trial_id"] == trial_id for r in self.search_results[arm]):
            return
        value = None if error else objective_value(result, self.objective)
        full = bool(result) and not error and not (result or {}).get("diverged")
        self._record_search_value(trial_id, info, value, full and reached_budget(result, self.budget_images))

    def _record_search_value(self, trial_id: str, info: dict[str, Any], value: float | None, full: bool) -> None:
        arm = info["arm"]
        index = info.get("index", len(self.search_results[arm]))
        self.search_results[arm].append(
            {"trial_id": trial_id, "params": info.get("params", {}), "value": value, "full": full, "index": index}
        )
        if len(self.search_results[arm]) >= self.trials_per_arm and arm not in self.final_queued:
            self._queue_final(arm)

    def _queue_final(self, arm: str) -> None:
        """Queue the arm's top-k configs (by the search metric, among search trials that reached the full budget
        and did not diverge) with `seeds` distinct seeds each; ties keep the trial dealt first (its index in the
        arm, not the order results arrived in)."""
        assert self.final is not None
        eligible = [r for r in self.search_results[arm] if r["full"] and r["value"] is not None]
        best = sorted(eligible, key=lambda r: (-r["value"], r.get("index", 0)))[: self.final.top_k]
        for rank, record in enumerate(best):
            for k in range(self.final.seeds):
                seed = trial_seed(self.seed, arm, "final", rank * self.final.seeds + k)
                self.enqueue({**record["params"], "arm": arm, "seed": seed, "phase": "final"})
        self.final_queued.append(arm)
        log.info("arm %s: final phase queued for %d config(s) x %d seeds", arm, len(best), self.final.seeds)

    # -------------------------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        def trial_state(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
            return {
                "params": t.params,
                "distributions": {k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()},
                "state": t.state.name,
                "value": t.value,
            }

        return {
            "arms": self.arms,
            "studies": {arm: [trial_state(t) for t in study.trials] for arm, study in self.studies.items()},
            "started": self.started,
            "trials": self.trials,
            "queued": self.queued,
            "search_results": self.search_results,
            "final_queued": self.final_queued,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a restored searcher never ran __init__
        for arm, trials in state["studies"].items():
            study = optuna.create_study(direction="maximize")
            for t in trials:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=t["params"],
                        distributions={
                            k: optuna.distributions.json_to_distribution(d) for k, d in t["distributions"].items()
                        },
                        state=optuna.trial.TrialState[t["state"]],
                        value=t["value"],
                    )
                )
            self.studies[arm] = study
        self.started = dict(state["started"])
        self.trials = dict(state["trials"])
        self.queued = list(state["queued"])
        self.search_results = {arm: list(r) for arm, r in state.get("search_results", {}).items()}
        self.final_queued = list(state.get("final_queued", []))
        # which trials were running is not restored (see the class docstring); a searcher pickled before
        # `sequential` existed deals as it did then
        self.searching = {arm: [] for arm in self.arms}
        self.__dict__.setdefault("sequential", False)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.state()))

    def restore(self, checkpoint_path: str) -> None:
        self.load_state(json.loads(Path(checkpoint_path).read_text()))

    def finished_values(self, arm: str) -> list[float]:
        """The objective values Optuna holds for `arm` (complete trials only)."""
        return [t.value for t in self.studies[arm].trials if t.state == optuna.trial.TrialState.COMPLETE]


# ------------------------------------------------------------------------------------------------ early stopping
class ArmRungs:
    """One arm's ASHA rungs (Li et al., MLSys 2020), the same decisions as Ray's `ASHAScheduler` with one bracket.

    Milestones are `grace * rf^k` reports up to `max_reports`; at its first result at or past a milestone a trial
    is recorded there and stopped when below the `1 - 1/rf` quantile of the values recorded there before it.
    """

    def __init__(self, max_reports: int, grace_reports: int, reduction_factor: int) -> None:
        self.max_reports, self.rf = max_reports, reduction_factor
        grace = min(grace_reports, max_reports)
        count = int(np.log(max_reports / grace) / np.log(reduction_factor) + 1)
        self.rungs: list[tuple[int, dict[str, float]]] = [
            (int(grace * reduction_factor**k), {}) for k in reversed(range(count))
        ]

    def on_result(self, trial_id: str, iteration: int, value: float | None) -> str:
        if iteration >= self.max_reports:
            return TrialScheduler.STOP
        for milestone, recorded in self.rungs:
            if iteration < milestone or trial_id in recorded:
                continue
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100) if recorded else None
            decision = TrialScheduler.STOP if cutoff is not None and value is not None and value < cutoff else None
            if value is not None:
                recorded[trial_id] = value
            return decision or TrialScheduler.CONTINUE
        return TrialScheduler.CONTINUE

    def state(self) -> list[list[Any]]:
        return [[m, dict(r)] for m, r in self.rungs]

    def load_state(self, state: list[list[Any]]) -> None:
        self.rungs = [(int(m), {k: float(v) for k, v in r.items()}) for m, r in state]


class PerArmASHA(FIFOScheduler):
    """ASHA rungs kept separately for each arm (trials compete only with trials of their own arm).

    The rungs are written to `rungs_uri` (next to the Tune experiment) after every recorded result and read back
    the first time a restored Tuner calls in, so a killed-and-resumed study stops the same trials as an
    uninterrupted one. The location comes from `LIVE[experiment]` when set (a restored Tuner's unpickled copy
    may have been made on another machine), else from the constructor.
    """

    def __init__(
        self,
        max_reports: int,
        grace_reports: int,
        reduction_factor: int,
        experiment: str = "",
        rungs_uri: str | None = None,
        metric: str = METRIC,
    ) -> None:
        super().__init__()
        self.objective = metric
        self.max_reports, self.grace_reports, self.reduction_factor = max_reports, grace_reports, reduction_factor
        self.experiment, self.default_rungs_uri = experiment, rungs_uri
        self.arm_rungs: dict[str, ArmRungs] = {}
        self.loaded = False
        self.writer: RungsWriter | None = None

    @property
    def metric(self) -> str:
        return self.objective

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "loaded": False, "writer": None}

    @property
    def rungs_uri(self) -> str | None:
        live = LIVE.get(self.experiment)
        return live.rungs_uri if live and live.rungs_uri else self.default_rungs_uri

    def _load(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        uri = self.rungs_uri
        if uri and storage.exists(uri):
            self.load_state(json.loads(storage.read_text(uri)))
            log.info("early-stopping rungs restored from %s", uri)

    def _save(self) -> None:
        uri = self.rungs_uri
        if not uri:
            return
        live = LIVE.get(self.experiment)
        if live and live.rungs_writer and live.rungs_writer.uri == uri:
            writer = live.rungs_writer  # the sweep's, which it flushes when `fit` returns
        else:
            if self.writer is None or self.writer.uri != uri:
                self.writer = RungsWriter(uri)
            writer = self.writer
        writer.submit(json.dumps(self.state()))

    def rungs_for(self, arm: str) -> ArmRungs:
        if arm not in self.arm_rungs:
            self.arm_rungs[arm] = ArmRungs(self.max_reports, self.grace_reports, self.reduction_factor)
        return self.arm_rungs[arm]

    def decide(self, arm: str, phase: str, trial_id: str, iteration: int, result: dict) -> str:
        """The stopping decision for one result; the public core that tests feed recorded results into."""
        if phase not in EARLY_STOPPED_PHASES:
            return TrialScheduler.CONTINUE
        return self.rungs_for(arm).on_result(trial_id, iteration, objective_value(result, self.objective))

    def state(self) -> dict[str, Any]:
        return {arm: rungs.state() for arm, rungs in self.arm_rungs.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        for arm, rungs in state.items():
            self.rungs_for(arm).load_state(rungs)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._load()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._load()
        config = trial.config
        decision = self.decide(
            config["arm"], config.get("phase", "search"), trial.trial_id, int(result["training_iteration"]), result
        )
        self._save()
        return decision

    def debug_string(self) -> str:
        return f"PerArmASHA over {sorted(self.arm_rungs)}"


class RungsWriter:
    """Writes the latest rungs to `uri` from one background thread: a decision never waits on storage, and a
    burst of results costs one write of the newest state, not one per result. A write that fails is retried with
    the newest state on the next submit or flush (the rungs are a pure function of the recorded results, and a
    resumed study re-records what a lost write missed)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.latest: str | None = None
        self.written: str | None = None
        self.writes = 0
        self.cond = threading.Condition()
        self.busy = False
        self.thread = threading.Thread(target=self._loop, name="kd-study-rungs-writer", daemon=True)
        self.thread.start()

    def submit(self, text: str) -> None:
        with self.cond:
            self.latest = text
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.latest is None or self.latest == self.written:
                    self.cond.wait()
                text, self.busy = self.latest, True
            try:
                storage.write_text(self.uri, text)
                ok = True
            except Exception as err:  # storage hiccup: the next submit or flush writes the newest state again
                log.warning("writing early-stopping rungs to %s failed (%s); will retry", self.uri, err)
                ok = False
            with self.cond:
                self.busy = False
                if ok:
                    self.written, self.writes = text, self.writes + 1
                self.cond.notify_all()
            if not ok:
                time.sleep(1.0)

    def flush(self, timeout: float = 300.0) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.latest is None or self.latest == self.written, timeout=timeout):
                raise RuntimeError(f"early-stopping rungs could not be written to {self.uri} within {timeout:.0f} s")


# ------------------------------------------------------------------------------------------------ progress
class TrialProgress(tune.Callback):
    """Counts trials that reached an outcome and tells the UI through `LIVE[experiment].on_update`."""

    def __init__(self, experiment: str, total: int) -> None:
        self.experiment, self.total, self.done = experiment, total, 0

    def _tick(self) -> None:
        self.done += 1
        live = LIVE.get(self.experiment)
        if live and live.on_update:
            live.on_update(self.done + len(live.adopted), self.total)  # adopted trials ended in a killed driver

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tick()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tick()


# ------------------------------------------------------------------------------------------------ the sweep
def trial_resources(spec: StudySpec) -> dict[str, float]:
    """Ray resources of one trial. Fractions pack trials: `gpu: 0.25` runs four trials on each GPU (small
    students leave most of a GPU idle; Ray sets CUDA_VISIBLE_DEVICES so the four share the same device)."""
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}


def trial_seed(study_seed: int, arm: str, phase: str, index: int) -> int:
    """A trial's own seed, derived from (study seed, arm, phase, index): reproducible, distinct across trials and
    arms (so an empty search space still gives an arm independent runs), independent of scheduling order."""
    digest = hashlib.sha256(f"{study_seed}/{arm}/{phase}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def ray_address(spec: StudySpec) -> str:
    """The spec's cluster, else the one a Ray job runs in, else a new local runtime (never a stranger's)."""
    return spec.resources.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def connect_ray(spec: StudySpec) -> None:
    """This process's Ray runtime, joined or started once (`ray_address`): the sweep and the pre-sweep tasks share
    it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=ray_address(spec),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )


def fixed_budget_images(spec: StudySpec) -> int | None:
    """The images every trial trains on when that is one number for the study (`budget.mode: images`); None in
    `budget.mode: epochs`, where each arm's budget is its epochs times its own image count and only the trial
    knows it (it reports `budget_images`). Never compare a trial with `budget.images` directly: epochs mode leaves
    it at its default, which no epochs trial reaches."""
    return spec.budget.images if spec.budget.mode == "images" else None


DEFAULT_MAX_PENDING = 64
"""Pending trials when the spec sets none: a 64-GPU cluster's worth of demand. Every trial of a 2,000-trial phase
pending cut the controller's rate to a tenth of its 100-trial rate (benchmarks/tune_scale.py); with 64 a result
costs the same at 2,000 trials as at 100 (ratio 0.98, both measured in one run)."""


def max_pending(spec: StudySpec) -> int:
    """Trials Tune keeps pending (each with its placement group requested), so an autoscaler sees the demand:
    `resources.max_pending`, else every dealt trial of the largest phase up to `DEFAULT_MAX_PENDING`; never more
    than `max_concurrent`."""
    final = spec.final.top_k * spec.final.seeds if spec.final is not None else 0
    phase = max(spec.search.trials_per_arm, final) * len(spec.arms)
    pending = spec.resources.max_pending or min(phase, DEFAULT_MAX_PENDING)
    return min(pending, spec.resources.max_concurrent or pending)


def tune_environment(spec: StudySpec) -> dict[str, str]:
    """Tune settings only its environment exposes, set by `run_sweep` before each `fit`: pending trials (Tune's
    default is one for a custom searcher) and no per-trial logger files (MLflow is the record)."""
    return {"TUNE_MAX_PENDING_TRIALS_PG": str(max_pending(spec)), "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def max_reports(spec: StudySpec) -> int:
    return spec.budget.reports


@dataclass(frozen=True)
class SweepResult:
    """What the sweep left behind: Tune's result grid and where its experiment lives."""

    grid: tune.ResultGrid
    experiment_dir: str
    restored: bool
    adopted: int = 0  # finished trials of a killed driver that the resumed search adopted (in MLflow, not the grid)


def run_sweep(
    spec: StudySpec,
    paths: TrialPaths,
    tune_dir: str,
    tracker: StudyTracker,
    on_update: Callable[[int, int], None] | None = None,
    trainable_fn: Callable[..., None] | None = None,
) -> SweepResult:
    """Run (or resume) the study's trials in one Tuner. Failed trials do not raise: they are outcomes.

    `trainable_fn` replaces the KD trial (same signature as `tune_trainable`): benchmarks measure the plumbing
    around a stand-in trial with it."""
    connect_ray(spec)
    name = tracker.name
    ledger = ledger_location(tune_dir, name)
    trainable = tune.with_resources(
        guarded(
            tune.with_parameters(trainable_fn or tune_trainable, spec_json=spec.model_dump_json(), paths=paths), ledger
        ),
        trial_resources(spec),
    )
    experiment_dir = storage.join(tune_dir, name)
    rungs_writer = RungsWriter(rungs_location(tune_dir, name))
    LIVE[name] = LiveContext(on_update=on_update, rungs_uri=rungs_writer.uri, rungs_writer=rungs_writer)
    # set for this fit only: the process may run other Tuners (tests, notebooks) that expect Tune's defaults
    saved_env = {key: os.environ.get(key) for key in tune_environment(spec)}
    os.environ.update(tune_environment(spec))
    # with the logger files off, Tune's result grid warns that it found no result.json for every trial: MLflow is
    # the record, so that warning says nothing to a kd-study user
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    saved_level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    tracker.make_live()
    # On S3 Tune gets a pyarrow filesystem and a bucket/key path, so state and checkpoints live in the bucket and
    # a study resumes from any machine (Ray refuses a head-local storage_path on a multi-node cluster).
    filesystem, fs_experiment_dir = storage.arrow_filesystem(experiment_dir)
    restored = tune.Tuner.can_restore(fs_experiment_dir, storage_filesystem=filesystem)
    try:
        if restored:
            log.info("resuming Tune experiment %s", experiment_dir)
            LIVE[name].finished_runs = finished_runs(tracker, spec.search.metric)
            # Trials that errored because their node died resume (failures.py); those whose own exceptions spent
            # search.max_failures stay failed outcomes: the guard ends their resumption before it trains.
            tuner = tune.Tuner.restore(
                fs_experiment_dir,
                trainable=trainable,
                resume_errored=prepare_restore(ledger),
                storage_filesystem=filesystem,
            )
        else:
            tuner = new_tuner(spec, trainable, tune_dir, tracker)
        grid = tuner.fit()
        tracker.flush()
        rungs_writer.flush()
        adopted = len(LIVE[name].adopted)
    finally:
        LIVE.pop(name, None)
        analysis_log.setLevel(saved_level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return SweepResult(grid, experiment_dir, restored, adopted)


def new_tuner(spec: StudySpec, trainable: Any, tune_dir: str, tracker: StudyTracker) -> tune.Tuner:
    name = tracker.name
    filesystem, storage_path = storage.arrow_filesystem(tune_dir)
    sched = spec.search.scheduler
    scheduler: TrialScheduler = (
        PerArmASHA(
            max_reports(spec),
            sched.grace_reports,
            sched.reduction_factor,
            experiment=name,
            rungs_uri=rungs_location(tune_dir, name),
            metric=spec.search.metric,
        )
        if sched.kind == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=PerArmSearch(
                [a.name for a in spec.arms],
                spec.search.space,
                spec.search.trials_per_arm,
                spec.seed,
                final=spec.final,
                budget_images=fixed_budget_images(spec),
                metric=spec.search.metric,
                sequential=spec.resources.order == "deterministic" and in_arm_order_matters(spec),
                experiment=name,
            ),
            scheduler=scheduler,
            num_samples=total_trials(spec),
            max_concurrent_trials=spec.resources.max_concurrent or None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=[
                FailureBudget(ledger_location(tune_dir, name), spec.search.max_failures),
                MlflowTrialCallback(tracker, fixed_budget_images(spec)),
                TrialProgress(name, total_trials(spec)),
            ],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            # retries of a trial that raised (a diverged trial does not raise: it is a result); FailureBudget raises
            # each trial's ceiling by the node losses it forgives and ends a trial whose exceptions spent the budget
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures + 1),
        ),
    )
