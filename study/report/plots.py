"""The report's figures (matplotlib, Agg): ranking with intervals, criteria scatters, learning curves, histograms.

Each function writes one PNG and returns its path, or None when there is nothing to draw yet (a report made while
a study runs draws what exists).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from study.report.stats import METRIC_NAMES, MIN_POINTS, TOO_FEW

if TYPE_CHECKING:
    from study.report.tables import StudyResults

DPI = 110
BLUE, ORANGE, GREEN, GREY = "#4C72B0", "#DD8452", "#55A868", "#8C8C8C"
TEACHER_COLOURS = (BLUE, ORANGE, GREEN, "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#CCB974")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def chance_percent(results: StudyResults, metric: str) -> float | None:
    """Accuracy of guessing, 100 / classes (%), for an accuracy metric of a study whose teacher is known."""
    if metric not in ("test_acc", "val_acc") or results.teacher is None or results.teacher.num_classes < 1:
        return None
    return 100.0 / results.teacher.num_classes


def chance_line(ax: plt.Axes, chance: float | None, label: bool = True) -> object | None:
    if chance is None:
        return None
    text = f"chance {chance:.1f}%" if label else "_nolegend_"
    return ax.axhline(chance, color=GREY, ls=":", lw=1.2, label=text, zorder=2)


def ranking_plot(results: StudyResults, teacher_acc: float | None, path: Path) -> Path | None:
    r = results.ranking
    if not len(r):
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(r) + 2.5), 4.2))
    x = np.arange(len(r))
    final = r["ci_low"].notna().to_numpy()
    ranked = results.ranked_by
    acc = 100 * r[ranked].to_numpy()
    # several teachers: a colour per teacher (their students learn different tasks); grey: no final phase
    teacher_of = (
        dict(zip(results.arms["arm"], results.arms["teacher"], strict=True)) if "teacher" in results.arms else {}
    )
    teachers = list(dict.fromkeys(teacher_of.get(a, "") for a in r["arm"]))
    palette = dict(zip(teachers, TEACHER_COLOURS, strict=False)) if len(teachers) > 1 else {}
    colour = [palette.get(teacher_of.get(a, ""), BLUE) for a in r["arm"]]
    ax.bar(x, acc, color=[c if f else GREY for c, f in zip(colour, final, strict=True)])
    low = np.where(final, acc - 100 * r["ci_low"].to_numpy(), 0)
    high = np.where(final, 100 * r["ci_high"].to_numpy() - acc, 0)
    if final.any():
        ax.errorbar(x[final], acc[final], yerr=[low[final], high[final]], fmt="none", ecolor="k", capsize=4)
    for xi, a, top in zip(x, acc, acc + high, strict=True):
        ax.text(xi, top + 1.5, f"{a:.1f}", ha="center", fontsize=8)
    handles = []  # a legend entry only for the bar kinds the plot shows
    if final.any() and palette:
        handles += [Patch(color=c, label=f"teacher {t}: mean of final seeds ± 95% CI (t)") for t, c in palette.items()]
    elif final.any():
        handles.append(Patch(color=BLUE, label="mean of final seeds ± 95% CI (t)"))
    if not final.all():
        handles.append(Patch(color=GREY, label=f"best search trial by {METRIC_NAMES[results.metric]} (no final phase)"))
    if teacher_acc is not None and ranked == "test_acc":
        handles.append(
            ax.axhline(100 * teacher_acc, color="k", ls="--", lw=1, label=f"teacher {100 * teacher_acc:.1f}%")
        )
    if (chance := chance_line(ax, chance_percent(results, ranked))) is not None:
        handles.append(chance)
    ax.set_xticks(x, r["arm"], rotation=25, ha="right")
    ax.set_ylabel(f"student {METRIC_NAMES[ranked]} (%)")
    ax.set_ylim(0, 118)
    # a t interval of 2-3 seeds can reach past 0% or 100%; it is cut at the axis (scores are shares), and said so
    clipped = final & ((r["ci_low"].to_numpy() <= 0.0) | (r["ci_high"].to_numpy() >= 1.0))
    if clipped.any():
        names = ", ".join(str(a) for a in r["arm"][clipped])
        fig.text(0.01, 0.01, f"intervals clipped to 0-100%: {names}", fontsize=7, color=GREY)
    ax.set_title("Student accuracy by arm" if ranked == "test_acc" else "Student-teacher agreement by arm")
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    return _save(fig, path)


def criteria_plot(results: StudyResults, population: str, path: Path) -> Path | None:
    """Scatter of accuracy against each criterion of one population (`raw`, `built` or `trained`), one point per
    surrogate."""
    from study.report.tables import criterion_label

    points, corr = results.points, results.correlations
    prefix = f"crit_{population}_"
    names = [c for c in (corr["criterion"] if len(corr) else []) if c.startswith(prefix)]
    names = [c for c in names if c in points and points[c].notna().any()]
    if not names or not len(points):
        return None
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 6), 3.0 * rows), squeeze=False)
    by_name = corr.set_index("criterion")
    ranked = results.ranked_by
    chance = chance_percent(results, ranked)
    for i, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        ax.scatter(points[name], 100 * points[ranked], color=GREEN, zorder=3)
        if chance_line(ax, chance) is not None and i == 0:
            ax.legend(fontsize=7, loc="best")
        for _, p in points.iterrows():
            ax.annotate(
                str(p["surrogate"]),
                (p[name], 100 * p[ranked]),
                fontsize=6.5,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(criterion_label(name), fontsize=8)
        ax.set_ylabel(f"{METRIC_NAMES[ranked]} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        c = by_name.loc[name]
        title = TOO_FEW if c["n"] < MIN_POINTS else f"ρ = {c['rho']:+.2f} [{c['rho_low']:+.2f}, {c['rho_high']:+.2f}]"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    what = {"raw": "raw candidate pool", "built": "built set", "trained": "trained batches"}[population]
    fig.suptitle(f"Criteria of the {what} vs. student {METRIC_NAMES[ranked]} (one point per surrogate)", fontsize=11)
    return _save(fig, path)


def curves_plot(results: StudyResults, path: Path) -> Path | None:
    curves = results.curves
    if not curves:
        return None
    arms = sorted(curves)
    cols = min(3, len(arms))
    rows = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    chance = chance_percent(results, results.metric)
    for ax, arm in zip(axes.flat, arms, strict=False):
        chance_line(ax, chance)
        finals = 0
        for label, steps, values in curves[arm]:
            style = dict(color=BLUE, lw=2) if label.startswith("best") else dict(color=ORANGE, lw=1, alpha=0.8)
            if label.startswith("final"):
                finals += 1
                label = "final seeds" if finals == 1 else "_nolegend_"
            ax.plot(steps, 100 * np.asarray(values), marker="o", ms=3, label=label, **style)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("images seen", fontsize=8)
        ax.set_ylabel(f"{METRIC_NAMES[results.metric]} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(arms) :]:
        ax.axis("off")
    fig.suptitle(f"Learning curves: {METRIC_NAMES[results.metric]} against images seen", fontsize=11)
    return _save(fig, path)


Histograms = list[tuple[str, list[int]]]
"""(label, counts per class) of the series one panel compares."""


def _histogram_panels(panels: list[tuple[str, Histograms]], title: str, path: Path) -> Path | None:
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    colours = [GREY, BLUE, ORANGE]
    for ax, (name, series) in zip(axes.flat, panels, strict=False):
        width = 0.8 / len(series)
        for i, (label, counts) in enumerate(series):
            h = np.asarray(counts, float)
            k = np.arange(len(h))
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar(k + offset, 100 * h / max(h.sum(), 1), width=width, color=colours[i % len(colours)], label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("teacher-predicted class", fontsize=8)
        ax.set_ylabel("share (%)", fontsize=8)
        ax.set_xticks(np.arange(len(series[0][1])))
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def class_histograms_plot(results: StudyResults, path: Path) -> Path | None:
    panels = []
    for arm, files in sorted(results.artifacts.items()):
        if "class_histogram.json" in files:
            h = json.loads(files["class_histogram.json"].read_text())
            if "raw" in h:
                series = [("raw pool", h["raw"]), ("built set", h["built"])]
                if h.get("trained"):  # absent in studies measured before the trained population
                    series.append(("trained batches", h["trained"]))
                panels.append((arm, series))
    title = "Teacher's predicted classes: raw candidate pool, built set and trained batches"
    return _histogram_panels(panels, title, path)


def perturbation_histograms_plot(results: StudyResults, path: Path) -> Path | None:
    panels = []
    for arm, files in sorted(results.artifacts.items()):
        if "perturbation_histograms.json" in files:
            h = json.loads(files["perturbation_histograms.json"].read_text())
            panels.append((arm, [("before attack", h["histogram_before"]), ("after attack", h["histogram_after"])]))
    return _histogram_panels(panels, "Perturbed arms: teacher's classes before and after the attack", path)


def write_all(results: StudyResults, out_dir: Path, teacher_acc: float | None) -> list[Path]:
    made = [
        ranking_plot(results, teacher_acc, out_dir / "ranking.png"),
        criteria_plot(results, "raw", out_dir / "criteria_raw.png"),
        criteria_plot(results, "built", out_dir / "criteria_built.png"),
        criteria_plot(results, "trained", out_dir / "criteria_trained.png"),
        curves_plot(results, out_dir / "learning_curves.png"),
        class_histograms_plot(results, out_dir / "class_histograms.png"),
        perturbation_histograms_plot(results, out_dir / "perturbation_histograms.png"),
    ]
    return [p for p in made if p is not None]
