"""The cross-teacher answer: does a criterion that ranks surrogates for one teacher rank them for the others?

Input is one row per (teacher, arm): `teacher`, `arm`, `surrogate`, an accuracy column (`test_acc`, or the
study's ranking metric), `crit_*` criteria columns, and optionally `in_domain` (the arm trains on the teacher's own
data; `in_domain_flags` derives it with the single-teacher report's rule, `amounts.references_of`: a real card
whose source is the teacher's dataset) and `surrogate_point` (the arm that stands for its surrogate). Variants of a
surrogate are not independent evidence, so each teacher keeps one point per surrogate, as `tables.surrogate_points`
does: the flagged arm, else the best one.

**Accuracy on one scale** (`normalise_accuracy`). A teacher's accuracies depend on its task (a CIFAR-100 student
lands far below a CIFAR-10 one on any surrogate), so raw accuracies do not compare across teachers. Where the
teacher has an in-domain arm, accuracy is divided by that arm's (the best in-domain arm's, as
`references_of` takes): 0.9 then means "reaches 90% of what the teacher's own data gives", the same thing for
every teacher, and that is the scale the paper's claims are about. Without an in-domain arm there is no common
reference: dividing by the best arm run would make the scale depend on which surrogates a study happened to
include, so the fallback is the within-teacher rank scaled to [0, 1] (worst 0, best 1), which assumes nothing about
spacing. Both are monotone in accuracy, so neither changes a within-teacher rank statistic: the normalisation sets
the scale the per-teacher ranking table compares teachers on, and the correlations below are the same either way.

**Pooled correlation = mean of the per-teacher Spearman ρ** (a stratified rank correlation), not the correlation
of all teachers' points in one cloud. Criteria are teacher-dependent too (class entropy is bounded by log K, K the
teacher's classes), so pooling raw values would correlate task difficulty with task difficulty; and the question a
lab asks is "does this criterion order the surrogates for my teacher", a within-teacher question. The mean is 1
exactly when the criterion orders every teacher's surrogates perfectly, 0 when it orders two teachers in opposite
directions, and equals the correlation of the pooled within-teacher ranks when every teacher has the same
surrogates (the design used here). Per criterion the analysis uses the surrogates every teacher has a finite
criterion and accuracy for, so the pooled ρ is exactly the mean of the per-teacher ρ the table shows.

**Uncertainty.** Surrogates are the sampling unit: the bootstrap (percentile 95% interval, seeded) draws one
resample of surrogates with replacement and applies it to every teacher, so a surrogate that is easy for all
teachers counts once per draw, not once per teacher (teachers share surrogates: their points are not independent).
Resamples where a teacher's ρ is undefined (a constant side) are skipped. The pooled p-value is a two-sided
permutation test of "no association for any teacher": accuracies are shuffled over surrogates independently within
each teacher, (1 + hits) / (1 + permutations). Per-teacher intervals and p-values are `stats.correlate`'s. Every
pooled p is also given Holm-adjusted (`stats.holm`, the report's adjustment) over the family of criteria tested
pooled, and each teacher's p-values over that teacher's criteria; significance is judged on the adjusted value.
When signs disagree between teachers the pooled ρ is near 0 and its interval says how sure that is; the
per-teacher columns show the disagreement itself.

**Agreement between teachers** (`kendall_w`): Kendall's W over the teachers' accuracy rankings of the shared
surrogates, with the ties correction, and its χ² test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from study.config import uncrossed_name
from study.report.document import Note, Para, Section, Table
from study.report.stats import ADJUSTMENT, ALPHA, LEVEL, MIN_POINTS, TOO_FEW, correlate, holm, rank_correlation_rows
from study.report.tables import criterion_label

IN_DOMAIN = "in_domain"
OWN_DATA = "own data"
"""The surrogate name of every teacher's in-domain arms in the cross-teacher tables."""
RESAMPLES = 2000
PERMUTATIONS = 5000


def in_domain_flags(table: pd.DataFrame, datasets: Mapping[str, str]) -> pd.Series:
    """Which rows are their teacher's in-domain arm, by the single-teacher report's rule (`amounts.references_of`):
    a real card (`kind == "real"`) whose `source` is the teacher's dataset (`datasets`: teacher -> dataset)."""
    if not {"kind", "source"} <= set(table.columns):
        return pd.Series(False, index=table.index)
    own = table["teacher"].map(dict(datasets))
    return (table["kind"] == "real") & table["source"].notna() & (table["source"] == own)


