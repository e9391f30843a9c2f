"""The report: ranks arms and tells which criteria predict distillation quality.

Everything is read back from the MLflow store (DESIGN.md), so a report can be rebuilt anywhere the store is
reachable. An arm's score is the `test_acc` of its best trial by `val_acc` (selection never looks at test data).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from study.tracking import ARM, ERROR, OUTCOME, PHASE, TRIAL_ID, StudyTracker

log = logging.getLogger(__name__)

CRITERIA_PREFIX = "criteria."
RESULT_METRICS = ("val_acc", "test_acc", "teacher_agreement", "agreement", "train_loss", "images_per_s")
METRIC_NAMES = {"val_acc": "validation accuracy", "test_acc": "test accuracy", "agreement": "held-out agreement"}


def ranking_metric(trials: pd.DataFrame) -> str:
    """What arms are ranked on: `test_acc` when the teacher has a labelled test split, else `agreement` (the
    student's agreement with the teacher on the arm's held-out surrogate images, `search.metric: agreement`)."""
    return "test_acc" if len(trials) and trials["test_acc"].notna().any() else "agreement"


@dataclass(frozen=True)
class Report:
    markdown: Path
    parquet: Path
    plots: list[Path]
    ranking: pd.DataFrame


def collect_trials(tracker: StudyTracker) -> pd.DataFrame:
    """One row per trial run: surrogate, arm, trial_id, phase, status, last-report metrics, hyperparameters."""
    surrogate_of = {}
    for arm, run_id in tracker.arm_runs().items():
        surrogate_of[arm] = tracker.run_data(run_id)[1].get("surrogate", arm)
    rows = []
    for run in tracker.trial_runs():
        tags, metrics = run.data.tags, run.data.metrics
        row = {
            "surrogate": surrogate_of.get(tags.get(ARM, ""), tags.get(ARM, "")),
            "arm": tags.get(ARM, ""),
            "trial_id": tags.get(TRIAL_ID, ""),
            "phase": tags.get(PHASE, "search"),
            "status": run.info.status,
            "early_stopped": tags.get("early_stopped") == "true",
            "run_id": run.info.run_id,
            "outcome": tags.get(OUTCOME, ""),
            "error": tags.get(ERROR, ""),
        }
        row.update({m: float(metrics[m]) if m in metrics else np.nan for m in RESULT_METRICS})
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        rows.append(row)
    columns = ["surrogate", "arm", "trial_id", "phase", "status", "early_stopped", "run_id", "outcome", "error"]
    columns += list(RESULT_METRICS)
    df = pd.DataFrame(rows, columns=columns if not rows else None)
    return df.sort_values(["arm", "trial_id"]).reset_index(drop=True) if len(df) else df


def collect_criteria(tracker: StudyTracker) -> pd.DataFrame:
    rows = []
    for arm, run_id in tracker.arm_runs().items():
        metrics, _ = tracker.run_data(run_id)
        rows.append(
            {
                "arm": arm,
                **{k[len(CRITERIA_PREFIX) :]: v for k, v in metrics.items() if k.startswith(CRITERIA_PREFIX)},
            }
        )
    return pd.DataFrame(rows).set_index("arm") if rows else pd.DataFrame()


def rank_arms(trials: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Per arm: the best trial by the search `metric`, scored on `ranking_metric`, plus spread over finished trials.

    With the default metric the columns are `best_val_acc`, `test_acc`, `test_acc_mean`, `test_acc_std`; in
    general `best_<metric>` and `<ranked>`, `<ranked>_mean`, `<ranked>_std`.
    """
    ranked = ranking_metric(trials)
    # a diverged trial's last metrics come from before its loss blew up: not a student worth ranking
    done = trials[(trials["status"] == "FINISHED") & (trials["outcome"] != "diverged")]
    done = done.dropna(subset=[metric, ranked])
    rows = []
    for arm, group in done.groupby("arm"):
        best = group.loc[group[metric].idxmax()]
        rows.append(
            {
                "arm": arm,
                "surrogate": best["surrogate"],
                "trials": len(group),
                f"best_{metric}": best[metric],
                ranked: best[ranked],
                f"{ranked}_mean": group[ranked].mean(),
                f"{ranked}_std": group[ranked].std(ddof=0),
                "teacher_agreement": best["teacher_agreement"],
                "best_trial": best["trial_id"],
            }
        )
    ranking = pd.DataFrame(rows)
    if len(ranking):
        ranking = ranking.sort_values(ranked, ascending=False).reset_index(drop=True)
        ranking.index = ranking.index + 1
    return ranking


