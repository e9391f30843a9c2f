"""The report's accuracy plots: percent on every axis, a chance line at 100 / classes, intervals cut at the axis
with a note naming the arms whose interval was cut."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from study.report import plots
from study.report.tables import StudyResults
from study.teacher.meta import TeacherMeta


def results(ci_high: float) -> StudyResults:
    meta = TeacherMeta(
        arch="resnet8", num_classes=10, classes=[str(i) for i in range(10)], image_size=16, channels=1,
        mean=[0.5], std=[0.25], dataset="digits", weights_sha256="0" * 64, test_accuracy=0.95,
    )  # fmt: skip
    ranking = pd.DataFrame(
        {"arm": ["digits", "noise"], "surrogate": ["digits", "noise"], "test_acc": [0.9, 0.2],
         "ci_low": [0.85, 0.05], "ci_high": [ci_high, 0.35], "n": [3, 3], "basis": ["mean of 3 final seed(s)"] * 2},
        index=[1, 2],
    )  # fmt: skip
    trials = pd.DataFrame({"arm": ["digits", "noise"], "test_acc": [0.9, 0.2]})
    empty = pd.DataFrame()
    return StudyResults("s", "sqlite:///x.db", "{}", meta, trials, empty, ranking, empty, empty)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures the plot functions draw, kept open for inspection (they are saved as usual)."""
    figures: list[plt.Figure] = []

    def save(fig: plt.Figure, path: Path) -> Path:
        fig.savefig(path)
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", save)
    return figures


def test_ranking_plot_draws_chance_at_one_over_classes_in_percent(tmp_path: Path, drawn) -> None:
    plots.ranking_plot(results(ci_high=0.95), 0.95, tmp_path / "ranking.png")
    ax = drawn[0].axes[0]
    labels = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert labels["chance 10.0%"] == pytest.approx(10.0)
    assert labels["teacher 95.0%"] == pytest.approx(95.0)
    assert "(%)" in ax.get_ylabel()
    assert not [t for t in drawn[0].texts if "clipped" in t.get_text()]


def test_an_interval_cut_at_the_axis_is_said_under_the_plot(tmp_path: Path, drawn) -> None:
    plots.ranking_plot(results(ci_high=1.0), 0.95, tmp_path / "ranking.png")
    notes = [t.get_text() for t in drawn[0].texts]
    assert notes == ["intervals clipped to 0-100%: digits"]


def test_a_several_teacher_ranking_colours_each_teachers_arms(tmp_path: Path, drawn) -> None:
    base = results(ci_high=0.95)
    arms = pd.DataFrame({"arm": ["digits", "noise"], "teacher": ["a", "b"]})
    several = StudyResults("s", "", "{}", None, base.trials, arms, base.ranking, base.points, base.correlations)
    plots.ranking_plot(several, None, tmp_path / "ranking.png")
    ax = drawn[0].axes[0]
    assert len({tuple(bar.get_facecolor()) for bar in ax.patches}) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "teacher a: mean of final seeds ± 95% CI (t)",
        "teacher b: mean of final seeds ± 95% CI (t)",
    ]
