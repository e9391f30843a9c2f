"""Predict before you distill: score candidate surrogates from their raw-pool criteria alone.

A finished study gives, per surrogate, the raw-pool criteria (teacher forward passes) and the student accuracy KD
reached on it. A ridge regression on the standardised criteria, fitted on those surrogates, then scores new
candidate cards from teacher passes only, with no student training. Ridge because a study holds a handful of
surrogates and a dozen correlated criteria: unregularised least squares would interpolate them.

How many images a surrogate supplies is a feature too (`log_amount`, log10 of the arm's image count), whenever it
varies across the study: an amount study (`counts:`) contributes one point per amount of a surrogate, and a
candidate is scored at the amount it would supply (its card's `count`, or `kd-study rank --count`).

Whether that is worth anything is measured, not assumed: leave-one-surrogate-out (fit on all surrogates but one,
predict every point of the one left out, so its other amounts never leak into its prediction) gives a rank
correlation of predicted with achieved accuracy, set beside the same procedure on class entropy alone (the paper's
criterion). The report and `kd-study rank` say plainly when the model does not beat class entropy.

**Several teachers.** Accuracies and criteria are on each teacher's own scale (a CIFAR-100 student lands far below a
CIFAR-10 one on any surrogate; class entropy is bounded by log K), so a study of several teachers fits one model on
within-teacher quantities: the target is accuracy relative to the teacher's in-domain arm, else the within-teacher
rank scaled to [0, 1] (`cross_teacher.normalise_accuracy`, the report's scale), and each criterion is a z-score
among that teacher's points (data-free: a held-out teacher's or a candidate's criteria are standardised by criteria
alone). Two validations: leave-one-surrogate-out (a surrogate leaves for every teacher at once, so no teacher's
point of it leaks into its prediction) and leave-one-teacher-out (fit on the other teachers, rank the held-out
teacher's surrogates: does the model carry to a teacher it never saw). Rank correlations are within teacher and
averaged over teachers, as the report's pooled ρ is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.criteria.measures import NOT_DATA_FREE
from study.report.cross_teacher import normalise_accuracy, teacher_table
from study.report.stats import EQUAL_ACCURACY_HINT, MIN_POINTS, rank_correlation

ALPHA = 1.0
TARGET = "test_acc"
ENTROPY = "crit_raw_class_entropy"
AMOUNT = "log_amount"
TEACHER = "teacher"
RELATIVE = "relative"
"""A several-teacher study's target: accuracy on one scale across teachers (`normalise_accuracy`)."""
UNMEASURABLE_BEFORE_BUILD = {"acceptance_rate", "attack_success"}
"""Raw-pool numbers that need a build (the balanced scan, the attack), so a candidate card has none yet."""


class RankError(ValueError):
    """The study cannot support a ranking model (too few surrogates, no criteria); the message says why."""


def model_points(ranking: pd.DataFrame, arms: pd.DataFrame) -> pd.DataFrame:
    """The points the model fits: one per surrogate and amount (its flagged, else best-ranked, arm at that count),
    with `log_amount`. A study without amounts gives one point per surrogate, as the report's correlations do. In a
    study of several teachers: one per teacher, surrogate and amount, with `relative` and `teacher`."""
    from study.report.tables import surrogate_points

    if not len(ranking):
        return pd.DataFrame()
    if TEACHER in arms and arms[TEACHER].nunique() > 1:
        ranked = str(ranking["ranked_by"].iloc[0])
        points = normalise_accuracy(teacher_table(ranking, arms, ranked), ranked, per=("surrogate", "count"))
    else:
        points = surrogate_points(ranking, arms, per=("surrogate", "count"))
    points[AMOUNT] = np.log10(pd.to_numeric(points["count"], errors="coerce"))
    return points


def several_teachers(points: pd.DataFrame) -> bool:
    return TEACHER in points and points[TEACHER].nunique() > 1


