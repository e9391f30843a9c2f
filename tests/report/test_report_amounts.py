"""The amounts-and-mixtures report section on hand-made trial tables: thresholds, intervals, the blend."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from study.report.amounts import amount_section, arm_table
from study.report.stats import arm_accuracy


def trial(arm: str, test_acc: float, val_acc: float | None = None, phase: str = "search") -> dict:
    return {"arm": arm, "surrogate": arm.split("_n")[0], "phase": phase, "status": "FINISHED", "early_stopped": False,
            "val_acc": test_acc if val_acc is None else val_acc, "test_acc": test_acc}  # fmt: skip


def params(surrogate: str, count: int, family: str = "", kind: str = "generated", **extra: str) -> dict[str, str]:
    return {"surrogate": surrogate, "kind": kind, "count": str(count), "amount_of": family, **extra}


@pytest.fixture
def study() -> tuple[pd.DataFrame, pd.DataFrame]:
    arms = arm_table(
        {
            "a_n100": params("a", 100, "a"),
            "a_n1000": params("a", 1000, "a"),
            "a_n10000": params("a", 10000, "a"),
            "b_n100": params("b", 100, "b", kind="real"),
            "b_n1000": params("b", 1000, "b", kind="real"),
            "mix_n1000": params("mix", 1000, "mix", kind="mixture", **{"components.a": "0.25", "components.b": "0.75"}),
            "mix_n100": params("mix", 100, "mix", kind="mixture", **{"components.a": "0.25", "components.b": "0.75"}),
            "indomain": params("digits_train", 1257, kind="real", source="digits"),
        }
    )
    trials = pd.DataFrame(
        [
            trial("a_n100", 0.50),
            trial("a_n1000", 0.70),
            trial("a_n10000", 0.86),
            # the search trial with the best val is chosen, not the best test
            trial("b_n100", 0.60, val_acc=0.9),
            trial("b_n100", 0.65, val_acc=0.1),
            trial("b_n1000", 0.61),
            trial("b_n1000", 0.63, phase="final"),
            trial("b_n1000", 0.65, phase="final"),
            trial("mix_n1000", 0.72),
            trial("mix_n100", 0.50),
            trial("indomain", 0.90),
        ]
    )
    return trials, arms


def test_amount_thresholds_blend_and_intervals(study, tmp_path: Path) -> None:
    trials, arms = study
    section = amount_section(arm_accuracy(trials), arms, tmp_path, teacher_dataset="digits", teacher_acc=0.95)
    assert section is not None and section.references == {"in-domain": 0.90, "teacher": 0.95}
    points = section.points.set_index("arm")
    assert points.loc["b_n100", "test_acc"] == 0.60
    # two final seeds: their mean and a t interval (t_{0.975,1} = 12.706, s = 0.01414)
    assert points.loc["b_n1000", "test_acc"] == pytest.approx(0.64)
    assert points.loc["b_n1000", "ci_high"] - 0.64 == pytest.approx(12.706 * 0.014142 / math.sqrt(2), rel=1e-3)
    limits = section.thresholds.set_index("curve")
    assert limits.loc["a", "best"] == 0.86 and limits.loc["a", "n@90% best"] == 10000
    assert limits.loc["a", "n@95% in-domain"] == 10000 and limits.loc["a", "n@90% teacher"] == 10000
    assert limits.loc["a", "n@99% in-domain"] != limits.loc["a", "n@99% in-domain"]  # never reached: NaN
    assert limits.loc["b", "n@90% best"] == 100 and limits.loc["b", "n@95% best"] == 1000  # 0.95 * 0.64 > 0.60
    mix = section.mixtures.set_index("mixture")
    assert mix.loc["mix_n1000", "blend predicts"] == pytest.approx(0.25 * 0.70 + 0.75 * 0.64)
    assert mix.loc["mix_n1000", "beats best part"] and not mix.loc["mix_n100", "beats best part"]
    assert mix.loc["mix_n100", "blend predicts"] == pytest.approx(0.25 * 0.50 + 0.75 * 0.60)
    assert (tmp_path / "accuracy_vs_amount.png").stat().st_size > 10_000
    assert "not reached" in section.markdown and "| mix_n1000 |" in section.markdown


def test_no_section_without_amounts_or_mixtures(tmp_path: Path) -> None:
    arms = arm_table({"x": params("x", 100), "y": params("y", 100)})
    assert amount_section(arm_accuracy(pd.DataFrame([trial("x", 0.5), trial("y", 0.6)])), arms, tmp_path) is None


def test_the_curve_scores_an_arm_as_the_ranking_does(study, tmp_path: Path) -> None:
    """Early-stopped and diverged trials never score an arm: not in the ranking table, not on the curve."""
    trials, arms = study
    cut_short = {**trial("a_n100", 0.99, val_acc=0.99), "early_stopped": True}
    diverged = {**trial("a_n1000", 0.99, val_acc=0.99), "diverged": True}
    trials = pd.concat([trials, pd.DataFrame([cut_short, diverged])], ignore_index=True)
    trials["diverged"] = trials["diverged"].fillna(False).astype(bool)
    ranking = arm_accuracy(trials)
    section = amount_section(ranking, arms, tmp_path)
    assert section is not None
    points = section.points.set_index("arm")["test_acc"]
    assert points["a_n100"] == 0.50 and points["a_n1000"] == 0.70
    scores = ranking.set_index("arm")["test_acc"]
    assert (points == scores.reindex(points.index)).all()


def test_no_section_without_a_test_split(study, tmp_path: Path) -> None:
    trials, arms = study
    unlabelled = trials.assign(test_acc=math.nan, agreement=trials["val_acc"])
    assert amount_section(arm_accuracy(unlabelled, "agreement"), arms, tmp_path) is None
