"""The report: ranks arms with intervals and tells which criteria predict distillation quality.

Everything is read back from the MLflow store, so a report can be rebuilt anywhere the store is reachable, also
while a study runs (then it says how many trials are still missing). Statistics are in `study.report.stats`, plots
in `study.report.plots`, the HTML page in `study.report.document`; this module collects what the store holds into
tables and writes `report.md`, `report.html`, `results.parquet`, `correlations.parquet`, `ranking.json` and the
PNGs.

The report is a list of sections (`Section`), each a title with Markdown and HTML bodies, so that a new section is
one function added to `sections()`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from study.report import document as report_html
from study.report import plots as report_plots
from study.report.amounts import ARM_COLUMNS, AmountSection, amount_section, arm_fields
from study.report.cross_teacher import cross_teacher_section, teacher_table
from study.report.stats import (
    ADJUSTMENT,
    ALPHA,
    EQUAL_ACCURACY_HINT,
    METRIC_NAMES,
    MIN_POINTS,
    arm_accuracy,
    correlations,
    family_size,
    ranking_metric,
)
from study.report.tables import CRITERIA_PREFIXES, POPULATIONS, StudyResults, criterion_label, surrogate_points
from study.teacher.checkpoint import TeacherMeta
from study.tracking import ARM, ERROR, OUTCOME, PHASE, TRIAL_ID, StudyTracker

log = logging.getLogger(__name__)

POPULATION_METRICS = {f"criteria.{p}.": f"crit_{p}_" for p in POPULATIONS}
"""MLflow metric prefix -> results column prefix, one per criteria population (raw, built, trained)."""
RESULT_METRICS = ("val_acc", "test_acc", "teacher_agreement", "agreement", "train_loss", "images_per_s")
PAPER_CRITERION = "crit_raw_class_entropy"
ARM_RUN_COLUMNS = ["teacher", "teacher_dataset", "arm_run_id", "surrogate_point", "selection", "selection_achieved"]


@dataclass(frozen=True)
class Report:
    markdown: Path
    html: Path
    parquet: Path
    plots: list[Path]
    ranking: pd.DataFrame
    finding: str
    amounts: AmountSection | None = None
    correlations: Path | None = None  # correlations.parquet: the correlation table with raw and adjusted p


# ------------------------------------------------------------------------------------------------ reading
def collect_arms(tracker: StudyTracker) -> pd.DataFrame:
    """One row per arm: its parent run, surrogate, point flag and criteria as `crit_raw_*` / `crit_built_*` /
    `crit_trained_*`."""
    rows = []
    for arm, run_id in tracker.arm_runs().items():
        metrics, params = tracker.run_data(run_id)
        row = {
            **arm_fields(arm, params),  # surrogate, kind, count, amount family, mixture components
            "teacher": tracker.teacher_of(arm),  # its teacher's id (`teacher` in a one-teacher study)
            "teacher_dataset": params.get("teacher_dataset", ""),
            "arm_run_id": run_id,
            "surrogate_point": params.get("surrogate_point", ""),
            "selection": params.get("selection", ""),  # "not balanced (k of K classes filled)" marks a short scan
            "selection_achieved": params.get("selection_achieved", ""),
        }
        for key, value in metrics.items():
            for metric, column in POPULATION_METRICS.items():
                if key.startswith(metric):
                    row[f"{column}{key[len(metric) :]}"] = value
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else [*ARM_COLUMNS, *ARM_RUN_COLUMNS])


def collect_trials(tracker: StudyTracker, arms: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run: arm, surrogate, phase, seed, status, last-report metrics, params and criteria."""
    surrogate_of = dict(zip(arms["arm"], arms["surrogate"], strict=True)) if len(arms) else {}
    rows = []
    for run in tracker.trial_runs():
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        arm = tags.get(ARM, "")
        row = {
            "surrogate": surrogate_of.get(arm, arm),
            "arm": arm,
            "trial_id": tags.get(TRIAL_ID, ""),
            "phase": tags.get(PHASE, "search"),
            "seed": pd.to_numeric(params.get("seed", tags.get("seed")), errors="coerce"),
            "status": run.info.status,
            "early_stopped": tags.get("early_stopped") == "true",
            "diverged": tags.get("diverged") == "true" or tags.get(OUTCOME) == "diverged",
            "run_id": run.info.run_id,
            "outcome": tags.get(OUTCOME, ""),
            "error": tags.get(ERROR, ""),
        }
        row.update({m: float(metrics[m]) if m in metrics else np.nan for m in RESULT_METRICS})
        row.update({f"param.{k}": v for k, v in params.items()})
        rows.append(row)
    base = ["surrogate", "arm", "trial_id", "phase", "seed", "status", "early_stopped", "diverged", "run_id"]
    base += ["outcome", "error"]
    df = pd.DataFrame(rows, columns=None if rows else [*base, *RESULT_METRICS])
    if len(arms):
        crit = arms[["arm", *[c for c in arms.columns if c.startswith("crit_")]]]
        df = df.merge(crit, on="arm", how="left")
        if "crit_raw_class_entropy" in df:
            df["crit_class_entropy"] = df["crit_raw_class_entropy"]  # the paper's measure: the raw pool's
    return df.sort_values(["arm", "trial_id"]).reset_index(drop=True) if len(df) else df


