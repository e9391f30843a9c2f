"""The tables a report is made of: the results read from the store, and the per-surrogate points the statistics,
the plots and the ranking model share (kept here so that `study.report.rank` and the report's sections need
nothing from the module that writes the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.criteria.measures import NOT_DATA_FREE
from study.report.stats import ranking_metric
from study.teacher.checkpoint import TeacherMeta

POPULATIONS = {"raw": "raw pool", "built": "built set", "trained": "trained batches"}
"""The populations criteria are measured on (`study.criteria`), by the name in their `crit_<population>_*` columns."""
CRITERIA_PREFIXES = tuple(f"crit_{p}_" for p in POPULATIONS)


def population_of(column: str) -> str:
    """`crit_trained_confidence` -> 'trained'."""
    return column.split("_", 2)[1]


@dataclass
class StudyResults:
    """Everything a report shows, read from the store."""

    name: str
    tracking_uri: str
    spec_json: str
    teacher: TeacherMeta | None
    trials: pd.DataFrame
    arms: pd.DataFrame  # one row per arm: params and crit_raw_* / crit_built_* / crit_trained_* columns
    ranking: pd.DataFrame
    points: pd.DataFrame  # one row per surrogate (its point arm): accuracy and criteria
    correlations: pd.DataFrame
    expected_trials: int | None = None
    curves: dict[str, list[tuple[str, list[int], list[float]]]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Path]] = field(default_factory=dict)
    validation: object | None = None  # study.rank.Validation
    validation_problem: str | None = None  # why the ranking model could not be validated (a RankError)
    metric: str = "val_acc"  # the search metric: what picks an arm's best search trial
    environments: dict[str, dict] = field(default_factory=dict)  # id -> study.environment.probe(), oldest first

    @property
    def ranked_by(self) -> str:
        """The score arms are ranked on: `test_acc`, or `agreement` when the study has no labelled test split."""
        return ranking_metric(self.trials)

    @property
    def criteria_columns(self) -> list[str]:
        return [c for c in self.arms.columns if c.startswith(CRITERIA_PREFIXES)]

    @property
    def partial(self) -> str:
        """'' for a finished study, else what is missing (the report is readable while a study runs)."""
        finished = int((self.trials["status"] != "RUNNING").sum()) if len(self.trials) else 0
        running = len(self.trials) - finished
        if self.expected_trials and finished < self.expected_trials:
            return f"partial results: {finished} of {self.expected_trials} trials ended, {running} running"
        return f"partial results: {running} trial(s) still running" if running else ""


def surrogate_points(ranking: pd.DataFrame, arms: pd.DataFrame, per: tuple[str, ...] = ("surrogate",)) -> pd.DataFrame:
    """One row per surrogate (per `per`: `kd-study rank` keeps one per surrogate and amount): the score of its point
    arm (the flag `record_arms` logs; else its best-ranked arm) with that arm's criteria. Variants of one surrogate
    are not independent points."""
    if not len(ranking):
        return pd.DataFrame()
    joined = ranking.merge(arms.drop(columns=["surrogate"]), on="arm", how="left")
    joined["flag"] = joined["surrogate_point"].astype(str).str.lower() == "true"
    joined = joined.sort_values(["flag", str(ranking["ranked_by"].iloc[0])], ascending=False)
    return joined.drop_duplicates(list(per)).drop(columns="flag").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ wording
def criterion_label(column: str) -> str:
    """`crit_raw_class_entropy` -> 'class entropy (raw pool)'; a dagger marks criteria that are not data-free."""
    population = POPULATIONS[population_of(column)]
    name = column.split("_", 2)[2]
    return f"{name.replace('_', ' ')} ({population}){' †' if name in NOT_DATA_FREE else ''}"
