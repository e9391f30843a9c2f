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
    correlations,
    family_size,
    holm,
    mean_interval,
    permutation_p,
    rank_correlation,
)
from study.report.study_report import finding
from study.report.tables import StudyResults


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


# ------------------------------------------------------------------------------------------------ multiplicity
def test_holm_adjusts_a_hand_computed_example() -> None:
    # sorted: 0.005, 0.01, 0.03, 0.04 (m = 4) -> 4 x 0.005, 3 x 0.01, 2 x 0.03, 1 x 0.04 = 0.02, 0.03, 0.06, 0.04,
    # then the running maximum keeps the order: 0.02, 0.03, 0.06, 0.06; the NaN is no test and does not count in m
    adjusted = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 caps at 1, and 0.6 may not undercut it
    assert holm([0.2]) == pytest.approx([0.2]) and np.isnan(holm([math.nan, math.nan])).all()


def test_holm_holds_the_family_wise_error_at_five_percent_on_uniform_p_values() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(4000, 30))  # 30 true null hypotheses per family
    any_call = np.mean([holm(row).min() <= 0.05 for row in p])
    assert 0.035 <= any_call <= 0.065  # 1 - (1 - 0.05/30)^30 = 0.049: Holm is neither lax nor needlessly strict
    assert np.mean(p.min(axis=1) <= 0.05) > 0.7  # unadjusted: 1 - 0.95^30 = 0.79


def noise_study(seed: int, surrogates: int = 5, criteria: int = 15) -> StudyResults:
    """A study whose criteria (`criteria` per population, both populations) are pure noise, unrelated to accuracy."""
    rng = np.random.default_rng(seed)
    names = [f"crit_{pop}_noise{i}" for pop in ("raw", "built") for i in range(criteria)]
    points = pd.DataFrame(rng.normal(size=(surrogates, len(names))), columns=names)
    points["test_acc"] = rng.uniform(0.1, 0.9, surrogates)
    points["arm"] = [f"s{i}" for i in range(surrogates)]
    ranking = points[["arm", "test_acc"]].sort_values("test_acc", ascending=False).reset_index(drop=True)
    corr = correlations(points, names, "test_acc", resamples=100)  # resamples: the intervals only, never the p
    return StudyResults("noise", "", "", None, ranking, pd.DataFrame(), ranking, points, corr)


def test_the_finding_calls_pure_noise_significant_in_at_most_five_percent_of_studies() -> None:
    draws = 200
    called = raw = 0
    for seed in range(draws):
        study = noise_study(seed)
        text = finding(study)
        assert "Of the 30 criterion × population pairs tested" in text and "Holm-adjusted p = " in text
        assert "over all 60 Spearman and Kendall tests" in text and family_size(study.correlations) == 60
        called += "so significant at the 5% level" in text
        raw += study.correlations["rho_p"].iloc[0] <= 0.05  # what the finding quoted before: the best raw p
    assert called / draws <= 0.05
    assert raw / draws > 0.2  # the same draws without the adjustment: ~40% (1 - (59/60)^30, exact p = 2/120)