def learning_curves(
    tracker: StudyTracker, trials: pd.DataFrame, metric: str = "val_acc"
) -> dict[str, list[tuple[str, list[int], list[float]]]]:
    """Per arm: the search `metric` against images seen for its best search trial by it and each final seed."""
    out: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    if metric not in trials:
        return out
    for arm, group in trials.groupby("arm"):
        chosen = []
        search = group[(group["phase"] != "final") & group[metric].notna()]
        if len(search):
            chosen.append(("best search trial", search.loc[search[metric].idxmax()]))
        for _, row in group[group["phase"] == "final"].iterrows():
            seed = "" if pd.isna(row["seed"]) else f" {int(row['seed'])}"
            chosen.append((f"final seed{seed}", row))
        for label, row in chosen:
            history = tracker.metric_history(row["run_id"], metric)
            if history:
                steps, values = zip(*history, strict=True)
                out.setdefault(str(arm), []).append((label, list(steps), list(values)))
    return out


ARTIFACTS = ("samples.png", "class_histogram.json", "perturbation.png", "perturbation_histograms.json")


def arm_artifacts(tracker: StudyTracker, arms: pd.DataFrame, dst: Path) -> dict[str, dict[str, Path]]:
    out: dict[str, dict[str, Path]] = {}
    for _, row in arms.iterrows():
        folder = tracker.artifacts(row["arm_run_id"], dst / row["arm"])
        out[row["arm"]] = {name: folder / name for name in ARTIFACTS if (folder / name).is_file()}
    return out


def collect(
    tracker: StudyTracker,
    teacher: TeacherMeta | None,
    expected_trials: int | None,
    artifact_dir: Path,
    metric: str = "val_acc",
) -> StudyResults:
    arms = collect_arms(tracker)
    trials = collect_trials(tracker, arms)
    ranking = arm_accuracy(trials, metric) if len(trials) else pd.DataFrame()
    ranked = ranking_metric(trials)
    points = surrogate_points(ranking, arms)
    crit_cols = [c for c in arms.columns if c.startswith(CRITERIA_PREFIXES)]
    corr = correlations(points, crit_cols, ranked) if len(points) else pd.DataFrame()
    results = StudyResults(
        tracker.name,
        tracker.tracking_uri,
        tracker.spec_json,
        teacher,
        trials,
        arms,
        ranking,
        points,
        corr,
        expected_trials,
        metric=metric,
    )
    if len(trials):
        results.curves = learning_curves(tracker, trials, metric)
    results.artifacts = arm_artifacts(tracker, arms, artifact_dir)
    results.environments = tracker.environments()
    # the ranking model predicts test accuracy; agreement is not comparable across surrogates (see `finding`)
    if len(points) >= MIN_POINTS and ranked == "test_acc":
        from study.report.rank import RankError, model_points, surrogate_count, validate

        # several teachers: one surrogate per card across teachers (and own data one), so fewer than `points`
        fitted = model_points(ranking, arms)
        if surrogate_count(fitted) >= MIN_POINTS:
            try:
                results.validation = validate(fitted)
            except RankError as err:  # the report still shows everything else, and says why
                results.validation_problem = str(err)
    return results


