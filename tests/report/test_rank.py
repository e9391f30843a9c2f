"""`kd-study rank`'s model: recovers a known ordering from synthetic criteria; refuses with too few surrogates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.report.rank import (
    AMOUNT,
    RankError,
    RidgeRanker,
    model_features,
    model_points,
    score_candidates,
    validate,
    within_teacher,
)


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Surrogates whose accuracy is a known linear function of two criteria; a third criterion is noise."""
    rng = np.random.default_rng(seed)
    entropy, vendi, noise = rng.uniform(0, 1, n), rng.uniform(1, 50, n), rng.normal(size=n)
    acc = 0.1 + 0.5 * entropy + 0.006 * vendi
    return pd.DataFrame(
        {
            "surrogate": [f"s{i}" for i in range(n)],
            "test_acc": acc,
            "crit_raw_class_entropy": entropy,
            "crit_raw_feature_vendi": vendi,
            "crit_raw_edge_density": noise,
        }
    )


def test_rank_recovers_a_known_ordering_of_candidates() -> None:
    candidates = synthetic(6, seed=1).drop(columns="test_acc").rename(columns={"surrogate": "card"})
    truth = 0.5 * candidates["crit_raw_class_entropy"] + 0.006 * candidates["crit_raw_feature_vendi"]
    scored = score_candidates(synthetic(12, seed=0), candidates, alpha=0.01)
    assert scored["card"].tolist() == candidates["card"][np.argsort(-truth.to_numpy())].tolist()


def test_predictions_outside_0_100_percent_are_clipped_and_flagged_but_keep_their_order() -> None:
    candidates = synthetic(3, seed=1).drop(columns="test_acc").rename(columns={"surrogate": "card"})
    candidates["crit_raw_class_entropy"] = [-3.0, 4.0, -2.0]  # far outside the study's 0-1: the model extrapolates
    scored = score_candidates(synthetic(12, seed=0), candidates, alpha=0.01)
    assert scored["card"].tolist() == ["s1", "s2", "s0"]  # by the model's value: -2 above -3
    assert scored["predicted_test_acc"].tolist() == [1.0, 0.0, 0.0]
    assert scored["outside_range"].tolist() == [True, True, True]
    inside = score_candidates(synthetic(12, seed=0), synthetic(3, seed=1).rename(columns={"surrogate": "card"}))
    assert not inside["outside_range"].any() and inside["predicted_test_acc"].between(0, 1).all()


def test_leave_one_out_validation_beats_entropy_when_a_second_criterion_matters() -> None:
    v = validate(synthetic(12, seed=0), alpha=0.01)
    assert v.model_rho > 0.95 and v.model_rho > v.entropy_rho and v.beats_entropy
    assert "beats class entropy alone" in v.verdict() and len(v.predictions) == 12


def test_validation_says_plainly_when_the_model_does_not_beat_entropy() -> None:
    points = synthetic(8, seed=2)
    points["test_acc"] = points["crit_raw_class_entropy"]  # entropy alone is perfect
    v = validate(points)
    assert not v.beats_entropy and "does NOT beat class entropy alone" in v.verdict()


def test_rank_refuses_below_five_surrogates() -> None:
    with pytest.raises(RankError, match="at least 5"):
        score_candidates(synthetic(4, seed=0), synthetic(2, seed=1))


