"""`kd-study rank`: fit the ranking model on a finished study and score candidate cards by teacher passes alone.

The model and its validation are `study.report.rank`; this module gathers what they need (the study's results
from the store, the candidates' raw pools measured through the teacher).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from study.config import StudySpec, load_card
from study.criteria.measures import batched, measure
from study.criteria.populations import arm_temperature, raw_pool
from study.device import pick_device
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.validation import study_paths
from study.report.rank import (
    AMOUNT,
    TARGET,
    TEACHER,
    RankError,
    Validation,
    model_points,
    score_candidates,
    surrogate_count,
    validate,
)
from study.report.stats import MIN_POINTS, arm_accuracy, ranking_metric
from study.report.study_report import collect_arms, collect_trials
from study.resources import resolve_card_path
from study.teacher.checkpoint import load_teacher


def rank_study_candidates(
    spec: StudySpec,
    spec_path: Path,
    candidates: list[str],
    cards_dir: Path | None = None,
    count: int | None = None,
) -> tuple[pd.DataFrame, Validation]:
    """`kd-study rank`: the finished study's surrogates fit the model, candidate cards get teacher passes only (in a
    study of several teachers, through each teacher: one row per candidate and teacher). `spec` comes as the run
    loaded it (`--set`, storage and tracking overrides applied)."""
    paths = study_paths(spec)
    # the study's experiment is named from the teacher's and the cards' contents too: a tracker made from the spec
    # alone opens another (empty) experiment
    tracker = open_tracker(spec, paths, str(spec_path.resolve().parent))
    arms = collect_arms(tracker)
    trials = collect_trials(tracker, arms)
    if len(trials) and ranking_metric(trials) != TARGET:
        raise RankError(
            f"study '{spec.name}' has no student test accuracies (its teacher has no labelled test split): "
            "`kd-study rank` predicts test accuracy, so it needs a study with eval data"
        )
    points = model_points(arm_accuracy(trials, spec.search.metric), arms) if len(trials) else pd.DataFrame()
    if surrogate_count(points) < MIN_POINTS:
        raise RankError(
            f"study '{spec.name}' has {surrogate_count(points)} surrogate(s) with finished results in "
            f"{paths.tracking_uri}; `kd-study rank` needs at least {MIN_POINTS} to fit and validate its model"
        )
    validation = validate(points)
    cards = [load_card(resolve_card_path(name, cards_dir)) for name in candidates]  # all validated before any pass
    rows = []
    for teacher_id in spec.teacher_ids:
        view = spec.for_teacher(teacher_id)
        teacher = load_teacher(paths.for_teacher(teacher_id).teacher, pick_device())
        for card in cards:
            arm = view.arms[0].model_copy(update={"name": card.name, "card": card.name, "train": {}})
            pool = raw_pool(card, spec.criteria.images, (teacher.meta.mean, teacher.meta.std), teacher.meta.num_classes)
            found = measure(teacher, batched(pool), arm_temperature(view, arm, card, teacher.meta))
            amount = count or card.count
            row = {"card": card.name, AMOUNT: math.log10(amount) if amount else math.nan}
            row |= {f"crit_raw_{k}": v for k, v in found.values.items()}
            rows.append(row | ({TEACHER: teacher_id} if spec.teachers else {}))
    return score_candidates(points, pd.DataFrame(rows)), validation