def within_teacher(points: pd.DataFrame, features: list[str], reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """`points` with each feature a z-score among its teacher's points in `reference` (default: `points` itself);
    a feature constant for a teacher scores 0 there."""
    reference = points if reference is None else reference
    stats = reference.groupby(TEACHER)[features].agg(["mean", "std"])
    out = points.copy()
    for f in features:
        mean = out[TEACHER].map(stats[(f, "mean")])
        sd = out[TEACHER].map(stats[(f, "std")])
        out[f] = ((out[f] - mean) / sd.where(sd > 0)).fillna(0.0)
    return out


def within_teacher_rho(predicted: np.ndarray, achieved: np.ndarray, teachers: np.ndarray | None) -> float:
    """Spearman ρ of predicted with achieved; with teachers, the mean of each teacher's ρ (NaN ones skipped)."""
    if teachers is None:
        return rank_correlation(predicted, achieved, "spearman")
    rhos = [
        rank_correlation(predicted[teachers == t], achieved[teachers == t], "spearman") for t in pd.unique(teachers)
    ]
    finite = [r for r in rhos if math.isfinite(r)]
    return float(np.mean(finite)) if finite else math.nan


def varies_amount(points: pd.DataFrame) -> bool:
    """Whether the study measured amount within a surrogate (a `counts:` arm). Across surrogates alone the amount
    is confounded with what the images are, so only then is it a feature."""
    if AMOUNT not in points or not len(points):
        return False
    within = [TEACHER, "surrogate"] if several_teachers(points) else ["surrogate"]  # own data differs by teacher
    return bool((points.groupby(within)[AMOUNT].nunique() > 1).any())


def model_features(points: pd.DataFrame) -> list[str]:
    """Raw-pool criteria that are data-free, measurable on a candidate card, known and not constant; and the amount
    in an amount study."""
    out = []
    for col in points.columns:
        if col.startswith("crit_raw_"):
            name = col[len("crit_raw_") :]
            if name in NOT_DATA_FREE or name in UNMEASURABLE_BEFORE_BUILD:
                continue
        elif col != AMOUNT or not varies_amount(points):
            continue
        values = pd.to_numeric(points[col], errors="coerce")
        if not values.isna().any() and np.ptp(values.to_numpy()) > 0:
            out.append(col)
    return out


def surrogate_count(points: pd.DataFrame) -> int:
    return int(points["surrogate"].nunique()) if len(points) else 0


@dataclass
class RidgeRanker:
    """y ~ b + sum_j w_j (x_j - mean_j) / sd_j, w = argmin |y - b - Zw|^2 + alpha |w|^2, b = mean(y)."""

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, points: pd.DataFrame, features: list[str], alpha: float = ALPHA, target: str = TARGET) -> RidgeRanker:
        x = points[features].to_numpy(dtype=np.float64)
        y = points[target].to_numpy(dtype=np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(len(features)), z.T @ (y - y.mean()))
        return cls(features, mean, scale, coef, float(y.mean()))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        z = (frame[self.features].to_numpy(dtype=np.float64) - self.mean) / self.scale
        return self.intercept + z @ self.coef


def leave_one_out(
    points: pd.DataFrame, features: list[str], alpha: float = ALPHA, target: str = TARGET, by: str = "surrogate"
) -> np.ndarray:
    """Prediction for each point from a model fitted on the points of the other values of `by`: the other
    surrogates (all amounts of a surrogate, and every teacher's point of it, leave together), or `by="teacher"`,
    the other teachers."""
    out = np.empty(len(points))
    held_out = points[by].to_numpy()
    for name in pd.unique(held_out):
        held = held_out == name
        out[held] = RidgeRanker.fit(points[~held], features, alpha, target).predict(points[held])
    return out