def amount_study(n: int, counts: tuple[int, ...], seed: int) -> pd.DataFrame:
    """Surrogates at several amounts each; accuracy rises with log10(amount) and with class entropy."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        entropy = rng.uniform(0, 1)
        for c in counts:
            rows.append({"surrogate": f"s{i}", "count": c, AMOUNT: np.log10(c), "crit_raw_class_entropy": entropy,
                         "test_acc": 0.05 + 0.3 * entropy + 0.15 * np.log10(c)})  # fmt: skip
    return pd.DataFrame(rows)


def test_amount_is_a_feature_of_an_amount_study_and_its_surrogates_leave_together() -> None:
    points = amount_study(6, (100, 1000, 10000), seed=0)
    assert AMOUNT in model_features(points)
    v = validate(points, alpha=0.01)
    assert v.n == 6 and len(v.predictions) == 18 and v.model_rho > 0.95 and v.beats_entropy
    assert "and the amount" in v.verdict() and "18 surrogate-amount points" in v.verdict()
    # one amount per surrogate: the amount is confounded with the surrogate, so it is no feature
    assert AMOUNT not in model_features(points[points["count"] == 1000].assign(**{AMOUNT: np.arange(6.0)}))


def test_candidates_are_scored_at_the_amount_they_supply() -> None:
    study = amount_study(6, (100, 1000, 10000), seed=0)
    same = {"crit_raw_class_entropy": [0.5, 0.5]}
    scored = score_candidates(study, pd.DataFrame({"card": ["small", "large"], AMOUNT: [2.0, 4.0], **same}))
    assert scored["card"].tolist() == ["large", "small"]
    with pytest.raises(RankError, match=r"\['small'\].*--count"):
        score_candidates(study, pd.DataFrame({"card": ["small", "large"], AMOUNT: [np.nan, 4.0], **same}))


def test_model_points_keep_one_point_per_surrogate_and_amount() -> None:
    ranking = pd.DataFrame(
        {
            "arm": ["a_n10", "a_n20", "a_n20_adv", "b"],
            "surrogate": ["a", "a", "a", "b"],
            "test_acc": [0.2, 0.3, 0.35, 0.5],
            "ranked_by": "test_acc",  # as stats.arm_accuracy records it
        }
    )
    arms = pd.DataFrame(
        {
            "arm": ["a_n10", "a_n20", "a_n20_adv", "b"],
            "surrogate": ["a", "a", "a", "b"],
            "count": [10.0, 20.0, 20.0, 50.0],
            "surrogate_point": ["", "", "", ""],
        }
    )
    points = model_points(ranking, arms)
    assert sorted(points["arm"]) == ["a_n10", "a_n20_adv", "b"]
    assert points.set_index("arm").loc["a_n10", AMOUNT] == pytest.approx(1.0)


def teacher_study(scales: dict[str, tuple[float, float, float]], n: int = 6, seed: int = 0) -> pd.DataFrame:
    """`model_points` of a several-teacher study: the same n surrogates for every teacher plus each teacher's own
    in-domain arm. Teacher t = (entropy scale, entropy shift, direction): its class entropy is `scale * e + shift`
    (teachers differ in K, so criteria differ in scale) and its relative accuracy rises with e (direction +1) or
    falls with it (-1); its in-domain arm reaches 0.9 (first teacher) or 0.5 (a harder task), at the criterion's
    best end."""
    rng = np.random.default_rng(seed)
    e = rng.uniform(0, 1, n)
    arms, ranking = [], []
    for i, (teacher, (scale, shift, direction)) in enumerate(scales.items()):
        own = 0.9 if i == 0 else 0.5
        relative = 0.2 + 0.6 * (e if direction > 0 else 1 - e)
        for j in range(n):
            arm = f"s{j}@{teacher}"
            arms.append({"arm": arm, "surrogate": f"s{j}", "teacher": teacher, "teacher_dataset": f"task_{teacher}",
                         "kind": "generated", "source": "", "count": 1000.0, "surrogate_point": "",
                         "crit_raw_class_entropy": scale * e[j] + shift})  # fmt: skip
            ranking.append({"arm": arm, "test_acc": own * relative[j], "ranked_by": "test_acc"})
        arms.append({"arm": f"own@{teacher}", "surrogate": f"own_{teacher}", "teacher": teacher,
                     "teacher_dataset": f"task_{teacher}", "kind": "real", "source": f"task_{teacher}",
                     "count": 1000.0, "surrogate_point": "",
                     "crit_raw_class_entropy": shift + (scale if direction > 0 else 0.0)})  # fmt: skip
        ranking.append({"arm": f"own@{teacher}", "test_acc": own, "ranked_by": "test_acc"})
    return model_points(pd.DataFrame(ranking), pd.DataFrame(arms))


def test_several_teachers_fit_one_model_on_within_teacher_scales_and_validate_leaving_a_teacher_out() -> None:
    # two teachers with criteria and accuracies on different scales but the same ordering: the pooled model on
    # within-teacher z-scores ranks every teacher's surrogates, and carries to the teacher it was not fitted on
    points = teacher_study({"a": (1.0, 0.0, 1), "b": (3.0, 2.0, 1)})
    assert len(points) == 14 and points["relative"].between(0, 1.01).all()
    v = validate(points, alpha=0.01)
    assert v.teachers is not None and v.teachers["teacher"].tolist() == ["a", "b"]
    assert v.model_rho > 0.95 and (v.teachers["model_rho"] > 0.95).all()
    assert "over 7 surrogates x 2 teachers:" in v.verdict()  # the teachers' own data is one surrogate
    assert "Leave-one-teacher-out (fitted on the other teachers" in v.verdict() and "a +1.00, b +1.00" in v.verdict()
    # raw accuracies would have ranked teacher b's in-domain arm (0.5) below a's surrogates: relative puts it at 1
    assert points.set_index("arm").loc["own@b", "relative"] == pytest.approx(1.0)


def test_a_teacher_whose_surrogates_rank_the_other_way_fails_leave_one_teacher_out() -> None:
    # teacher c's accuracy falls where a's and b's rises: a model fitted on a and b ranks c's surrogates backwards
    points = teacher_study({"a": (1.0, 0.0, 1), "b": (2.0, 1.0, 1), "c": (1.0, 0.0, -1)})
    held = validate(points, alpha=0.01).teachers.set_index("teacher")["model_rho"]
    assert held["a"] > 0.5 and held["b"] > 0.5 and held["c"] == pytest.approx(-1.0)


def test_leave_one_teacher_out_fits_on_the_other_teachers_alone() -> None:
    # a second, noisy criterion makes every fit different: each held-out teacher's ρ is that of a model fitted on
    # the other teachers' points only (within-teacher z-scores), not on everything but one surrogate
    points = teacher_study({"a": (1.0, 0.0, 1), "b": (2.0, 1.0, 1), "c": (1.0, 0.0, -1)})
    points["crit_raw_feature_vendi"] = np.random.default_rng(3).normal(size=len(points))
    features = ["crit_raw_class_entropy", "crit_raw_feature_vendi"]
    v = validate(points, alpha=0.5)
    scaled = within_teacher(points, features)
    for teacher, rho in v.teachers.set_index("teacher")["model_rho"].items():
        held = scaled["teacher"] == teacher
        predicted = RidgeRanker.fit(scaled[~held], features, 0.5, "relative").predict(scaled[held])
        expected = pd.Series(predicted).corr(scaled.loc[held, "relative"].reset_index(drop=True), method="spearman")
        assert rho == pytest.approx(expected)


def test_candidates_of_a_several_teacher_study_are_scored_per_teacher_on_its_own_scale() -> None:
    points = teacher_study({"a": (1.0, 0.0, 1), "b": (3.0, 2.0, 1)})
    # the same two candidates measured through each teacher: criteria on that teacher's scale
    candidates = pd.DataFrame({"card": ["low", "high", "low", "high"], "teacher": ["a", "a", "b", "b"],
                               "crit_raw_class_entropy": [0.2, 0.8, 3 * 0.2 + 2, 3 * 0.8 + 2]})  # fmt: skip
    scored = score_candidates(points, candidates, alpha=0.01)
    assert scored[["teacher", "card"]].values.tolist() == [["a", "high"], ["a", "low"], ["b", "high"], ["b", "low"]]
    assert scored.index.tolist() == [1, 2, 1, 2]
    by = scored.set_index(["teacher", "card"])
    # one relative prediction for both teachers (same place among their surrogates), each teacher's own accuracy
    assert by.loc[("a", "high"), "predicted_relative"] == pytest.approx(by.loc[("b", "high"), "predicted_relative"])
    ratio = by.loc[("a", "high"), "predicted_test_acc"] / by.loc[("b", "high"), "predicted_test_acc"]
    assert ratio == pytest.approx(0.9 / 0.5)
    with pytest.raises(RankError, match=r"\['z'\]"):
        score_candidates(points, candidates.assign(teacher="z"))


def test_the_reports_prediction_section_shows_a_several_teacher_model_on_its_relative_scale() -> None:
    from pathlib import Path
    from types import SimpleNamespace

    from study.report.document import markdown
    from study.report.sections import _prediction

    v = validate(teacher_study({"a": (1.0, 0.0, 1), "b": (3.0, 2.0, 1)}), alpha=0.01)
    section = _prediction(SimpleNamespace(ranked_by="test_acc", validation=v), {})  # type: ignore[arg-type]
    text = markdown("r", [section], Path("."))
    assert "leave-one-teacher-out)" in text and "| held-out teacher | model ρ |" in text and "| a | +1.00 |" in text
    assert "| a | own data | 1.000 |" in text and "%" not in text.split("| teacher |")[1].split("\n\n")[0]


def test_own_data_of_different_sizes_per_teacher_makes_no_amount_feature() -> None:
    # digits_train (1,257 images) and shapes_train (3,000) are one surrogate, "own data": its amount differs between
    # teachers, not within one, so it is no amount study
    points = teacher_study({"a": (1.0, 0.0, 1), "b": (3.0, 2.0, 1)})
    own = points["surrogate"] == "own data"
    points.loc[own, AMOUNT] = np.where(points.loc[own, "teacher"] == "a", np.log10(1257), np.log10(3000))
    assert AMOUNT not in model_features(points)
    points.loc[own & (points["teacher"] == "a"), "surrogate"] = "s0"  # a second amount of s0 for teacher a
    assert AMOUNT in model_features(points)