def teacher_table(ranking: pd.DataFrame, arms: pd.DataFrame, accuracy: str) -> pd.DataFrame:
    """One row per (teacher, arm): the arm's score (`accuracy`, a `stats.arm_accuracy` column), its criteria and
    teacher, its surrogate by card (a card built per teacher, `<card>@<teacher id>`, is one surrogate for every
    teacher; every teacher's in-domain arm is the surrogate `own data`), its point flag and whether it is its
    teacher's in-domain arm."""
    table = ranking[["arm", accuracy]].merge(
        arms.drop(columns=["surrogate_point"], errors="ignore"), on="arm", how="left"
    )
    table["surrogate"] = table["surrogate"].astype(str).map(uncrossed_name)
    point = arms.set_index("arm")["surrogate_point"].astype(str).str.lower() == "true"
    table["surrogate_point"] = table["arm"].map(point).fillna(False).astype(bool)
    datasets = {t: d for t, d in zip(table["teacher"], table["teacher_dataset"], strict=True) if d}
    table[IN_DOMAIN] = in_domain_flags(table, datasets)
    # each teacher's own data is one surrogate across teachers (`{dataset}_train` is digits_train for one teacher
    # and shapes_train for another): compared as such, it enters the pooled correlations and Kendall's W
    table.loc[table[IN_DOMAIN], "surrogate"] = OWN_DATA
    return table


def criteria_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("crit_")]


def label(column: str) -> str:
    """`criterion_label` for raw/built criteria; other `crit_*` columns by their name."""
    if column.startswith(("crit_raw_", "crit_built_", "crit_trained_")):
        return criterion_label(column)
    return column.removeprefix("crit_").replace("_", " ")


def normalise_accuracy(
    table: pd.DataFrame, accuracy: str = "test_acc", per: tuple[str, ...] = ("surrogate",)
) -> pd.DataFrame:
    """One row per (teacher, surrogate) (per `per` within a teacher: `kd-study rank` keeps one per surrogate and
    amount): its point arm (the `surrogate_point` arm, else the best) with `relative` (accuracy / the teacher's best
    in-domain accuracy, or the within-teacher rank scaled to [0, 1]), `scale` ('in-domain' or 'rank', per teacher),
    `reference` (that in-domain accuracy, NaN on the rank scale) and `rank` (1 = best, ties averaged). Rows without
    an accuracy drop out."""
    rows = table[table[accuracy].notna()].copy()
    flag = rows["surrogate_point"] if "surrogate_point" in rows else pd.Series(False, index=rows.index)
    rows["_flag"] = flag.astype(str).str.lower() == "true"
    in_domain = rows[IN_DOMAIN].fillna(False).astype(bool) if IN_DOMAIN in rows else pd.Series(False, rows.index)
    reference = rows[in_domain].groupby("teacher")[accuracy].max()
    points = rows.sort_values(["_flag", accuracy], ascending=False).drop_duplicates(["teacher", *per])
    points = points.drop(columns="_flag").reset_index(drop=True)
    groups = points.groupby("teacher")[accuracy]
    points["rank"] = groups.rank(ascending=False, method="average")
    ref = points["teacher"].map(reference)
    by_domain = ref.notna() & (ref > 0)
    n = points["teacher"].map(groups.size())
    scaled = ((n - points["rank"]) / (n - 1).where(n > 1)).fillna(1.0)
    points["relative"] = np.where(by_domain, points[accuracy] / ref.where(by_domain, 1.0), scaled)
    points["scale"] = np.where(by_domain, "in-domain", "rank")
    points["reference"] = ref.where(by_domain)
    return points


@dataclass(frozen=True)
class Concordance:
    """Kendall's W of m teachers ranking n surrogates, its χ² = m (n - 1) W on n - 1 df, and the p-value."""

    w: float
    chi2: float
    df: int
    p_value: float
    m: int
    n: int