@dataclass
class Validation:
    n: int  # surrogates (points may be more: one per amount)
    features: list[str]
    model_rho: float
    entropy_rho: float
    model_mae: float
    entropy_mae: float
    predictions: pd.DataFrame  # surrogate, achieved, model LOSO prediction, entropy-only LOSO prediction
    teachers: pd.DataFrame | None = None  # several teachers: leave-one-teacher-out ρ per held-out teacher

    @property
    def beats_entropy(self) -> bool:
        return math.isfinite(self.model_rho) and (
            not math.isfinite(self.entropy_rho) or self.model_rho > self.entropy_rho
        )

    def _amounts(self) -> str:
        points = len(self.predictions)
        pairs = len(self.predictions.drop_duplicates([TEACHER, "surrogate"])) if self.teachers is not None else self.n
        return f" ({points} surrogate-amount points)" if points > pairs else ""

    def _described(self) -> str:
        criteria = len([f for f in self.features if f != AMOUNT])
        named = f"{criteria} raw-pool {'criterion' if criteria == 1 else 'criteria'}"
        return named + (" and the amount" if AMOUNT in self.features else "")

    def verdict(self) -> str:
        m, e = f"{self.model_rho:+.2f}", f"{self.entropy_rho:+.2f}"
        if self.teachers is None:
            head = (
                f"Leave-one-surrogate-out over {self.n} surrogates{self._amounts()}: the ridge model on "
                f"{self._described()} ranks the held-out surrogates with Spearman ρ = {m} (mean absolute error "
                f"{100 * self.model_mae:.1f} points); class entropy alone, fitted the same way, ρ = {e} "
                f"(error {100 * self.entropy_mae:.1f} points)."
            )
        else:
            head = (
                f"Leave-one-surrogate-out over {self.n} surrogates x {len(self.teachers)} teachers"
                f"{self._amounts()}: the ridge model on {self._described()} (z-scored within each teacher) ranks "
                f"each teacher's held-out surrogates with a mean within-teacher Spearman ρ = {m}; class entropy "
                f"alone, fitted the same way, ρ = {e}. {self.teacher_verdict()}"
            )
        if self.beats_entropy:
            return f"{head} The model beats class entropy alone on this study."
        return f"{head} The model does NOT beat class entropy alone: rank candidates by class entropy instead."

    def teacher_verdict(self) -> str:
        """Leave-one-teacher-out in one sentence: how the model ranks a teacher it was not fitted on."""
        assert self.teachers is not None
        each = ", ".join(f"{r.teacher} {r.model_rho:+.2f}" for r in self.teachers.itertuples())
        model, entropy = self.teachers["model_rho"].mean(), self.teachers["entropy_rho"].mean()
        return (
            f"Leave-one-teacher-out (fitted on the other teachers, ranking the held-out teacher's surrogates): "
            f"ρ {each} (mean {model:+.2f}; class entropy alone, fitted the same way, {entropy:+.2f})."
        )


def validate(points: pd.DataFrame, alpha: float = ALPHA) -> Validation:
    """Leave-one-surrogate-out validation of the ridge model next to class entropy alone; with several teachers
    also leave-one-teacher-out."""
    points = points.reset_index(drop=True)
    if surrogate_count(points) < MIN_POINTS:
        raise RankError(
            f"{surrogate_count(points)} surrogate(s) with results: the ranking model needs at least {MIN_POINTS}"
        )
    features = model_features(points)
    if not features:
        raise RankError("no raw-pool criterion varies across the study's surrogates")
    target, teachers = TARGET, None
    if several_teachers(points):
        points, target = within_teacher(points, features), RELATIVE
        teachers = points[TEACHER].to_numpy()
    y = points[target].to_numpy(dtype=np.float64)
    groups = [y] if teachers is None else [y[teachers == t] for t in pd.unique(teachers)]
    if all(np.ptp(g) == 0 for g in groups):
        same = f" ({100 * y[0]:.2f}%)" if teachers is None else " within each teacher"
        raise RankError(
            f"student test accuracy is the same on every surrogate{same}, so there is no order for the model to "
            f"learn or to be validated on ({EQUAL_ACCURACY_HINT})"
        )
    entropy_only = [ENTROPY] if ENTROPY in features else []

    def fitted(by: str) -> tuple[np.ndarray, np.ndarray]:
        model = leave_one_out(points, features, alpha, target, by)
        entropy = leave_one_out(points, entropy_only, alpha, target, by) if entropy_only else np.full(len(y), y.mean())
        return model, entropy

    model, entropy = fitted("surrogate")
    table = pd.DataFrame(
        {"surrogate": points["surrogate"], "achieved": y, "model (LOSO)": model, "class entropy (LOSO)": entropy}
    )
    by_teacher = None
    if teachers is not None:
        table.insert(0, TEACHER, teachers)
        held_model, held_entropy = fitted(TEACHER)
        by_teacher = pd.DataFrame(
            [
                {
                    TEACHER: t,
                    "model_rho": rank_correlation(held_model[teachers == t], y[teachers == t], "spearman"),
                    "entropy_rho": rank_correlation(held_entropy[teachers == t], y[teachers == t], "spearman"),
                }
                for t in pd.unique(teachers)
            ]
        )
    return Validation(
        n=surrogate_count(points),
        features=features,
        model_rho=within_teacher_rho(model, y, teachers),
        entropy_rho=within_teacher_rho(entropy, y, teachers),
        model_mae=float(np.abs(model - y).mean()),
        entropy_mae=float(np.abs(entropy - y).mean()),
        predictions=table,
        teachers=by_teacher,
    )


