"""The report's amounts-and-mixtures section: how many surrogate images a student needs, and whether a blend
beats its parts.

Frank & Davis (CVPR 2025) fix every surrogate at 50K images and name the size/quality trade-off as open work;
this section answers it from the arms a study ran. Arms expanded from one `counts:` list (`amount_of`) form one
curve; an arm's accuracy is the one the report's ranking gives it (`stats.arm_accuracy`: the mean `test_acc` of its
full-budget final-phase seeds with a Student-t interval when a final phase ran, else the test accuracy of its best
full-budget search trial by the study's search metric, without an interval), so the curve and the ranking table
never disagree about an arm. A mixture is shown beside its components with the accuracy a linear blend predicts,
`sum_i w_i * acc_i` over the components' arms at the mixture's amount (the nearest amount on a log scale when that
one was not run): a mixture above it gains from blending, one below loses.

`amount_section` takes plain tables (the ranking, and per arm its logged params), so any report can call it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

FRACTIONS = (0.90, 0.95, 0.99)
PLOT = "accuracy_vs_amount.png"


@dataclass
class AmountSection:
    """What the section shows: Markdown text, its PNGs, and the tables behind them (for HTML and parquet)."""

    markdown: str
    plots: list[Path]
    references: dict[str, float]
    points: pd.DataFrame  # one row per arm: family, surrogate, kind, count, test_acc, ci_low, ci_high, basis
    thresholds: pd.DataFrame
    mixtures: pd.DataFrame
    notes: list[str] = field(default_factory=list)


ARM_COLUMNS = ["arm", "surrogate", "kind", "source", "count", "family", "perturbation", "components"]


def arm_fields(arm: str, params: dict[str, str]) -> dict:
    """An arm's row from its parent run's params as MLflow stores them (flattened, strings): surrogate, kind,
    source, count, family (the `counts:` arm it came from, else itself) and `components` (JSON {name: weight},
    mixtures only)."""
    components = {k[len("components.") :]: float(v) for k, v in params.items() if k.startswith("components.")}
    count = pd.to_numeric(params.get("count"), errors="coerce")
    return {
        "arm": arm,
        "surrogate": params.get("surrogate", arm),
        "kind": params.get("kind", ""),
        "source": params.get("source", ""),
        "count": float(count) if count == count else math.nan,
        "family": params.get("amount_of") or arm,
        "perturbation": params.get("perturbation.mode", "none"),
        "components": json.dumps(components) if components else "",
    }


def arm_table(arm_params: dict[str, dict[str, str]]) -> pd.DataFrame:
    """`arm_fields` of every arm, for callers that hold the params themselves."""
    return pd.DataFrame([arm_fields(a, p) for a, p in arm_params.items()], columns=ARM_COLUMNS)


def references_of(points: pd.DataFrame, teacher_dataset: str | None, teacher_acc: float | None) -> dict[str, float]:
    """Accuracies a curve should reach: the in-domain data's (the best arm on a real card whose source is the
    teacher's dataset) and the teacher's own test accuracy."""
    out: dict[str, float] = {}
    if teacher_dataset and "source" in points:
        own = points[(points["kind"] == "real") & (points["source"] == teacher_dataset)]
        if len(own):
            out["in-domain"] = float(own["test_acc"].max())
    if teacher_acc is not None and teacher_acc == teacher_acc:
        out["teacher"] = float(teacher_acc)
    return out


def smallest_reaching(curve: pd.DataFrame, target: float) -> float:
    """The smallest amount whose accuracy reaches `target` (NaN if none does)."""
    hit = curve[curve["test_acc"] >= target - 1e-12]
    return float(hit["count"].min()) if len(hit) else math.nan


def thresholds(points: pd.DataFrame, references: dict[str, float]) -> pd.DataFrame:
    """Per curve: its best accuracy and the smallest amount reaching 90/95/99% of it and of each reference."""
    rows = []
    for family, curve in points.groupby("family", sort=False):
        best = float(curve["test_acc"].max())
        row: dict = {"curve": family, "surrogate": curve["surrogate"].iloc[0], "amounts": len(curve), "best": best}
        for f in FRACTIONS:
            row[f"n@{f:.0%} best"] = smallest_reaching(curve, f * best)
        for label, acc in references.items():
            for f in FRACTIONS:
                row[f"n@{f:.0%} {label}"] = smallest_reaching(curve, f * acc)
        rows.append(row)
    return pd.DataFrame(rows)


def _nearest(points: pd.DataFrame, surrogate: str, count: float) -> pd.Series | None:
    """The arm of `surrogate` (unperturbed) whose amount is nearest `count` on a log scale."""
    rows = points[(points["surrogate"] == surrogate) & (points["perturbation"] == "none")]
    if not len(rows):
        return None
    return rows.loc[(np.log(rows["count"]) - math.log(count)).abs().idxmin()]


def mixture_rows(points: pd.DataFrame) -> pd.DataFrame:
    """Each mixture arm beside its components' arms and the accuracy a linear blend of them predicts."""
    rows = []
    for _, mix in points[points["components"] != ""].iterrows():
        weights = json.loads(mix["components"])
        parts = {name: _nearest(points, name, mix["count"]) for name in weights}
        row = {"mixture": mix["arm"], "amount": mix["count"], "test_acc": mix["test_acc"]}
        for name, part in parts.items():
            row[f"{name} (w {weights[name]:.2f})"] = math.nan if part is None else part["test_acc"]
        if all(p is not None for p in parts.values()):
            blend = sum(weights[n] * p["test_acc"] for n, p in parts.items())  # type: ignore[index]
            best_part = max(p["test_acc"] for p in parts.values())  # type: ignore[index]
            row |= {"blend predicts": blend, "gain over blend": mix["test_acc"] - blend,
                    "beats best part": bool(mix["test_acc"] > best_part)}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def plot_amounts(points: pd.DataFrame, mixtures: pd.DataFrame, references: dict[str, float], path: Path) -> Path:
    """Curves on a log amount axis ticked at the amounts run; the curves at one amount sit a few percent apart
    on x (a dodge) so that their intervals do not hide each other, and the legend sits outside the axes."""
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    families = list(dict.fromkeys(points["family"]))
    dodge = {f: 1.0 + 0.03 * (i - (len(families) - 1) / 2) for i, f in enumerate(families)}
    for i, (family, curve) in enumerate(points.groupby("family", sort=False)):
        curve = curve.sort_values("count")
        mixture = (curve["components"] != "").any()
        yerr = np.vstack([curve["test_acc"] - curve["ci_low"], curve["ci_high"] - curve["test_acc"]])
        ax.errorbar(curve["count"] * dodge[family], curve["test_acc"], yerr=np.nan_to_num(yerr), marker="o",
                    capsize=3, linestyle="--" if mixture else "-", color=colours[i % len(colours)],
                    label=f"{family} (mixture)" if mixture else family)  # fmt: skip
    if len(mixtures) and "blend predicts" in mixtures:
        family_of = dict(zip(points["arm"], points["family"], strict=True))
        x = mixtures["amount"] * mixtures["mixture"].map(family_of).map(dodge).fillna(1.0)
        ax.scatter(x, mixtures["blend predicts"], marker="x", s=60, color="black", zorder=5,
                   label="linear blend of components")  # fmt: skip
    for j, (label, acc) in enumerate(references.items()):
        ax.axhline(acc, color="grey", linestyle=":" if j else "-.", linewidth=1)
        ax.annotate(label, (0.01, acc), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log")
    amounts = sorted({int(c) for c in points["count"]})
    ax.xaxis.set_major_locator(FixedLocator(amounts))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(amounts[0] / 1.5, amounts[-1] * 1.5)
    ax.set_ylim(-0.02, 1.06)  # accuracies; room above 1 for the references' labels
    ax.set_xlabel("surrogate images (log scale; curves at one amount are drawn slightly apart)")
    ax.set_ylabel("student test accuracy")
    basis = "best search trial, no intervals" if points["ci_low"].isna().all() else "95% t intervals over seeds"
    ax.set_title(f"Accuracy vs amount of surrogate data ({basis})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind == "f":
            as_count = col.startswith("n@") or col in ("count", "amount")
            out[col] = out[col].map(lambda v, c=as_count: _cell(v, c))
    return out


def _cell(v: float, count: bool) -> str:
    if v != v:
        return "not reached" if count else ""
    return f"{v:,.0f}" if count else f"{v:.4f}"


def _table(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def amount_section(
    ranking: pd.DataFrame,
    arms: pd.DataFrame,
    out_dir: Path,
    teacher_dataset: str | None = None,
    teacher_acc: float | None = None,
) -> AmountSection | None:
    """The section, or None when the study has neither amounts (a curve of two or more) nor mixtures.

    `ranking`: the report's per-arm scores (`stats.arm_accuracy`), so the curve never rescores an arm; `arms`: rows
    of `arm_fields` (ARM_COLUMNS); the teacher's dataset and accuracy give the references to reach. A study
    without a test split has no accuracy to plot against amount: no section.
    """
    if ranking.empty or ranking["ranked_by"].iloc[0] != "test_acc":
        return None
    acc = ranking[["arm", "test_acc", "ci_low", "ci_high", "n", "basis"]]
    points = arms[ARM_COLUMNS].merge(acc, on="arm", how="inner").dropna(subset=["count", "test_acc"])
    references = references_of(points, teacher_dataset, teacher_acc)
    has_curve = (points.groupby("family")["arm"].count() >= 2).any() if len(points) else False
    if not len(points) or not (has_curve or (points["components"] != "").any()):
        return None
    points = points.sort_values(["family", "count"]).reset_index(drop=True)
    mixtures = mixture_rows(points)
    limits = thresholds(points, references)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_amounts(points, mixtures, references, out_dir / PLOT)
    notes = []
    if points["ci_low"].isna().all():
        notes.append("No final phase ran: points are best search trials by val, without intervals.")
    if references:
        notes.append("References: " + ", ".join(f"{k} {v:.4f}" for k, v in references.items()) + ".")
    section = AmountSection("", [plot], references, points, limits, mixtures, notes)
    md = ["## Amounts and mixtures", "", f"![accuracy vs amount]({plot.name})", ""]
    md += [f"> {n}" for n in notes] + ([""] if notes else [])
    for title, frame in table_frames(section):
        md += [f"### {title}", "", _table(frame), ""]
    section.markdown = "\n".join(md)
    return section


def table_frames(section: AmountSection) -> list[tuple[str, pd.DataFrame]]:
    """The section's tables, titled and formatted as strings (for Markdown and HTML alike)."""
    shown = section.points[["family", "arm", "kind", "count", "test_acc", "ci_low", "ci_high", "basis"]]
    out = [
        ("Accuracy per amount", _fmt(shown)),
        ("Smallest amount reaching a share of the best and of the references", _fmt(section.thresholds)),
    ]
    if len(section.mixtures):
        out.append(("Mixtures beside their components (linear blend = sum of weight x component accuracy)",
                    _fmt(section.mixtures)))  # fmt: skip
    return out