def finding(results: StudyResults) -> str:
    """The report's answer in one or two plain sentences."""
    text = single_finding(results)
    if several_teachers(results):
        text += (
            " Here each (teacher, surrogate) pair is one point, so teachers of different difficulty are pooled "
            "in one cloud: the Across teachers section gives the within-teacher answer."
        )
    return text


def several_teachers(results: StudyResults) -> bool:
    return "teacher" in results.arms and results.arms["teacher"].nunique() >= 2


def single_finding(results: StudyResults) -> str:
    n = len(results.points)
    if not len(results.ranking):
        return "No trial has finished its budget yet, so there is nothing to rank."
    best = results.ranking.iloc[0]
    ranked = results.ranked_by
    lead = f"The best arm is {best['arm']} ({best[ranked]:.1%} student {METRIC_NAMES[ranked]})."
    if ranked == "agreement":
        lead += (
            " The study has no labelled test split, so arms are ranked by the student's agreement with the teacher "
            "on each arm's held-out surrogate images, not by accuracy."
        )
    if n < MIN_POINTS:
        return (
            f"{lead} With {n} surrogate(s) there are too few surrogates (< {MIN_POINTS}) to say which criterion "
            "predicts distillation quality."
        )
    corr = results.correlations.dropna(subset=["rho"])
    if not len(corr):
        if ranked in results.points and results.points[ranked].nunique() <= 1:
            return (
                f"Every surrogate gave the same student {METRIC_NAMES[ranked]} ({best[ranked]:.1%}), so no arm is "
                f"best and no criterion can be related to it ({EQUAL_ACCURACY_HINT})."
            )
        return f"{lead} No criterion varies across the {n} surrogates."
    top = corr.iloc[0]
    direction = "higher" if top["rho"] > 0 else "lower"
    # the finding picks the best of every criterion tested, so its p-value is the family-adjusted one (stats.holm)
    adjusted = top["rho_p_holm"]
    verdict = "significant" if adjusted <= ALPHA else "not significant"
    interval = f"[95% CI {top['rho_low']:+.2f}, {top['rho_high']:+.2f}]"
    text = (
        f"Of the {len(corr)} criterion × population pairs tested, {criterion_label(top['criterion'])} ranks the "
        f"{n} surrogates best ({direction} is better): ρ = {top['rho']:+.2f} {interval}, "
        f"permutation p = {top['rho_p']:.3f} uncorrected, {ADJUSTMENT}-adjusted p = {adjusted:.3f} over all "
        f"{family_size(results.correlations)} Spearman and Kendall tests in the correlation table, so {verdict} at "
        f"the {ALPHA:.0%} level"
    )
    paper = corr[corr["criterion"] == PAPER_CRITERION]
    if top["criterion"] != PAPER_CRITERION and len(paper):
        p = paper.iloc[0]
        text += (
            f". The paper's measure, class entropy of the raw pool, has ρ = {p['rho']:+.2f} "
            f"[{p['rho_low']:+.2f}, {p['rho_high']:+.2f}], {ADJUSTMENT}-adjusted p = {p['rho_p_holm']:.3f}"
        )
    return f"{text}. {lead}"


# ------------------------------------------------------------------------------------------------ writing
def write_parquet(results: StudyResults, path: Path) -> None:
    results.trials.to_parquet(path, index=False)