def score_candidates(points: pd.DataFrame, candidates: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Candidates (one row each, `crit_raw_*` columns) with their predicted accuracy (clipped to 0-100%,
    `outside_range` where the model's value was outside), best first."""
    points = points.reset_index(drop=True)
    if surrogate_count(points) < MIN_POINTS:
        raise RankError(
            f"the study has {surrogate_count(points)} surrogate(s) with results; ranking candidates needs at least "
            f"{MIN_POINTS} to fit and validate a model (add surrogates to the study and run it)"
        )
    features = model_features(points)
    amounts = candidates[AMOUNT] if AMOUNT in candidates else pd.Series(math.nan, index=candidates.index)
    if AMOUNT in features and amounts.isna().any():
        missing = candidates.loc[amounts.isna(), "card"].tolist()
        raise RankError(
            f"the study's model uses the amount of images, and candidate(s) {missing} have none: set `count` on "
            f"the card or pass `--count N` (the images the candidate would supply)"
        )
    features = [f for f in features if f in candidates]
    if not features:
        raise RankError("no raw-pool criterion is shared by the study's surrogates and the candidates")
    if several_teachers(points):
        return score_for_teachers(points, candidates, features, alpha)
    model = RidgeRanker.fit(points, features, alpha)
    out = candidates.copy()
    # a linear model extrapolates past 0 and 100% for candidates unlike the study's surrogates: the order keeps the
    # model's value, the shown accuracy is clipped, and `outside_range` says which were cut
    raw = model.predict(candidates)
    out["predicted_test_acc"] = np.clip(raw, 0.0, 1.0)
    out["outside_range"] = (raw < 0.0) | (raw > 1.0)
    out = out.iloc[np.argsort(-raw, kind="stable")].reset_index(drop=True)
    out.index = out.index + 1
    return out


def score_for_teachers(
    points: pd.DataFrame, candidates: pd.DataFrame, features: list[str], alpha: float
) -> pd.DataFrame:
    """A several-teacher study's candidates (one row per candidate and `teacher`, criteria measured through that
    teacher): `predicted_relative` on the study's scale (`normalise_accuracy`) from the pooled within-teacher model,
    and `predicted_test_acc` = relative x the teacher's in-domain accuracy where it has an in-domain arm (NaN
    where its scale is ranks). Best first within each teacher; the index is the rank within the teacher."""
    unknown = sorted(set(candidates[TEACHER]) - set(points[TEACHER]))
    if unknown:
        raise RankError(
            f"teacher(s) {unknown} have no results in the study (its teachers: {sorted(set(points[TEACHER]))})"
        )
    model = RidgeRanker.fit(within_teacher(points, features), features, alpha, RELATIVE)
    relative = model.predict(within_teacher(candidates, features, reference=points))
    reference = candidates[TEACHER].map(points.groupby(TEACHER)["reference"].first()).to_numpy(dtype=np.float64)
    value = np.where(np.isnan(reference), relative, relative * reference)
    out = candidates.copy()
    out["predicted_relative"] = relative
    out["predicted_test_acc"] = np.where(np.isnan(reference), np.nan, np.clip(value, 0.0, 1.0))
    out["outside_range"] = (value < 0.0) | (value > 1.0)
    order = {t: i for i, t in enumerate(pd.unique(points[TEACHER]))}
    out["_order"] = out[TEACHER].map(order)
    out = out.sort_values(["_order", "predicted_relative"], ascending=[True, False], kind="stable")
    out = out.drop(columns="_order").reset_index(drop=True)
    out.index = out.groupby(TEACHER).cumcount() + 1
    return out