def kendall_w(values: np.ndarray) -> Concordance:
    """Kendall's coefficient of concordance (Kendall & Babington Smith, Ann. Math. Statist. 1939) of an (m, n)
    array: m raters (teachers) each scoring n objects (surrogates); each row is ranked (ties averaged).

    W = 12 S / (m² (n³ - n) - m Σ_j T_j), S = Σ_i (R_i - m (n + 1) / 2)², R_i the rank sum of object i, and
    T_j = Σ (t³ - t) over rater j's groups of t tied objects (the ties correction: without it, raters who agree
    exactly but tie some objects get W < 1). W = 1: every rater ranks alike; 0: no agreement. m (n - 1) W is
    Friedman's statistic, χ² on n - 1 degrees of freedom for large n (rough below n = 8, where exact tables are
    used). NaN when m < 2, n < 2, or every rater ties every object."""
    x = np.asarray(values, dtype=np.float64)
    m, n = x.shape
    if m < 2 or n < 2:
        return Concordance(math.nan, math.nan, max(n - 1, 0), math.nan, m, n)
    ranks = sps.rankdata(x, axis=1)
    s = float(((ranks.sum(0) - m * (n + 1) / 2) ** 2).sum())
    ties = 0.0
    for row in x:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    den = m**2 * (n**3 - n) - m * ties
    if den <= 0:
        return Concordance(math.nan, math.nan, n - 1, math.nan, m, n)
    w = 12 * s / den
    chi2 = m * (n - 1) * w
    return Concordance(w, chi2, n - 1, float(sps.chi2.sf(chi2, n - 1)), m, n)


@dataclass(frozen=True)
class CrossTeacher:
    teachers: list[str]
    accuracy: str
    points: pd.DataFrame  # normalise_accuracy's table
    shared: list[str]  # surrogates every teacher has an accuracy for (what W ranks)
    per_teacher: pd.DataFrame  # criterion, teacher, n, rho, rho_low, rho_high, rho_p, rho_p_holm, rho_text
    pooled: pd.DataFrame  # criterion, n, rho, rho_low, rho_high, rho_p, rho_p_holm, signs_agree; by |rho|
    concordance: Concordance
    sentence: str


def _matrices(points: pd.DataFrame, teachers: list[str], column: str, accuracy: str):
    """(surrogates, X, Y): the surrogates every teacher has a finite `column` and accuracy for, and the (T, n)
    arrays of criterion and accuracy, in the same surrogate order for every teacher."""
    wide = points.pivot_table(index="surrogate", columns="teacher", values=[column, accuracy], aggfunc="first")
    x, y = wide[column].reindex(columns=teachers), wide[accuracy].reindex(columns=teachers)
    ok = np.isfinite(x.to_numpy(np.float64)).all(1) & np.isfinite(y.to_numpy(np.float64)).all(1)
    return list(x.index[ok]), x.to_numpy(np.float64)[ok].T, y.to_numpy(np.float64)[ok].T


