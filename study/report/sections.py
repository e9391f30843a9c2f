"""The report's sections, in reading order: one function per section, each returning a `Section` (or None).

Kept apart from the data collection (`study.report`) and the rendering (`study.report.document`) so that adding a
section is adding one function to `SECTIONS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from study.criteria.measures import NOT_DATA_FREE
from study.report.document import Code, Image, Note, Para, Section, Table
from study.report.stats import ADJUSTMENT, ALPHA, METRIC_NAMES, MIN_POINTS, TOO_FEW, family_size
from study.report.tables import POPULATIONS, StudyResults, criterion_label


def pct(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def p_value(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _finding(r: StudyResults, ctx: dict) -> Section:
    s = Section("Finding", [Para(ctx["finding"])])
    if r.partial:
        s.blocks.append(Note(f"{r.partial.capitalize()}: every number below may still change."))
    return s


def _ranking(r: StudyResults, ctx: dict) -> Section:
    s = Section("Ranking")
    if not len(r.ranking):
        s.blocks.append(Note("No trial has finished its full budget yet."))
        return s
    ranked, metric = r.ranked_by, r.metric
    score, picked = METRIC_NAMES[ranked], METRIC_NAMES[metric]
    s.blocks.append(
        Para(
            f"Ranked by **{score}** (`{ranked}`). An arm's score is the mean student {score} over its final phase's "
            f"seeds with a Student-t 95% interval; an arm without a final phase shows the best search trial by "
            f"{picked} (`{metric}`, the search metric) among trials that ran their full budget (no interval). "
            "Early-stopped trials never enter a mean."
        )
    )
    if ranked == "agreement":
        s.blocks.append(
            Note(
                "This study has no labelled test split (the teacher was imported without eval data), so arms are "
                "ranked by the student's agreement with the teacher on the arm's held-out surrogate images (the last "
                "`search.agreement_images` of its set, never trained on). Each arm is scored on its own images: "
                "agreement compares configs within an arm better than arms with each other (a surrogate the teacher "
                "maps to one class is easy to agree on)."
            )
        )
    rows, short = [], unbalanced_arms(r.arms)
    for rank, row in r.ranking.iterrows():
        ci = "" if not math.isfinite(row["ci_low"]) else f"[{pct(row['ci_low'])}, {pct(row['ci_high'])}]"
        cells = {"#": rank, "arm": row["arm"], "surrogate": row["surrogate"]}
        if short:
            cells["selection"] = short.get(row["arm"], "")
        cells |= {score: pct(row[ranked]), "95% CI": ci}
        cells |= {"basis": row["basis"]}
        if metric != ranked:
            cells[picked] = pct(row[f"best_{metric}"])
        rows.append(cells)
    s.blocks.append(Table(pd.DataFrame(rows)))
    if short:
        s.blocks.append(_unbalanced_note(r.arms, short))
    overlap = _overlap_note(r.ranking, r.arms)
    if overlap is not None:
        s.blocks.append(overlap)
    s.blocks.append(Image("ranking.png", "ranking"))
    return s


def unbalanced_arms(arms: pd.DataFrame) -> dict[str, str]:
    """Arms whose teacher scan hit its candidate ceiling before every quota was met, with their mark
    ('not balanced (k of K classes filled)', logged by the pipeline on the arm's parent run)."""
    if "selection" not in arms:
        return {}
    marked = arms[arms["selection"].astype(str).str.startswith(("not balanced", "long tail not met"))]
    return dict(zip(marked["arm"], marked["selection"], strict=True))


def _unbalanced_note(arms: pd.DataFrame, short: dict[str, str]) -> Note:
    achieved = dict(zip(arms["arm"], arms.get("selection_achieved", pd.Series([""] * len(arms))), strict=True))
    listed = "; ".join(f"{arm}: {mark}, kept per class {achieved.get(arm) or '?'}" for arm, mark in short.items())
    return Note(
        f"Not balanced: the teacher scan reached its candidate ceiling (`balance.candidates`) before every class was "
        f"filled, so these arms train on the classes the teacher predicted ({listed})."
    )


def with_interval(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranked arms that have a 95% interval (a final phase of two seeds or more)."""
    return ranking[ranking["ci_low"].map(math.isfinite) & ranking["ci_high"].map(math.isfinite)]


def inseparable_arms(ranking: pd.DataFrame, teacher_of: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Pairs of arms (in ranking order) whose 95% intervals overlap: the ranking does not separate them. Arms
    without an interval (no final phase, or one seed) are left out: they have no interval to compare. With
    `teacher_of` (arm -> teacher, a study of several teachers) only arms of one teacher are paired: accuracies of
    different teachers' students are on different tasks, and their order is no claim of the study."""
    has = with_interval(ranking)
    rows = list(has[["arm", "ci_low", "ci_high"]].itertuples(index=False))
    same = (lambda a, b: teacher_of.get(a) == teacher_of.get(b)) if teacher_of else (lambda a, b: True)
    return [
        (a.arm, b.arm)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if a.ci_low <= b.ci_high and b.ci_low <= a.ci_high and same(a.arm, b.arm)
    ]


def overlap_groups(ranking: pd.DataFrame, teacher_of: dict[str, str] | None = None) -> list[list[str]]:
    """The maximal groups of arms whose 95% intervals all share a point (in ranking order, two arms or more), per
    teacher as in `inseparable_arms`. Intervals on a line that overlap pairwise share a common point, so these
    are the maximal sets of mutually overlapping arms, found by one sweep over the interval ends; a pair that
    overlaps lies in at least one group. They say what a long pair list says in a few names."""
    has = with_interval(ranking)
    order = {arm: i for i, arm in enumerate(has["arm"])}
    by_teacher: dict[str | None, list[tuple[str, float, float]]] = {}
    for row in has[["arm", "ci_low", "ci_high"]].itertuples(index=False):
        key = teacher_of.get(row.arm) if teacher_of else None
        by_teacher.setdefault(key, []).append((row.arm, row.ci_low, row.ci_high))
    groups = []
    for rows in by_teacher.values():
        # closed intervals: at one point, every start comes before any end
        events = sorted([(lo, 0, arm) for arm, lo, _ in rows] + [(hi, 1, arm) for arm, _, hi in rows])
        active: set[str] = set()
        grew = False
        for _, is_end, arm in events:
            if not is_end:
                active.add(arm)
                grew = True
                continue
            if grew and len(active) > 1:
                groups.append(sorted(active, key=order.__getitem__))
            grew = False
            active.discard(arm)
    return sorted(groups, key=lambda g: [order[a] for a in g])


# a longer list of pairs is shown as the groups of arms that cannot be told apart
MAX_LISTED_PAIRS = 6


def _overlap_note(ranking: pd.DataFrame, arms: pd.DataFrame) -> Note | None:
    several = "teacher" in arms and arms["teacher"].nunique() > 1
    teacher_of = dict(zip(arms["arm"], arms["teacher"], strict=True)) if several else None
    pairs = inseparable_arms(ranking, teacher_of)
    if not pairs:
        return None
    within = " (arms of the same teacher; different teachers' students are not compared)" if several else ""
    advice = "so their order above is not a finding (more final-phase seeds narrow the intervals)."
    if len(pairs) <= MAX_LISTED_PAIRS:
        listed = "; ".join(f"{a} and {b}" for a, b in pairs)
        return Note(f"Overlapping 95% intervals{within}: {listed} cannot be told apart by this study, {advice}")
    groups = overlap_groups(ranking, teacher_of)
    listed = "; ".join(f"{{{', '.join(g)}}} ({len(g)} arms)" for g in groups)
    return Note(
        f"Overlapping 95% intervals{within}: {len(pairs)} pairs of arms overlap. In each group below, every arm's "
        f"interval overlaps every other's: the arms of a group cannot be told apart by this study, {advice} "
        f"Groups: {listed}."
    )


def _outcomes(r: StudyResults, ctx: dict) -> Section | None:
    if not len(r.trials):
        return None
    from study.report.stats import outcome_counts

    rows = [{"arm": arm, **outcome_counts(g, r.ranked_by)} for arm, g in r.trials.groupby("arm")]
    s = Section("Trials per arm: finished, early-stopped, failed, diverged", [Table(pd.DataFrame(rows))])
    bad = r.trials[(r.trials["status"] == "FAILED") | r.trials["diverged"].astype(bool)]
    if len(bad):
        listing = bad[["arm", "trial_id", "phase", "status", "run_id"]].astype(str)
        s.blocks += [Para("Failed or diverged trials (their MLflow runs hold the error):"), Table(listing)]
    return s


def _correlations(r: StudyResults, ctx: dict) -> Section:
    n = len(r.points)
    s = Section("Which criteria predict distillation quality")
    s.blocks.append(
        Para(
            f"Rank correlation of each teacher-side criterion with student {METRIC_NAMES[r.ranked_by]} across {n} "
            "surrogate(s), one "
            "point per distinct image source (arms that vary labels, image count or online perturbation of one "
            "surrogate share its images and enter once). Bootstrap 95% intervals (2,000 resamples of the surrogates) "
            "and two-sided permutation p-values. Criteria are measured on three populations: the **raw pool** (a "
            "seeded sample of the candidates before teacher-filtered selection; the paper's class entropy), the "
            "**built set** (the clean images the arm's shards hold) and the **trained batches** (a seeded sample of "
            "the batches the student trains on, after the arm's augmentation, mixup and online attack)."
        )
    )
    if len(r.correlations):
        s.blocks.append(Para(best_population(r.correlations)))
    m = family_size(r.correlations) if len(r.correlations) else 0
    if m:
        s.blocks.append(
            Para(
                f"Each p-value is shown raw (`p`) and {ADJUSTMENT}-adjusted ({ADJUSTMENT} p) over one family: all {m} "
                "tests in this table (every criterion × population, Spearman and Kendall). With this many tests some "
                f"raw p-values fall below {ALPHA:.0%} by chance alone; only an adjusted p at or below {ALPHA:.0%} "
                "is significant (Holm's method bounds the chance of any false call in the table at that level)."
            )
        )
    if n < MIN_POINTS:
        s.blocks.append(Note(f"{TOO_FEW}: {n} < {MIN_POINTS}, so no correlation is reported as a number."))
    if len(r.correlations):
        c = r.correlations
        table = pd.DataFrame(
            {
                "criterion": [criterion_label(x) for x in c["criterion"]],
                "Spearman ρ [95% CI]": c["rho_text"],
                "ρ: p": c["rho_p"].map(p_value),
                f"ρ: {ADJUSTMENT} p": c["rho_p_holm"].map(p_value),
                "Kendall τ [95% CI]": c["tau_text"],
                "τ: p": c["tau_p"].map(p_value),
                f"τ: {ADJUSTMENT} p": c["tau_p_holm"].map(p_value),
            }
        )
        s.blocks.append(Table(table))
        if any(x.split("_", 2)[2] in NOT_DATA_FREE for x in c["criterion"]):
            s.blocks.append(Para("† not data-free: measured against the teacher's own validation split."))
    s.blocks += [Image(f"criteria_{p}.png", f"criteria of the {name}") for p, name in POPULATIONS.items()]
    return s


def best_population(correlations: pd.DataFrame) -> str:
    """One sentence: the population whose strongest criterion has the lowest Holm-adjusted Spearman p (the
    adjusted p, since the choice is made over every test in the table); populations that share that p are named
    as a tie, never ordered by the table's order, and when no adjusted p is significant none is named best."""
    c = correlations.dropna(subset=["rho_p_holm"])
    if not len(c):
        return (
            "Which population predicts best: not known yet (no correlation has a p-value: too few surrogates, or no "
            "criterion varies across them)."
        )
    best: dict[str, tuple[float, str]] = {}
    for population in POPULATIONS:
        rows = c[c["criterion"].str.startswith(f"crit_{population}_")]
        if len(rows):
            top = rows.loc[rows["rho_p_holm"].idxmin()]
            best[population] = (float(top["rho_p_holm"]), str(top["criterion"]))
    lowest = min(p for p, _ in best.values())
    winners = [pop for pop, (p, _) in best.items() if math.isclose(p, lowest, rel_tol=1e-9, abs_tol=1e-12)]
    each = "; ".join(
        f"{name}: {p_value(best[pop][0])} ({criterion_label(best[pop][1])})" if pop in best else f"{name}: not measured"
        for pop, name in POPULATIONS.items()
    )
    names = [POPULATIONS[w] for w in winners]
    held_by = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    if lowest > ALPHA:  # a "winner" by a p that is not significant would read as a finding
        return (
            "Which population predicts best: none at this size: no criterion of any population is significant after "
            f"{ADJUSTMENT} adjustment (the lowest {ADJUSTMENT}-adjusted p, {p_value(lowest)}, belongs to the "
            f"{held_by}; the strongest criterion's {ADJUSTMENT}-adjusted Spearman p per population: {each})."
        )
    verdict = "significant"
    if len(winners) == 1:
        lead = f"the {POPULATIONS[winners[0]]}, whose strongest criterion has the lowest {ADJUSTMENT}-adjusted p"
    else:
        lead = f"no single population: the {held_by} tie at the lowest {ADJUSTMENT}-adjusted p"
    return (
        f"Which population predicts best: {lead} ({p_value(lowest)}, {verdict} at the {ALPHA:.0%} level; the "
        f"strongest criterion's {ADJUSTMENT}-adjusted Spearman p per population: {each})."
    )


def _prediction(r: StudyResults, ctx: dict) -> Section:
    v = r.validation
    several = v is not None and v.teachers is not None  # type: ignore[attr-defined]
    s = Section(
        "Predicting before distilling (leave-one-surrogate-out" + (", leave-one-teacher-out)" if several else ")")
    )
    if r.ranked_by != "test_acc":
        s.blocks.append(Note("No labelled test split: the ranking model predicts test accuracy, so it is not fitted."))
        return s
    if v is None and r.validation_problem:
        s.blocks.append(Note(f"The ranking model is not fitted: {r.validation_problem}."))
        return s
    if v is None:
        s.blocks.append(Note(f"{TOO_FEW}: `kd-study rank` needs at least {MIN_POINTS} surrogates with results."))
        return s
    s.blocks.append(Para(v.verdict()))  # type: ignore[attr-defined]
    table = v.predictions.copy()  # type: ignore[attr-defined]
    # several teachers: the model predicts accuracy relative to each teacher's in-domain arm (or its rank scale),
    # a share, not a percentage
    shown = (lambda x: "" if not math.isfinite(x) else f"{x:.3f}") if several else pct
    for col in table.columns:
        if col not in ("teacher", "surrogate"):
            table[col] = table[col].map(shown)
    s.blocks.append(Table(table))
    if several:
        s.blocks.append(
            Note(
                "Several teachers: achieved and predicted values are accuracy relative to the teacher's own in-domain "
                "arm (1 = as good as its own data), or its within-teacher rank scaled to 0-1 where it has none; "
                "criteria are z-scored within each teacher."
            )
        )
        held = v.teachers.copy()  # type: ignore[attr-defined]
        held.columns = ["held-out teacher", "model ρ", "class entropy alone ρ"]
        for col in held.columns[1:]:
            held[col] = held[col].map(lambda x: "" if not math.isfinite(x) else f"{x:+.2f}")
        s.blocks.append(Table(held))
    return s


def _criteria_values(r: StudyResults, ctx: dict) -> Section | None:
    cols = r.criteria_columns
    if not cols:
        return None
    frame = r.arms.set_index("arm")[cols].T
    frame.insert(0, "criterion", [criterion_label(c) for c in frame.index])
    for arm in frame.columns[1:]:
        frame[arm] = frame[arm].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    if short := unbalanced_arms(r.arms):
        mark = pd.DataFrame([{"criterion": "selection", **{a: short.get(a, "") for a in frame.columns[1:]}}])
        frame = pd.concat([mark, frame])
    return Section("Criteria per arm", [Table(frame.reset_index(drop=True))])


def _curves(r: StudyResults, ctx: dict) -> Section:
    return Section(
        "Learning curves",
        [
            Para(
                f"{METRIC_NAMES[r.metric].capitalize()} (the search metric) against images seen, per arm: its best "
                "search trial and each final seed."
            ),
            Image("learning_curves.png", "learning curves"),
        ],
    )


def _histograms(r: StudyResults, ctx: dict) -> Section:
    return Section(
        "Teacher class histograms: raw pool, built set, trained batches",
        [
            Para(
                "Share of each teacher-predicted class in the raw candidate pool, in the built set and in the sampled "
                "batches the student trains on (balanced selection flattens the built set, so only the raw pool tells "
                "balanced surrogates apart; augmentation, mixup and an online attack move the teacher's view again)."
            ),
            Image("class_histograms.png", "class histograms"),
        ],
    )


def _samples(r: StudyResults, ctx: dict) -> Section:
    s = Section("Sample grid per arm")
    for arm in sorted(r.artifacts):
        if (ctx["out_dir"] / f"samples_{arm}.png").is_file():
            s.blocks += [Para(f"**{arm}**"), Image(f"samples_{arm}.png", f"samples of {arm}")]
    return s


def _perturbed(r: StudyResults, ctx: dict) -> Section | None:
    arms = [a for a in sorted(r.artifacts) if "perturbation_histograms.json" in r.artifacts[a]]
    if not arms:
        return None
    s = Section("Perturbed arms: before and after the attack", [Image("perturbation_histograms.png", "histograms")])
    for arm in arms:
        h = json.loads(r.artifacts[arm]["perturbation_histograms.json"].read_text())
        success = r.arms.set_index("arm").get("crit_built_attack_success", pd.Series(dtype=float)).get(arm)
        line = f"**{arm}**: {h.get('attacked', '?')} images attacked"
        if success is not None and math.isfinite(success):
            line += f", success rate {success:.1%}"
        s.blocks.append(Para(line + ". Each pair: the original, then its image just after crossing the boundary."))
        if (ctx["out_dir"] / f"perturbation_{arm}.png").is_file():
            s.blocks.append(Image(f"perturbation_{arm}.png", f"before and after, {arm}"))
    return s


def _teacher(r: StudyResults, ctx: dict) -> Section:
    s = Section("Teacher")
    if r.teacher is None:
        acc = ctx["teacher_accuracy"]
        s.blocks.append(Para(f"Test accuracy {pct(acc)}." if acc is not None else "Teacher metadata not available."))
        return s
    m = r.teacher
    fields = {
        "id": m.teacher_id,
        "arch": m.arch,
        "dataset": m.dataset if m.has_eval_data else "none (imported without eval data)",
        "format": m.format,
        "classes": m.num_classes,
        "image size": m.image_size,
        "channels": m.channels,
        "train acc": pct(m.train_accuracy or math.nan),
        "val acc": pct(m.val_accuracy or math.nan),
        "test acc": pct(m.test_accuracy or math.nan),
    }
    s.blocks.append(Table(pd.DataFrame({"field": list(fields), "value": [str(v) for v in fields.values()]})))
    return s


def _flat(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = "" if value is None else str(value)


def _environment(r: StudyResults, ctx: dict) -> Section:
    """Where the numbers came from (`study.environment`): what to compare when a rerun disagrees."""
    s = Section("Environment")
    if not r.environments:
        s.blocks.append(Note("No environment recorded: the study ran before kd-study recorded one."))
        return s
    s.blocks.append(
        Para(
            "A rerun of this spec in the same environment reproduces every trial's config, early-stopping decision "
            "and accuracy. Float results change with the kd-study commit, the package versions, the CPU's "
            "instruction set (torch dispatches its kernels by `cpu.torch_capability`: AVX2 and AVX-512 kernels sum "
            "in different orders), thread counts, the GPU and its driver, and torch's deterministic switches; "
            "compare these rows first when two runs disagree. Recorded on the MLflow experiment (tags "
            "`kd_study.environment.<id>`); each trial run's tag `kd_study.environment` names the environment of the "
            "driver that started it."
        )
    )
    if len(r.environments) > 1:
        s.blocks.append(
            Note(
                f"This study ran in {len(r.environments)} environments (it was resumed on another machine or with "
                "other code or packages): its trials may mix them. Rows that differ are marked ≠."
            )
        )
    flat: dict[str, dict[str, str]] = {}
    for env_id, env in r.environments.items():
        flat[env_id] = {}
        _flat("", env, flat[env_id])
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    rows = []
    for key in keys:
        values = [flat[e].get(key, "") for e in flat]
        differs = "≠" if len(set(values)) > 1 else ""
        rows.append({"differs": differs, "field": key, **dict(zip(flat, values, strict=True))})
    table = pd.DataFrame(rows)
    if len(r.environments) == 1:
        table = table.drop(columns=["differs"])
    s.blocks.append(Table(table))
    return s


def _spec(r: StudyResults, ctx: dict) -> Section:
    try:
        text = json.dumps(json.loads(r.spec_json), indent=2)
    except json.JSONDecodeError:
        text = r.spec_json
    return Section("Study spec", [Code(text)])


def _mlflow(r: StudyResults, ctx: dict) -> Section:
    return Section(
        "MLflow",
        [
            Para(
                f"Experiment `{r.name}` in `{r.tracking_uri}`: a parent run per arm (criteria, manifest, sample grid, "
                f"histograms) and a child run per trial (learning curve). Browse: `mlflow ui --backend-store-uri "
                f"{r.tracking_uri}`. `results.parquet` holds one row per trial with `crit_raw_*` / `crit_built_*` / "
                "`crit_trained_*` columns (`crit_class_entropy` is the raw pool's, the paper's measure)."
            )
        ],
    )


SECTIONS: list[Callable[[StudyResults, dict], Section | None]] = [
    _finding,
    _ranking,
    _outcomes,
    _correlations,
    _prediction,
    _criteria_values,
    _curves,
    _histograms,
    _perturbed,
    _samples,
    _teacher,
    _environment,
    _spec,
    _mlflow,
]


def sections(results: StudyResults, out_dir: Path, teacher_accuracy: float | None, finding: str) -> list[Section]:
    ctx = {"out_dir": out_dir, "teacher_accuracy": teacher_accuracy, "finding": finding}
    made = [f(results, ctx) for f in SECTIONS]
    return [s for s in made if s is not None]