def write_report(
    tracker: StudyTracker,
    out_dir: Path,
    teacher_accuracy: float | None = None,
    title: str = "",
    *,
    teacher: TeacherMeta | None = None,
    expected_trials: int | None = None,
    metric: str = "val_acc",
) -> Report:
    """Write the report of the tracker's study into `out_dir` (one folder per study); `metric` is the study's
    `search.metric`, which picks each arm's best search trial."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = collect(tracker, teacher, expected_trials, Path(tmp), metric)
        plots = report_plots.write_all(results, out_dir, teacher_accuracy)
        for arm, files in results.artifacts.items():
            for name in ("samples.png", "perturbation.png"):
                if name in files:
                    target = out_dir / f"{Path(name).stem}_{arm}.png"
                    shutil.copyfile(files[name], target)
                    plots.append(target)
        parquet = out_dir / "results.parquet"
        write_parquet(results, parquet)
        corr_parquet = out_dir / "correlations.parquet"
        results.correlations.to_parquet(corr_parquet, index=False)
        text = finding(results)
        amounts = amount_section(
            results.ranking, results.arms, out_dir, teacher.dataset if teacher else None, teacher_accuracy
        )
        plots += amounts.plots if amounts else []
        sections = report_sections(results, out_dir, teacher_accuracy, text, amounts)
    markdown = out_dir / "report.md"
    markdown.write_text(report_html.markdown(title or tracker.name, sections, out_dir))
    html = out_dir / "report.html"
    html.write_text(report_html.html(title or tracker.name, sections, out_dir))
    records = results.ranking.to_dict(orient="records") if len(results.ranking) else []
    (out_dir / "ranking.json").write_text(json.dumps(records, indent=2, default=_json_safe))
    return Report(markdown, html, parquet, plots, results.ranking, text, amounts, corr_parquet)


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def report_sections(
    results: StudyResults,
    out_dir: Path,
    teacher_accuracy: float | None,
    text: str,
    amounts: AmountSection | None = None,
) -> list[report_html.Section]:
    from study.report import sections as rs

    made = rs.sections(results, out_dir, teacher_accuracy, text)
    extra = [problem_trials_section(results.trials), amounts_sections(amounts), across_teachers_section(results)]
    return made[:2] + [s for s in extra if s is not None] + made[2:]  # after the finding and the ranking


def teacher_points(results: StudyResults) -> pd.DataFrame:
    """One row per (teacher, arm) for the cross-teacher analysis (`cross_teacher.teacher_table`)."""
    return teacher_table(results.ranking, results.arms, results.ranked_by)


def across_teachers_section(results: StudyResults) -> report_html.Section | None:
    """Per-teacher rankings and the pooled answer, for a study of two or more teachers (`cross_teacher`)."""
    if not len(results.ranking) or not several_teachers(results):
        return None
    return cross_teacher_section(teacher_points(results), results.ranked_by)


def problem_trials_section(trials: pd.DataFrame) -> report_html.Section | None:
    """Each arm's failed and diverged trials with the last line of the error (a study completes even when some
    do)."""
    if not len(trials) or "outcome" not in trials:
        return None
    section = report_html.Section("Failed and diverged trials")
    problems = trials[trials["outcome"].isin(["failed", "diverged"])]
    if not len(problems):
        section.blocks.append(report_html.Para("None: every trial completed or was early-stopped."))
        return section
    section.blocks.append(
        report_html.Para(
            "A diverged trial (NaN/inf loss) is a result: the search scored it 0. A failed trial raised after its "
            "retries; its full error is the run's `error.txt` artifact."
        )
    )
    rows = problems.sort_values(["arm", "outcome", "trial_id"])
    last_line = rows["error"].map(lambda e: (str(e).strip().splitlines() or [""])[-1][:160] if e else "")
    frame = pd.DataFrame(
        {"arm": rows["arm"], "trial_id": rows["trial_id"], "outcome": rows["outcome"], "error": last_line}
    )
    section.blocks.append(report_html.Table(frame))
    return section


def amounts_sections(amounts: AmountSection | None) -> report_html.Section | None:
    """The amounts-and-mixtures section (`study.report.amounts`) as report blocks: plot, notes, three tables."""
    if amounts is None:
        return None
    from study.report.amounts import table_frames

    section = report_html.Section("Amounts and mixtures")
    section.blocks.append(report_html.Image(amounts.plots[0].name, "accuracy vs amount"))
    section.blocks += [report_html.Note(n) for n in amounts.notes]
    for title, frame in table_frames(amounts):
        section.blocks += [report_html.Para(f"**{title}**"), report_html.Table(frame)]
    return section


__all__ = ["Report", "collect", "finding", "write_report"]