def pooled_bootstrap(x: np.ndarray, y: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean per-teacher ρ over resamples of the surrogates (columns), one resample
    applied to every teacher (row); resamples where any teacher's ρ is undefined are skipped."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[1], (resamples, x.shape[1]))
    rhos = np.stack([rank_correlation_rows(xt[idx], yt[idx], "spearman") for xt, yt in zip(x, y, strict=True)])
    values = rhos.mean(0)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def pooled_permutation_p(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided p of the mean per-teacher ρ: accuracies shuffled over surrogates independently within each
    teacher, (1 + hits) / (1 + permutations)."""
    rx, ry = sps.rankdata(x, axis=1), sps.rankdata(y, axis=1)
    observed = abs(float(rank_correlation_rows(rx, ry, "spearman", ranked=True).mean()))
    if not math.isfinite(observed):
        return math.nan
    rng = np.random.default_rng(seed)
    total = np.zeros(permutations)
    for xt, yt in zip(rx, ry, strict=True):
        orders = np.argsort(rng.random((permutations, len(yt))), axis=1)
        total += rank_correlation_rows(np.broadcast_to(xt, orders.shape), yt[orders], "spearman", ranked=True)
    hits = np.sum(np.abs(total / len(rx)) >= observed - 1e-12)
    return float((1 + hits) / (1 + permutations))


def cross_teacher(
    table: pd.DataFrame,
    accuracy: str = "test_acc",
    resamples: int = RESAMPLES,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> CrossTeacher:
    """Per criterion its Spearman ρ with accuracy per teacher and pooled, with intervals and raw and Holm p-values;
    Kendall's W of the teachers' surrogate rankings; and the sentence naming the criterion that predicts best."""
    points = normalise_accuracy(table, accuracy)
    teachers = sorted(points["teacher"].astype(str).unique())
    per_rows, pooled_rows = [], []
    for column in criteria_columns(points):
        shared, x, y = _matrices(points, teachers, column, accuracy)
        n = len(shared)
        for t, teacher in enumerate(teachers):
            c = correlate(x[t], y[t], "spearman", seed=seed, resamples=resamples)
            per_rows.append({"criterion": column, "teacher": teacher, "n": n, "rho": c.value, "rho_low": c.low,
                             "rho_high": c.high, "rho_p": c.p_value, "rho_text": c.text()})  # fmt: skip
        row = {"criterion": column, "n": n, "rho": math.nan, "rho_low": math.nan, "rho_high": math.nan}
        row |= {"rho_p": math.nan, "signs_agree": False}
        if n >= MIN_POINTS:
            each = [float(sps.spearmanr(xt, yt).statistic) for xt, yt in zip(x, y, strict=True)]
            if all(math.isfinite(r) for r in each):
                lo, hi = pooled_bootstrap(x, y, resamples, seed)
                row |= {"rho": float(np.mean(each)), "rho_low": lo, "rho_high": hi}
                row |= {"rho_p": pooled_permutation_p(x, y, permutations, seed)}
                row["signs_agree"] = bool(len({np.sign(r) for r in each}) == 1)
        pooled_rows.append(row)
    per_teacher, pooled = pd.DataFrame(per_rows), pd.DataFrame(pooled_rows)
    if len(pooled):
        pooled.insert(pooled.columns.get_loc("rho_p") + 1, "rho_p_holm", holm(pooled["rho_p"].to_numpy()))
        pooled = pooled.sort_values("rho", key=lambda s: -s.abs(), na_position="last").reset_index(drop=True)
        per_teacher["rho_p_holm"] = per_teacher.groupby("teacher")["rho_p"].transform(lambda p: holm(p.to_numpy()))
    wide = points.pivot_table(index="surrogate", columns="teacher", values=accuracy, aggfunc="first")
    wide = wide.reindex(columns=teachers).dropna()
    concordance = kendall_w(wide.to_numpy(np.float64).T)
    sentence = best_sentence(pooled, teachers)
    return CrossTeacher(teachers, accuracy, points, list(wide.index), per_teacher, pooled, concordance, sentence)


def best_sentence(pooled: pd.DataFrame, teachers: list[str]) -> str:
    """The criterion that predicts best across teachers: among those whose Holm-adjusted pooled p is at most
    `ALPHA`, the largest |pooled ρ| (then the smaller adjusted p); or that none does at this size."""
    who = f"the {len(teachers)} teachers ({', '.join(teachers)})"
    tested = pooled.dropna(subset=["rho"]) if len(pooled) else pooled
    if not len(tested):
        return (
            f"No criterion can be compared across {who}: none is measured, varies, and has an accuracy on at least "
            f"{MIN_POINTS} surrogates shared by every teacher."
        )
    m = int(np.isfinite(tested["rho_p"]).sum())
    significant = tested[tested["rho_p_holm"] <= ALPHA]
    if len(significant):
        top = significant.assign(_a=significant["rho"].abs()).sort_values(["_a", "rho_p_holm"], ascending=[False, True])
        top = top.iloc[0]
        direction = "higher" if top["rho"] > 0 else "lower"
        return (
            f"Across {who}, {label(top['criterion'])} predicts student accuracy best ({direction} is better): pooled "
            f"ρ = {top['rho']:+.2f} [95% CI {top['rho_low']:+.2f}, {top['rho_high']:+.2f}] over {top['n']} shared "
            f"surrogates, permutation p = {top['rho_p']:.4f} uncorrected, {ADJUSTMENT}-adjusted p = "
            f"{top['rho_p_holm']:.4f} over {_criteria(m)}."
        )
    top = tested.iloc[0]
    return (
        f"No criterion predicts student accuracy across {who} at this size ({top['n']} shared surrogates): the "
        f"strongest pooled, {label(top['criterion'])}, has ρ = {top['rho']:+.2f} [95% CI {top['rho_low']:+.2f}, "
        f"{top['rho_high']:+.2f}], {ADJUSTMENT}-adjusted p = {top['rho_p_holm']:.3f} over {_criteria(m)} "
        f"(above {ALPHA:.0%})."
    )


def _criteria(m: int) -> str:
    return f"{m} criterion" if m == 1 else f"{m} criteria"


def _pct(v: float) -> str:
    return "" if not math.isfinite(v) else f"{100 * v:.2f}%"


def _p(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.3f}"


def _interval(rho: float, lo: float, hi: float, n: int) -> str:
    if n < MIN_POINTS:
        return TOO_FEW
    if not math.isfinite(rho):
        return "undefined (a constant)"
    return f"{rho:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def ranking_table(result: CrossTeacher) -> pd.DataFrame:
    """Per surrogate: each teacher's accuracy, its share of the in-domain accuracy (teachers with an in-domain arm)
    and rank; ordered by the mean rank over teachers (surrogates some teacher lacks last, without a mean)."""
    p = result.points
    wide = p.pivot_table(index="surrogate", columns="teacher", values=[result.accuracy, "relative", "rank"],
                         aggfunc="first")  # fmt: skip
    mean_rank = wide["rank"].reindex(columns=result.teachers).mean(axis=1, skipna=False)
    order = mean_rank.sort_values(na_position="last", kind="stable").index  # ties: by name
    by_domain = set(p.loc[p["scale"] == "in-domain", "teacher"])
    rows = []
    for i, surrogate in enumerate(order, start=1):
        row: dict = {"#": i, "surrogate": surrogate}
        for t in result.teachers:
            acc = wide[result.accuracy].get(t, pd.Series(dtype=float)).get(surrogate, math.nan)
            rank = wide["rank"].get(t, pd.Series(dtype=float)).get(surrogate, math.nan)
            row[f"{t}: {result.accuracy}"] = _pct(acc)
            if t in by_domain:
                rel = wide["relative"].get(t, pd.Series(dtype=float)).get(surrogate, math.nan)
                row[f"{t}: × in-domain"] = "" if not math.isfinite(rel) else f"{rel:.3f}"
            row[f"{t}: rank"] = "" if not math.isfinite(rank) else f"{rank:g}"
        m = mean_rank.get(surrogate, math.nan)
        row["mean rank"] = "" if not math.isfinite(m) else f"{m:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def correlation_table(result: CrossTeacher) -> pd.DataFrame:
    """Per criterion (strongest pooled first): each teacher's ρ [95% CI], p and Holm p, then the pooled ones."""
    rows = []
    per = result.per_teacher.set_index(["criterion", "teacher"])
    for _, c in result.pooled.iterrows():
        row: dict = {"criterion": label(c["criterion"]), "shared surrogates": c["n"]}
        for t in result.teachers:
            r = per.loc[(c["criterion"], t)]
            row |= {f"{t}: ρ [95% CI]": r["rho_text"], f"{t}: p": _p(r["rho_p"])}
            row[f"{t}: {ADJUSTMENT} p"] = _p(r["rho_p_holm"])
        row["pooled ρ [95% CI]"] = _interval(c["rho"], c["rho_low"], c["rho_high"], c["n"])
        row |= {"pooled p": _p(c["rho_p"]), f"pooled {ADJUSTMENT} p": _p(c["rho_p_holm"])}
        rows.append(row)
    return pd.DataFrame(rows)


def cross_teacher_section(table: pd.DataFrame, accuracy: str = "test_acc", seed: int = 0) -> Section | None:
    """The report's cross-teacher section, or None for a table with fewer than two teachers (nothing to pool)."""
    if "teacher" not in table or table["teacher"].nunique() < 2:
        return None
    r = cross_teacher(table, accuracy, seed=seed)
    s = Section("Across teachers", [Para(r.sentence)])
    rank_only = sorted(set(r.points.loc[r.points["scale"] == "rank", "teacher"]))
    s.blocks.append(
        Para(
            "Each teacher keeps one point per surrogate. Accuracy is shown relative to the teacher's own in-domain "
            "arm where it has one (× in-domain), so 0.9 means the same for every teacher; ranks put the others on "
            "one scale. The pooled ρ is the mean of the per-teacher Spearman ρ over the surrogates every teacher "
            f"has (a criterion ranking every teacher's surrogates perfectly scores 1). Bootstrap {LEVEL:.0%} "
            f"intervals ({RESAMPLES:,} resamples of the surrogates, each applied to every teacher) and two-sided "
            f"permutation p-values (accuracies shuffled within each teacher); {ADJUSTMENT}-adjusted p over the "
            "criteria, pooled and per teacher; only an adjusted p at or below "
            f"{ALPHA:.0%} is significant."
        )
    )
    if rank_only:
        s.blocks.append(Note(f"No in-domain arm for {', '.join(rank_only)}: their accuracies enter as ranks."))
    missing = sorted(set(r.points["surrogate"]) - set(r.shared))
    if missing:
        s.blocks.append(Note(f"Not run for every teacher, left out of the pooled statistics: {', '.join(missing)}."))
    s.blocks.append(Table(ranking_table(r)))
    w = r.concordance
    if math.isfinite(w.w):
        s.blocks.append(
            Para(
                f"Agreement of the {w.m} teachers' surrogate rankings: Kendall's W = {w.w:.3f} over {w.n} shared "
                f"surrogates (1: every teacher ranks them alike, 0: no agreement; ties corrected), χ² = "
                f"{w.chi2:.2f} on {w.df} df, p = {w.p_value:.4f}."
            )
        )
    if len(r.pooled):
        s.blocks.append(Table(correlation_table(r)))
    return s
