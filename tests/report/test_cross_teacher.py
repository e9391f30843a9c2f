"""The cross-teacher statistics on synthetic results tables with known answers, and Kendall's W by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from study.report.cross_teacher import (
    OWN_DATA,
    cross_teacher,
    cross_teacher_section,
    in_domain_flags,
    kendall_w,
    normalise_accuracy,
    pooled_permutation_p,
    teacher_table,
)
from study.report.document import markdown

N = 8
SURROGATES = [f"s{i}" for i in range(N)]
ACC_A = np.linspace(0.30, 0.90, N)  # teacher A: s7 best
ACC_B = np.array([0.25, 0.20, 0.30, 0.32, 0.45, 0.40, 0.60, 0.50])  # teacher B: a harder task, s6 best


def results(criteria: dict[str, tuple[np.ndarray, np.ndarray]], acc_b: np.ndarray = ACC_B) -> pd.DataFrame:
    """One row per (teacher, arm), one arm per surrogate; `criteria`: name -> (values for A, values for B)."""
    rows = []
    for t, acc in enumerate((ACC_A, acc_b)):
        for i, s in enumerate(SURROGATES):
            crit = {f"crit_{name}": float(v[t][i]) for name, v in criteria.items()}
            rows.append({"teacher": "AB"[t], "arm": f"{'AB'[t]}_{s}", "surrogate": s, "test_acc": acc[i], **crit})
    return pd.DataFrame(rows)


def by_rank(acc: np.ndarray, scores: list[float]) -> np.ndarray:
    """A criterion giving the surrogate of accuracy rank k (1 = worst) the k-th of `scores`."""
    return np.asarray(scores, dtype=np.float64)[sps.rankdata(acc).astype(int) - 1]


def test_a_criterion_ranking_both_teachers_perfectly_pools_to_one_on_different_scales() -> None:
    # monotone in accuracy for both teachers, on scales that do not overlap: pooling raw values would not give 1
    noise = (np.array([3, 1, 4, 1, 5, 9, 2, 6]), np.array([2, 7, 1, 8, 2, 8, 1, 8]))
    r = cross_teacher(results({"perfect": (ACC_A**2, 10 + np.log(ACC_B)), "noise": noise}))
    row = r.pooled.iloc[0]
    assert (row["criterion"], row["rho"], row["rho_low"], row["rho_high"]) == pytest.approx(("crit_perfect", 1, 1, 1))
    assert row["rho_p"] == pytest.approx(1 / 5001)  # no within-teacher shuffle of 5,000 reaches it
    assert row["rho_p_holm"] == pytest.approx(2 / 5001)  # Holm over the 2 criteria: the smallest p times 2
    perfect = r.per_teacher[r.per_teacher["criterion"] == "crit_perfect"]
    assert perfect["rho"].tolist() == pytest.approx([1.0, 1.0])
    assert perfect["rho_p_holm"].tolist() == pytest.approx((2 * perfect["rho_p"]).tolist())  # per teacher too
    assert "perfect predicts student accuracy best (higher is better): pooled ρ = +1.00" in r.sentence


def test_a_criterion_ranking_the_teachers_in_opposite_directions_pools_near_zero_with_a_wide_interval() -> None:
    # A: scores by accuracy rank 2 1 5 3 4 8 6 7, d = 1 -1 2 -1 -1 2 -1 -1, sum d^2 = 14, rho = 1 - 6 * 14 / 504
    # = +0.833; B: minus 1 3 2 5 4 7 6 8, sum d^2 = 6, rho = -(1 - 36 / 504) = -0.929; pooled -0.048
    up = by_rank(ACC_A, [2, 1, 5, 3, 4, 8, 6, 7])
    down = by_rank(ACC_B, [-1, -3, -2, -5, -4, -7, -6, -8])
    r = cross_teacher(results({"opposite": (up, down)}))
    assert r.per_teacher["rho"].tolist() == pytest.approx([1 - 84 / 504, -(1 - 36 / 504)])
    row = r.pooled.iloc[0]
    assert abs(row["rho"]) < 0.1 and row["rho_low"] < 0 < row["rho_high"]
    assert row["rho_high"] - row["rho_low"] > 0.3  # measured [-0.30, +0.14]
    assert row["rho_p"] > 0.5 and not row["signs_agree"]
    assert r.sentence.startswith("No criterion predicts student accuracy across the 2 teachers (A, B) at this size")


def test_each_bootstrap_resample_of_surrogates_is_applied_to_every_teacher() -> None:
    # identical accuracies, mirrored criterion: for any one resample of surrogates the two teachers' rho are exact
    # negatives, so the pooled interval is [0, 0]; resampling each teacher (or each point) on its own would widen it
    noisy = by_rank(ACC_A, [2, 1, 5, 3, 4, 8, 6, 7])
    r = cross_teacher(results({"mirrored": (noisy, -noisy)}, acc_b=ACC_A))
    row = r.pooled.iloc[0]
    assert (row["rho"], row["rho_low"], row["rho_high"]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_the_pooled_permutation_p_shuffles_within_each_teacher() -> None:
    # exact p by enumerating every pair of within-teacher orderings of 5 surrogates (120^2), against the sampled one
    x = np.array([[1.0, 2.0, 3.0, 5.0, 4.0], [2.0, 1.0, 3.0, 4.0, 5.0]])
    y = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.6, 0.7, 0.9, 0.8]])
    observed = abs(np.mean([sps.spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]))
    rho = {t: [sps.spearmanr(x[t], y[t][list(p)]).statistic for p in itertools.permutations(range(5))] for t in (0, 1)}
    pooled = (np.add.outer(np.array(rho[0]), np.array(rho[1])) / 2).ravel()
    exact = float(np.mean(np.abs(pooled) >= observed - 1e-12))  # 0.0093; one shuffle shared by both gives 0.067
    assert pooled_permutation_p(x, y, permutations=20000) == pytest.approx(exact, abs=0.003)


def test_kendalls_w_is_one_for_identical_rankings_and_matches_a_hand_computed_example() -> None:
    assert kendall_w(np.array([[3, 1, 2, 4], [3, 1, 2, 4], [30, 10, 20, 40]])).w == pytest.approx(1.0)
    # 3 raters, 4 objects. Rank sums R = (4, 6, 8, 12), mean m (n + 1) / 2 = 7.5, S = 12.25 + 2.25 + 0.25 + 20.25
    # = 35; W = 12 S / (m^2 (n^3 - n)) = 420 / 540 = 7/9; chi2 = m (n - 1) W = 7 on 3 df
    c = kendall_w(np.array([[1, 2, 3, 4], [1, 3, 2, 4], [2, 1, 3, 4]]))
    assert (c.w, c.chi2, c.df) == pytest.approx((7 / 9, 7.0, 3))
    assert c.p_value == pytest.approx(sps.chi2.sf(7.0, 3))


def test_kendalls_w_corrects_for_ties() -> None:
    # rater 2 ties objects 1-2, rater 3 ties objects 3-4: R = (3.5, 5.5, 9.5, 11.5), S = 16 + 4 + 4 + 16 = 40,
    # sum T = (2^3 - 2) * 2 = 12; W = 480 / (540 - 3 * 12) = 20/21 (uncorrected 480 / 540 = 0.889)
    c = kendall_w(np.array([[1, 2, 3, 4], [1, 1, 3, 4], [1, 2, 3, 3]]))
    assert c.w == pytest.approx(20 / 21)
    # raters who agree exactly, ties included, concord fully (uncorrected: 486 / 540 = 0.9)
    assert kendall_w(np.array([[1, 1, 3, 4]] * 3)).w == pytest.approx(1.0)
    # m (n - 1) W is Friedman's tie-corrected statistic (scipy's columns are the objects)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (5, 7)).astype(float)
    assert kendall_w(x).chi2 == pytest.approx(sps.friedmanchisquare(*x.T).statistic)


def test_accuracy_is_relative_to_the_in_domain_arm_else_a_within_teacher_rank() -> None:
    table = results({"perfect": (ACC_A, ACC_B)})
    table["kind"] = np.where(table["arm"] == "A_s7", "real", "generated")
    table["source"] = np.where(table["arm"] == "A_s7", "cifar10", "")
    table["in_domain"] = in_domain_flags(table, {"A": "cifar10", "B": "mnist"})
    assert table.loc[table["in_domain"], "arm"].tolist() == ["A_s7"]
    points = normalise_accuracy(table).set_index(["teacher", "surrogate"])
    a, b = points.loc["A"], points.loc["B"]
    assert set(a["scale"]) == {"in-domain"} and set(b["scale"]) == {"rank"}
    assert a["relative"].to_numpy() == pytest.approx(a["test_acc"].to_numpy() / 0.90)
    assert b.loc["s6", "relative"] == 1.0 and b.loc["s1", "relative"] == 0.0  # best 1, worst 0
    assert b.loc["s3", "relative"] == pytest.approx((8 - 5) / 7)  # 0.32 is 5th best of 8
    # both scales are monotone in accuracy: the correlations do not depend on which one a teacher gets
    plain = cross_teacher(results({"perfect": (ACC_A, ACC_B)}))
    assert cross_teacher(table).pooled["rho"].tolist() == pytest.approx(plain.pooled["rho"].tolist())


def test_tied_accuracies_share_a_rank_and_a_surrogate_point_stands_for_its_variants() -> None:
    table = results({"c": (ACC_A, ACC_B)})
    table.loc[(table["teacher"] == "B") & table["surrogate"].isin(["s0", "s1"]), "test_acc"] = 0.2
    variant = table.iloc[[0]].assign(arm="A_s0_noaug", test_acc=0.99)  # a variant of s0, better than its point arm
    table = pd.concat([table.assign(surrogate_point=True), variant.assign(surrogate_point=False)])
    points = normalise_accuracy(table).set_index(["teacher", "surrogate"])
    assert points.loc[("A", "s0"), "arm"] == "A_s0" and len(points) == 2 * N
    assert points.loc[("B", "s0"), "rank"] == points.loc[("B", "s1"), "rank"] == 7.5


def test_surrogates_some_teacher_lacks_leave_the_pooled_statistics() -> None:
    table = results({"perfect": (ACC_A, ACC_B)})
    table = table[~((table["teacher"] == "B") & (table["surrogate"] == "s0"))]
    r = cross_teacher(table)
    assert r.pooled.iloc[0]["n"] == N - 1 and r.concordance.n == N - 1 and "s0" not in r.shared


def test_the_section_shows_the_sentence_both_tables_and_w_and_is_none_for_one_teacher(tmp_path: Path) -> None:
    table = results({"perfect": (ACC_A, ACC_B), "noise": (np.arange(N)[::-1] % 3, np.arange(N) % 4)})
    section = cross_teacher_section(table)
    assert section is not None
    text = markdown("report", [section], tmp_path)
    assert cross_teacher(table).sentence in text
    assert "Kendall's W = " in text and "| perfect | 8 |" in text and "| 1 | s6 |" in text
    assert cross_teacher_section(table[table["teacher"] == "A"]) is None
    assert math.isnan(kendall_w(np.array([[1.0, 2.0]])).w)  # one rater: no agreement to measure


def test_each_teachers_own_data_is_one_surrogate_across_teachers() -> None:
    # `{dataset}_train` crossed with a digits and a shapes teacher: two cards, one surrogate ("own data"), so the
    # in-domain point is shared by the teachers and enters the pooled statistics; a card built per teacher is one too
    arms = pd.DataFrame(
        {
            "arm": ["own@d", "own@s", "noise@d", "noise@s"],
            "surrogate": ["digits_train", "shapes_train", "noise@d", "noise@s"],
            "teacher": ["d", "s", "d", "s"],
            "teacher_dataset": ["digits", "shapes", "digits", "shapes"],
            "kind": ["real", "real", "generated", "generated"],
            "source": ["digits", "shapes", "", ""],
            "surrogate_point": ["", "", "", ""],
        }
    )
    ranking = pd.DataFrame({"arm": arms["arm"], "test_acc": [0.9, 0.8, 0.1, 0.2]})
    table = teacher_table(ranking, arms, "test_acc").set_index("arm")
    assert table["surrogate"].to_dict() == {
        "own@d": OWN_DATA,
        "own@s": OWN_DATA,
        "noise@d": "noise",
        "noise@s": "noise",
    }
    assert table["in_domain"].tolist() == [True, True, False, False]
