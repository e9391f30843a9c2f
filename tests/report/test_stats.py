"""The report's statistics against scipy and on seeded cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from study.report.stats import (
    MIN_POINTS,
    TOO_FEW,
    arm_accuracy,
    bootstrap_interval,
    correlate,
    mean_interval,
    permutation_p,
    rank_correlation,
)


def test_mean_interval_is_students_t() -> None:
    x = [0.61, 0.64, 0.58, 0.66]
    iv = mean_interval(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (iv.mean, iv.low, iv.high, iv.n) == pytest.approx((np.mean(x), lo, hi, 4))
    assert math.isnan(mean_interval([0.5]).low)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_rank_correlations_match_scipy_with_ties(method: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 4, 9).astype(float), rng.normal(size=9)
        ref = sps.spearmanr(x, y)[0] if method == "spearman" else sps.kendalltau(x, y)[0]
        assert rank_correlation(x, y, method) == pytest.approx(ref, nan_ok=True)


def test_permutation_p_is_exact_for_few_points_and_matches_scipy() -> None:
    x, y = np.arange(6.0), np.array([1.0, 3.0, 2.0, 5.0, 4.0, 6.0])
    ref = sps.permutation_test(
        (y,), lambda yy: sps.spearmanr(x, yy)[0], permutation_type="pairings", n_resamples=np.inf
    ).pvalue
    assert permutation_p(x, y, "spearman") == pytest.approx(ref)
    assert permutation_p(x, x, "spearman") == pytest.approx(2 / math.factorial(6))  # only the two monotone orders


def test_bootstrap_interval_covers_the_true_correlation_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    cov = [[1, 0.6], [0.6, 1]]
    truth = 6 / math.pi * math.asin(0.6 / 2)  # Spearman's rho of a bivariate normal
    hits = 0
    trials = 200
    for i in range(trials):
        xy = rng.multivariate_normal([0, 0], cov, 40)
        lo, hi = bootstrap_interval(xy[:, 0], xy[:, 1], "spearman", resamples=500, seed=i)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_correlate_says_too_few_below_five_points() -> None:
    few = correlate(np.arange(MIN_POINTS - 1.0), np.arange(MIN_POINTS - 1.0), "spearman")
    assert math.isnan(few.value) and few.text() == TOO_FEW
    enough = correlate(np.arange(8.0), np.arange(8.0) ** 2, "kendall")
    assert enough.value == pytest.approx(1.0) and enough.p_value < 0.01


def trials_frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["arm", "surrogate", "phase", "status", "early_stopped", "diverged", "val_acc", "test_acc"]
    return pd.DataFrame(rows, columns=cols)


def test_arm_accuracy_means_final_seeds_and_never_early_stopped_trials() -> None:
    t = trials_frame(
        [
            ("a", "a", "search", "FINISHED", False, False, 0.70, 0.68),
            ("a", "a", "search", "FINISHED", True, False, 0.90, 0.10),  # early-stopped: ignored even with best val
            ("a", "a", "final", "FINISHED", False, False, 0.71, 0.70),
            ("a", "a", "final", "FINISHED", False, False, 0.73, 0.74),
            ("a", "a", "final", "FINISHED", True, False, 0.10, 0.10),  # never in a mean
            ("b", "b", "search", "FINISHED", False, False, 0.50, 0.52),
            ("b", "b", "search", "FINISHED", False, False, 0.55, 0.51),
            ("b", "b", "search", "FAILED", False, False, np.nan, np.nan),
            ("b", "b", "search", "FAILED", False, True, np.nan, np.nan),
        ]
    )
    r = arm_accuracy(t).set_index("arm")
    assert r.loc["a", "test_acc"] == pytest.approx(0.72) and r.loc["a", "n"] == 2
    lo, hi = sps.t.interval(0.95, 1, loc=0.72, scale=sps.sem([0.70, 0.74]))
    assert (r.loc["a", "ci_low"], r.loc["a", "ci_high"]) == pytest.approx((lo, hi))
    assert r.loc["b", "test_acc"] == 0.51 and r.loc["b", "basis"].startswith("best search trial")
    assert (r.loc["b", "failed"], r.loc["b", "diverged"], r.loc["a", "early_stopped"]) == (1, 1, 2)


def test_arm_accuracy_picks_by_agreement_and_still_scores_on_test_when_a_test_split_exists() -> None:
    t = trials_frame(
        [
            ("a", "a", "search", "FINISHED", False, False, 0.70, 0.68),
            ("a", "a", "search", "FINISHED", False, False, 0.60, 0.62),
        ]
    ).assign(agreement=[0.80, 0.90])
    r = arm_accuracy(t, "agreement").set_index("arm")
    assert r.loc["a", "test_acc"] == 0.62 and r.loc["a", "best_agreement"] == 0.90  # agreement picks, test scores
    assert r.loc["a", "ranked_by"] == "test_acc" and "by held-out agreement" in r.loc["a", "basis"]


def test_arm_accuracy_without_a_test_split_ranks_by_agreement() -> None:
    t = trials_frame(
        [
            ("a", "a", "search", "FINISHED", False, False, np.nan, np.nan),
            ("a", "a", "final", "FINISHED", False, False, np.nan, np.nan),
            ("a", "a", "final", "FINISHED", False, False, np.nan, np.nan),
            ("b", "b", "search", "FINISHED", False, False, np.nan, np.nan),
        ]
    ).assign(agreement=[0.5, 0.8, 0.9, 0.95])
    r = arm_accuracy(t, "agreement")
    assert list(r["arm"]) == ["b", "a"] and "test_acc" not in r and set(r["ranked_by"]) == {"agreement"}
    a = r.set_index("arm").loc["a"]
    assert a["agreement"] == pytest.approx(0.85) and a["n"] == 2 and a["full_budget"] == 3


def test_an_accuracy_interval_stays_within_0_and_1() -> None:
    from study.report.stats import ACCURACY, mean_interval

    wide = mean_interval([0.394, 0.503])  # 2 seeds: t = 12.7
    assert wide.low < 0 and wide.high > 1
    cut = mean_interval([0.394, 0.503], bounds=ACCURACY)
    assert (cut.low, cut.high) == (0.0, 1.0) and cut.mean == wide.mean
    narrow = mean_interval([0.5, 0.51, 0.49], bounds=ACCURACY)
    assert 0 < narrow.low < narrow.mean < narrow.high < 1
