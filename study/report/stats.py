"""The report's statistics: an accuracy per arm with its interval, and rank correlations with their uncertainty.

An arm's accuracy is the mean `test_acc` over its final phase's seeds with a Student-t 95% interval (the paper
reports means over seeds). Without a final phase it is the `test_acc` of the best search trial by the search metric
(`val_acc`, or `agreement` for a data-free search) among those that ran their full budget, labelled so, since one
trial has no interval. Early-stopped trials never enter a mean: ASHA stops the weak ones, so they would bias it
down. A study whose teacher has no labelled test split ranks by `agreement` instead (`ranking_metric`).

Correlations are computed over surrogates, one point per distinct image source: arms that share a source are
variants, not independent evidence. Each comes with a bootstrap 95% interval (pairs resampled with replacement,
percentile interval) and a two-sided permutation p-value (exact over all orderings up to
`EXACT_PERMUTATIONS_UP_TO` points). Below `MIN_POINTS` points no number is given.

A report tests ~15 criteria on two populations with two methods and its finding quotes the strongest, so raw
p-values would find "significant" criteria in pure noise (with 5 surrogates and 30 Spearman tests, about 40% of
studies). Every p-value is therefore also given Holm-adjusted (`holm`) over one family: every criterion x
population x method (Spearman and Kendall) test the correlation table shows, i.e. every test with a p-value. Holm
controls the family-wise error rate under any dependence between the tests (Spearman and Kendall of one criterion
are nearly the same test, and criteria are correlated with each other), and the finding's claim is about one
criterion, so the family-wise rate is the error that matters. Significance is always judged on the adjusted value.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

MIN_POINTS = 5
# why every surrogate can give the same accuracy: said by the finding and by the ranking model's refusal
EQUAL_ACCURACY_HINT = "at chance level the students learned nothing: is the budget too small for the task?"
TOO_FEW = "too few surrogates"
EXACT_PERMUTATIONS_UP_TO = 7
LEVEL = 0.95
ALPHA = 0.05
ADJUSTMENT = "Holm"
"""The multiplicity adjustment every adjusted p-value in the report uses (named in the finding and the tables)."""
ACCURACY = (0.0, 1.0)
METRIC_NAMES = {"val_acc": "validation accuracy", "test_acc": "test accuracy", "agreement": "held-out agreement"}
"""How the report names the metrics it ranks or selects on."""


def ranking_metric(trials: pd.DataFrame) -> str:
    """What arms are ranked on: `test_acc` when any trial has one (the teacher has a labelled test split), else
    `agreement`, the student's agreement with the teacher on the arm's held-out surrogate images (`search.metric:
    agreement`, the only score a study without labelled data has)."""
    return "test_acc" if "test_acc" in trials and trials["test_acc"].notna().any() else "agreement"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def mean_interval(
    values: np.ndarray | list[float], level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> Interval:
    """Mean and its Student-t interval: mean +- t_{(1+level)/2, n-1} * s / sqrt(n) (NaN bounds for n < 2), cut to
    `bounds`, the values the mean can take: with 2 seeds t is 12.7, and an accuracy interval of -24% .. 113% says
    nothing a reader can use beyond 0 .. 100%."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if n < 2:
        return Interval(m, math.nan, math.nan, n)
    half = float(sps.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(m, max(m - half, bounds[0]), min(m + half, bounds[1]), n)


def full_budget(trials: pd.DataFrame, score: str = "test_acc") -> pd.Series:
    """Trials that finished their whole budget with a `score`: FINISHED, not early-stopped, not diverged."""
    ok = (trials["status"] == "FINISHED") & ~trials["early_stopped"].astype(bool)
    if "diverged" in trials:
        ok &= ~trials["diverged"].astype(bool)
    return ok & (trials[score].notna() if score in trials else False)


def arm_accuracy(trials: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Per arm: its score, the score's interval, where it comes from (`basis`) and trial counts by outcome.

    The score column is named by what it is (`ranking_metric`: `test_acc`, or `agreement` without a test split);
    `best_<metric>` holds the search metric of the trial(s) it comes from, `ranked_by` names the score column.
    """
    ranked = ranking_metric(trials)
    rows = []
    for arm, group in trials.groupby("arm", sort=False):
        ok = full_budget(group, ranked)
        if metric != ranked:
            ok &= group[metric].notna() if metric in group else False
        final = group[ok & (group["phase"] == "final")]
        search = group[ok & (group["phase"] != "final")]
        row: dict = {"arm": arm, "surrogate": group["surrogate"].iloc[0]}
        if len(final):
            iv = mean_interval(final[ranked].to_numpy(), bounds=ACCURACY)  # agreement is a share too
            row |= {ranked: iv.mean, "ci_low": iv.low, "ci_high": iv.high, "n": iv.n}
            row |= {"basis": f"mean of {iv.n} final seed(s)", f"best_{metric}": final[metric].mean()}
        elif len(search):
            best = search.loc[search[metric].idxmax()]
            row |= {ranked: best[ranked], "ci_low": math.nan, "ci_high": math.nan, "n": 1}
            row |= {"basis": f"best search trial by {METRIC_NAMES[metric]} (no final phase)"}
            row |= {f"best_{metric}": best[metric]}
        else:
            continue
        row |= {"ranked_by": ranked, **outcome_counts(group, ranked)}
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(ranked, ascending=False).reset_index(drop=True)
        out.index = out.index + 1
    return out


def outcome_counts(group: pd.DataFrame, score: str = "test_acc") -> dict[str, int]:
    """How an arm's trials ended: finished at full budget, early-stopped, failed, diverged, still running."""
    diverged = group["diverged"].astype(bool) if "diverged" in group else pd.Series(False, index=group.index)
    return {
        "trials": len(group),
        "full_budget": int(full_budget(group, score).sum()),
        "early_stopped": int(((group["status"] == "FINISHED") & group["early_stopped"].astype(bool)).sum()),
        "failed": int(((group["status"] == "FAILED") & ~diverged).sum()),
        "diverged": int(diverged.sum()),
        "running": int((group["status"] == "RUNNING").sum()),
    }


def rank_correlation_rows(x: np.ndarray, y: np.ndarray, method: str, ranked: bool = False) -> np.ndarray:
    """Row-wise Spearman rho (Pearson on average ranks) or Kendall tau-b (sum s_x s_y / sqrt(sum s_x^2 sum s_y^2)
    over pairs i < j, s = sign of the difference) of (R, n) arrays; NaN where a row is constant. Vectorised so
    that thousands of bootstrap and permutation resamples cost milliseconds. `ranked`: the rows already are
    average ranks, so Spearman skips ranking them (reordered ranks are the ranks of the reordered values)."""
    x, y = np.atleast_2d(np.asarray(x, dtype=np.float64)), np.atleast_2d(np.asarray(y, dtype=np.float64))
    if method == "spearman":
        rx, ry = (x, y) if ranked else (sps.rankdata(x, axis=1), sps.rankdata(y, axis=1))
        rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
        num, den = (rx * ry).sum(1), np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    elif method == "kendall":
        i, j = np.triu_indices(x.shape[1], 1)
        sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
        num, den = (sx * sy).sum(1), np.sqrt((sx * sx).sum(1) * (sy * sy).sum(1))
    else:
        raise ValueError(f"unknown correlation '{method}' (spearman or kendall)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def rank_correlation(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Spearman's rho or Kendall's tau-b of two samples (NaN when either is constant)."""
    if len(x) < 2:
        return math.nan
    return float(rank_correlation_rows(x, y, method)[0])


@dataclass(frozen=True)
class Correlation:
    method: str
    value: float
    low: float
    high: float
    p_value: float
    n: int

    def text(self) -> str:
        """The value and its interval. The p-value goes beside it, raw and adjusted (`holm`): the adjustment
        needs the whole family of tests, which one correlation does not know."""
        if self.n < MIN_POINTS:
            return TOO_FEW
        if not math.isfinite(self.value):
            return "undefined (a constant)"
        return f"{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def bootstrap_interval(
    x: np.ndarray, y: np.ndarray, method: str, resamples: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of the correlation over `resamples` resamplings of the (x, y) pairs with replacement;
    resamples where a side is constant (correlation undefined) are skipped."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (resamples, len(x)))
    values = rank_correlation_rows(x[idx], y[idx], method)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@functools.cache
def all_orders(n: int) -> np.ndarray:
    """Every ordering of n points (n! rows), made once per n: a report tests dozens of criteria on the same n."""
    orders = np.array(list(itertools.permutations(range(n))))
    orders.setflags(write=False)
    return orders


def permutation_p(x: np.ndarray, y: np.ndarray, method: str, permutations: int = 5000, seed: int = 0) -> float:
    """Two-sided p-value of no association: the share of orderings of y whose |correlation| >= the observed one;
    all n! orderings up to `EXACT_PERMUTATIONS_UP_TO` points, else (1 + hits) / (1 + permutations) random ones."""
    ranked = method == "spearman"
    if ranked:  # rank once: every ordering of y is then an ordering of its ranks
        x, y = sps.rankdata(x), sps.rankdata(y)
    observed = abs(float(rank_correlation_rows(x, y, method, ranked)[0]))
    if not math.isfinite(observed):
        return math.nan
    n = len(y)
    if n <= EXACT_PERMUTATIONS_UP_TO:
        orders = all_orders(n)
        values = np.abs(rank_correlation_rows(np.broadcast_to(x, orders.shape), y[orders], method, ranked))
        return float(np.mean(values >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    orders = np.argsort(rng.random((permutations, n)), axis=1)
    values = np.abs(rank_correlation_rows(np.broadcast_to(x, orders.shape), y[orders], method, ranked))
    return float((1 + np.sum(values >= observed - 1e-12)) / (1 + permutations))


def correlate(x: np.ndarray, y: np.ndarray, method: str, seed: int = 0, resamples: int = 2000) -> Correlation:
    """Correlation with interval and p-value; NaNs everywhere below `MIN_POINTS` points (say `TOO_FEW`)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < MIN_POINTS:
        return Correlation(method, math.nan, math.nan, math.nan, math.nan, n)
    lo, hi = bootstrap_interval(x, y, method, resamples, seed)
    return Correlation(method, rank_correlation(x, y, method), lo, hi, permutation_p(x, y, method, seed=seed), n)


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 1979).

    With the m finite p-values sorted p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Calling adjusted p <= alpha significant keeps the chance of any false call in the family at most alpha, whatever
    the dependence between the tests. NaN (no test: too few points, a constant criterion) stays NaN and does not
    count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if not m:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(stepped)
    return out


def family_size(table: pd.DataFrame) -> int:
    """How many tests the adjusted p-values of a `correlations` table are adjusted over (its finite p-values)."""
    if not len(table):
        return 0
    return int(np.isfinite(table[["rho_p", "tau_p"]].to_numpy(dtype=np.float64)).sum())


def correlations(
    points: pd.DataFrame, criteria: list[str], target: str = "test_acc", resamples: int = 2000
) -> pd.DataFrame:
    """Spearman and Kendall of each criterion column of `points` (one row per surrogate) with `target`, sorted by
    |rho| (strongest first), with raw permutation p-values (`rho_p`, `tau_p`) and Holm-adjusted ones
    (`rho_p_holm`, `tau_p_holm`) over every test in the table (module docstring). `resamples` only sets the
    bootstrap intervals' precision; the p-values are exact (or 5,000 permutations above 7 points) whatever it is."""
    rows = []
    for name in criteria:
        rho = correlate(points[name].to_numpy(), points[target].to_numpy(), "spearman", resamples=resamples)
        tau = correlate(points[name].to_numpy(), points[target].to_numpy(), "kendall", resamples=resamples)
        rows.append(
            {
                "criterion": name,
                "n": rho.n,
                "rho": rho.value,
                "rho_low": rho.low,
                "rho_high": rho.high,
                "rho_p": rho.p_value,
                "tau": tau.value,
                "tau_low": tau.low,
                "tau_high": tau.high,
                "tau_p": tau.p_value,
                "rho_text": rho.text(),
                "tau_text": tau.text(),
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        adjusted = holm(np.concatenate([out["rho_p"].to_numpy(), out["tau_p"].to_numpy()]))
        out.insert(out.columns.get_loc("rho_p") + 1, "rho_p_holm", adjusted[: len(out)])
        out.insert(out.columns.get_loc("tau_p") + 1, "tau_p_holm", adjusted[len(out) :])
        out = out.sort_values("rho", key=lambda s: -s.abs(), na_position="last").reset_index(drop=True)
    return out