def criteria_correlations(ranking: pd.DataFrame, criteria: pd.DataFrame) -> pd.Series:
    """Spearman rank correlation of each criterion with the arms' test accuracy (needs 3+ arms)."""
    if len(ranking) < 3 or criteria.empty:
        return pd.Series(dtype=float)
    ranked = ranked_column(ranking)
    joined = criteria.join(ranking.set_index("arm")[ranked], how="inner")
    corr = joined.corr(method="spearman")[ranked].drop(ranked)
    return corr.sort_values(key=lambda s: -s.abs())


def ranked_column(ranking: pd.DataFrame) -> str:
    return "test_acc" if "test_acc" in ranking.columns else "agreement"


def _bar_plot(ranking: pd.DataFrame, teacher_acc: float | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(ranking) + 2), 4))
    x = np.arange(len(ranking))
    ranked = ranked_column(ranking)
    ax.bar(x, 100 * ranking[ranked], color="#4C72B0", label="best trial (by search metric)")
    ax.errorbar(
        x,
        100 * ranking[f"{ranked}_mean"],
        yerr=100 * ranking[f"{ranked}_std"],
        fmt="o",
        color="#DD8452",
        label="mean ± std over trials",
    )
    if teacher_acc is not None:
        ax.axhline(100 * teacher_acc, color="k", ls="--", lw=1, label=f"teacher ({100 * teacher_acc:.1f}%)")
    ax.set_xticks(x, ranking["arm"], rotation=20, ha="right")
    ax.set_ylabel(f"student {METRIC_NAMES[ranked]} (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Student accuracy by surrogate dataset")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _criteria_plot(ranking: pd.DataFrame, criteria: pd.DataFrame, corr: pd.Series, path: Path) -> None:
    names = list(corr.index)
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    ranked = ranked_column(ranking)
    joined = criteria.join(ranking.set_index("arm")[ranked], how="inner")
    for ax, name in zip(axes.flat, names, strict=False):
        ax.scatter(joined[name], 100 * joined[ranked], color="#55A868")
        for arm, r in joined.iterrows():
            ax.annotate(
                str(arm),
                (r[name], 100 * r[ranked]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(name)
        ax.set_ylabel(f"{METRIC_NAMES[ranked]} (%)")
        ax.set_title(f"Spearman ρ = {corr[name]:+.2f}", fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Teacher-side criteria vs. student accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown_table(df: pd.DataFrame, float_cols: dict[str, str]) -> str:
    header = "| " + " | ".join([str(df.index.name or "#"), *df.columns]) + " |"
    sep = "|" + "---|" * (len(df.columns) + 1)
    lines = [header, sep]
    for idx, row in df.iterrows():
        cells = [str(idx)]
        for col in df.columns:
            v = row[col]
            cells.append(float_cols[col].format(v) if col in float_cols and pd.notna(v) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problem_trials_section(trials: pd.DataFrame) -> list[str]:
    """Markdown listing each arm's failed and diverged trials (a study completes even when some do)."""
    if not len(trials):
        return []
    problems = trials[trials["outcome"].isin(["failed", "diverged"])]
    lines = ["", "## Failed and diverged trials", ""]
    if not len(problems):
        return [*lines, "_None: every trial completed or was early-stopped._"]
    lines += [
        "A diverged trial (NaN/inf loss) is a result: the search scored it 0. A failed trial raised after its "
        "retries; its full error is the run's `error.txt` artifact.",
        "",
        "| arm | trial_id | outcome | error |",
        "|---|---|---|---|",
    ]
    for row in problems.sort_values(["arm", "outcome", "trial_id"]).itertuples():
        first = str(row.error).strip().splitlines()[-1:] if row.error else []
        lines.append(f"| {row.arm} | {row.trial_id} | {row.outcome} | {(first[0] if first else '')[:160]} |")
    return lines


def write_report(
    tracker: StudyTracker,
    out_dir: Path,
    teacher_accuracy: float | None = None,
    title: str = "",
    metric: str = "val_acc",
) -> Report:
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = collect_trials(tracker)
    parquet = out_dir / "results.parquet"
    trials.to_parquet(parquet, index=False)
    ranking = rank_arms(trials, metric)
    ranked = ranking_metric(trials)
    criteria = collect_criteria(tracker)
    corr = criteria_correlations(ranking, criteria)
    plots = []
    if len(ranking):
        _bar_plot(ranking, teacher_accuracy, out_dir / "ranking.png")
        plots.append(out_dir / "ranking.png")
    if len(corr):
        _criteria_plot(ranking, criteria, corr, out_dir / "criteria.png")
        plots.append(out_dir / "criteria.png")

    pct = "{:.2%}"
    md = [f"# kd-study report: {title or tracker.name}", ""]
    md.append(f"MLflow experiment `{tracker.name}` in `{tracker.tracking_uri}`; {len(trials)} trial runs.")
    if teacher_accuracy is not None:
        md.append(f"Teacher test accuracy: **{teacher_accuracy:.2%}**.")
    md += [
        "",
        "## Ranking",
        "",
        f"Ranked by **{METRIC_NAMES[ranked]}** (`{ranked}`): each arm's score is the {METRIC_NAMES[ranked]} of "
        f"its best trial by {METRIC_NAMES[metric]} (`{metric}`, the search metric).",
        *(
            [
                "The teacher has no labelled test split, so arms are ranked by the student's agreement with the "
                "teacher on the arm's held-out surrogate images (the last `search.agreement_images` of its set). "
                "Each arm is scored on its own images: agreement compares configs within an arm better than arms "
                "with each other (a surrogate the teacher maps to one class is easy to agree on)."
            ]
            if ranked == "agreement"
            else []
        ),
        "",
    ]
    if len(ranking):
        columns = ["arm", "surrogate", "trials", ranked, f"best_{metric}", f"{ranked}_mean", f"{ranked}_std"]
        shown = ranking[[c for c in dict.fromkeys([*columns, "teacher_agreement"]) if ranking[c].notna().any()]]
        md.append(_markdown_table(shown, {c: pct for c in shown.columns if "acc" in c or "agreement" in c}))
        md += ["", "![ranking](ranking.png)"]
    else:
        md.append("_No finished trials yet._")
    if not criteria.empty:
        md += ["", "## Criteria (teacher-side, per surrogate)", ""]
        md.append(_markdown_table(criteria.reset_index().set_index("arm"), dict.fromkeys(criteria.columns, "{:.3f}")))
    if len(corr):
        md += [
            "",
            "## Which criteria predict distillation quality",
            "",
            f"Spearman rank correlation with the arms' {METRIC_NAMES[ranked]} over {len(ranking)} arms "
            "(with few arms, treat these as indications, not evidence).",
            "",
        ]
        md.append(
            _markdown_table(
                corr.rename("spearman_rho").rename_axis("criterion").to_frame(), {"spearman_rho": "{:+.2f}"}
            )
        )
        md += ["", "![criteria](criteria.png)"]
    md += problem_trials_section(trials)
    md += [
        "",
        "## Files",
        "",
        "- `results.parquet`: one row per trial (metrics at the trial's last report, hyperparameters as `param.*`).",
    ]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(md) + "\n")
    (out_dir / "ranking.json").write_text(json.dumps(ranking.to_dict(orient="records"), indent=2, default=str))
    return Report(markdown, parquet, plots, ranking)
