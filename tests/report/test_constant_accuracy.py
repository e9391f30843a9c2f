"""A study whose students all end at the same accuracy (at chance: a budget too small for the task) has nothing to
correlate or rank: the report says so in words, instead of "no criterion varies" and a model verdict on ρ = nan."""

from __future__ import annotations

import pandas as pd
import pytest

from study.report.rank import RankError, validate
from study.report.sections import _prediction
from study.report.study_report import single_finding
from study.report.tables import StudyResults


def at_chance(n: int) -> pd.DataFrame:
    """n surrogates whose criteria differ and whose students all reached 10% (chance for ten classes)."""
    return pd.DataFrame(
        {
            "surrogate": [f"s{i}" for i in range(n)],
            "test_acc": [0.1] * n,
            "crit_raw_class_entropy": [i / n for i in range(n)],
            "crit_raw_feature_vendi": [1.0 + i for i in range(n)],
        }
    )


def test_the_ranking_model_refuses_an_accuracy_that_never_varies() -> None:
    with pytest.raises(RankError, match=r"the same on every surrogate \(10\.00%\).*budget too small"):
        validate(at_chance(8))
    # several teachers: accuracy relative to each teacher's own data, constant within each (but not across them)
    two = pd.concat(
        [at_chance(6).assign(teacher="a", relative=0.2), at_chance(6).assign(teacher="b", test_acc=0.5, relative=1.0)]
    )
    with pytest.raises(RankError, match="the same on every surrogate within each teacher"):
        validate(two)


def test_the_finding_and_the_prediction_section_say_why_there_is_no_answer() -> None:
    points = at_chance(8)
    ranking = points.rename(columns={"surrogate": "arm"}).assign(surrogate=points["surrogate"])
    trials = pd.DataFrame({"test_acc": [0.1], "status": ["FINISHED"]})
    results = StudyResults(
        "r", "", "{}", None, trials, pd.DataFrame(), ranking, points, pd.DataFrame(columns=["criterion", "rho"])
    )
    finding = single_finding(results)
    assert finding.startswith("Every surrogate gave the same student test accuracy (10.0%), so no arm is best")
    assert "varies" not in finding
    results.validation_problem = "student test accuracy is the same on every surrogate (10.00%)"
    text = " ".join(getattr(b, "text", "") for b in _prediction(results, {}).blocks)
    assert "The ranking model is not fitted: student test accuracy is the same" in text
