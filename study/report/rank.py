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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.criteria.measures import NOT_DATA_FREE
from study.report.stats import MIN_POINTS, rank_correlation

ALPHA = 1.0
TARGET = "test_acc"
ENTROPY = "crit_raw_class_entropy"
AMOUNT = "log_amount"
UNMEASURABLE_BEFORE_BUILD = {"acceptance_rate", "attack_success"}
"""Raw-pool numbers that need a build (the balanced scan, the attack), so a candidate card has none yet."""


class RankError(ValueError):
    """The study cannot support a ranking model (too few surrogates, no criteria); the message says why."""


def model_points(ranking: pd.DataFrame, arms: pd.DataFrame) -> pd.DataFrame:
    """The points the model fits: one per surrogate and amount (its flagged, else best-ranked, arm at that count),
    with `log_amount`. A study without amounts gives one point per surrogate, as the report's correlations do."""
    from study.report.tables import surrogate_points

    points = surrogate_points(ranking, arms, per=("surrogate", "count"))
    if not len(points):
        return points
    points[AMOUNT] = np.log10(pd.to_numeric(points["count"], errors="coerce"))
    return points


def varies_amount(points: pd.DataFrame) -> bool:
    """Whether the study measured amount within a surrogate (a `counts:` arm). Across surrogates alone the amount
    is confounded with what the images are, so only then is it a feature."""
    if AMOUNT not in points or not len(points):
        return False
    return bool((points.groupby("surrogate")[AMOUNT].nunique() > 1).any())


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
    def fit(cls, points: pd.DataFrame, features: list[str], alpha: float = ALPHA) -> RidgeRanker:
        x = points[features].to_numpy(dtype=np.float64)
        y = points[TARGET].to_numpy(dtype=np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(len(features)), z.T @ (y - y.mean()))
        return cls(features, mean, scale, coef, float(y.mean()))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        z = (frame[self.features].to_numpy(dtype=np.float64) - self.mean) / self.scale
        return self.intercept + z @ self.coef


def leave_one_out(points: pd.DataFrame, features: list[str], alpha: float = ALPHA) -> np.ndarray:
    """Prediction for each point from a model fitted on the other surrogates' points (all amounts of a surrogate
    leave together)."""
    out = np.empty(len(points))
    surrogate = points["surrogate"].to_numpy()
    for name in pd.unique(surrogate):
        held = surrogate == name
        out[held] = RidgeRanker.fit(points[~held], features, alpha).predict(points[held])
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

    @property
    def beats_entropy(self) -> bool:
        return math.isfinite(self.model_rho) and (
            not math.isfinite(self.entropy_rho) or self.model_rho > self.entropy_rho
        )

    def _amounts(self) -> str:
        points = len(self.predictions)
        return f" ({points} surrogate-amount points)" if points > self.n else ""

    def _described(self) -> str:
        criteria = len([f for f in self.features if f != AMOUNT])
        return f"{criteria} raw-pool criteria" + (" and the amount" if AMOUNT in self.features else "")

    def verdict(self) -> str:
        m, e = f"{self.model_rho:+.2f}", f"{self.entropy_rho:+.2f}"
        head = (
            f"Leave-one-surrogate-out over {self.n} surrogates{self._amounts()}: the ridge model on "
            f"{self._described()} ranks the held-out surrogates with Spearman ρ = {m} (mean absolute error "
            f"{100 * self.model_mae:.1f} points); class entropy alone, fitted the same way, ρ = {e} "
            f"(error {100 * self.entropy_mae:.1f} points)."
        )
        if self.beats_entropy:
            return f"{head} The model beats class entropy alone on this study."
        return f"{head} The model does NOT beat class entropy alone: rank candidates by class entropy instead."


def validate(points: pd.DataFrame, alpha: float = ALPHA) -> Validation:
    """Leave-one-surrogate-out validation of the ridge model next to class entropy alone."""
    points = points.reset_index(drop=True)
    if surrogate_count(points) < MIN_POINTS:
        raise RankError(
            f"{surrogate_count(points)} surrogate(s) with results: the ranking model needs at least {MIN_POINTS}"
        )
    features = model_features(points)
    if not features:
        raise RankError("no raw-pool criterion varies across the study's surrogates")
    y = points[TARGET].to_numpy(dtype=np.float64)
    model = leave_one_out(points, features, alpha)
    entropy = leave_one_out(points, [ENTROPY], alpha) if ENTROPY in features else np.full(len(points), y.mean())
    table = pd.DataFrame(
        {"surrogate": points["surrogate"], "achieved": y, "model (LOSO)": model, "class entropy (LOSO)": entropy}
    )
    return Validation(
        n=surrogate_count(points),
        features=features,
        model_rho=rank_correlation(model, y, "spearman"),
        entropy_rho=rank_correlation(entropy, y, "spearman"),
        model_mae=float(np.abs(model - y).mean()),
        entropy_mae=float(np.abs(entropy - y).mean()),
        predictions=table,
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
