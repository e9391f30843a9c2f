"""`kd-study status`: where a study stands, read from its MLflow store alone.

The store is the one place every trial's state reaches while a study runs (the driver's Tune callback writes each
trial's run as it starts, reports and ends), so status works during a run, after it, and from any machine that
reaches the store: no Ray connection, no access to the Tune state. Counts are per arm and phase; `pending` is what
the spec still expects (search: `trials_per_arm`; final: `top_k x seeds`) beyond the runs that exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.config import StudySpec
from study.tracking import ARM, PHASE, StudyTracker

PHASES = ("search", "final")


@dataclass(frozen=True)
class PhaseStatus:
    arm: str
    phase: str
    done: int  # FINISHED runs (early-stopped ones included: `stopped_early` of them)
    running: int
    failed: int  # FAILED or KILLED runs
    pending: int
    stopped_early: int
    best: float | None  # best search metric (val_acc or agreement) of a trial's latest report, over this phase

    @property
    def expected(self) -> int:
        return self.done + self.running + self.failed + self.pending


def expected_trials(spec: StudySpec, phase: str) -> int:
    if phase == "search":
        return spec.search.trials_per_arm
    return spec.final.top_k * spec.final.seeds if spec.final is not None else 0


def study_status(spec: StudySpec, tracker: StudyTracker) -> list[PhaseStatus] | None:
    """Per arm and phase, in spec order; None when the store holds no experiment for this study yet."""
    if tracker.client.get_experiment_by_name(tracker.name) is None:
        return None
    runs = tracker.trial_runs()
    rows = []
    for arm in spec.arms:
        for phase in PHASES:
            expected = expected_trials(spec, phase)
            mine = [r for r in runs if r.data.tags.get(ARM) == arm.name and r.data.tags.get(PHASE, "search") == phase]
            if not expected and not mine:
                continue
            status = [r.info.status for r in mine]
            done = status.count("FINISHED")
            running = sum(s in ("RUNNING", "SCHEDULED") for s in status)
            failed = sum(s in ("FAILED", "KILLED") for s in status)
            metric = spec.search.metric
            vals = [r.data.metrics[metric] for r in mine if metric in r.data.metrics]
            vals = [v for v in vals if math.isfinite(v)]
            rows.append(
                PhaseStatus(
                    arm=arm.name,
                    phase=phase,
                    done=done,
                    running=running,
                    failed=failed,
                    pending=max(expected - len(mine), 0),
                    stopped_early=sum(r.data.tags.get("early_stopped") == "true" for r in mine),
                    best=max(vals) if vals else None,
                )
            )
    return rows
