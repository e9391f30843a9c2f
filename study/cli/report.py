"""`kd-study report / rank`: the report of a study, and candidate surrogates scored against it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from study.cli.console import console, user_errors
from study.cli.options import RootOption, SetOption, StorageOption, TrackingOption, load_spec


def report(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the report to this local folder.")] = None,
    sets: SetOption = None,
) -> None:
    """Rebuild the report (to <root>/report/<study name>) from the MLflow store alone."""
    from study.orchestrate.pipeline import open_tracker, publish_report
    from study.orchestrate.validation import study_paths, total_trials
    from study.teacher.checkpoint import load_meta

    with user_errors():
        spec_path, study_spec, _ = load_spec(spec, storage, root, tracking_uri, sets=sets)  # the run's --set
        paths = study_paths(study_spec)
        meta = load_meta(paths.teacher) if not study_spec.teachers else None  # the report's line for one teacher
        tracker = open_tracker(study_spec, paths, str(spec_path.resolve().parent))
        result, uri = publish_report(
            tracker, paths, meta, study_spec.name, out, total_trials(study_spec), metric=study_spec.search.metric
        )
    console.print(f"finding: {result.finding}", soft_wrap=True)
    console.print(
        f"report: [bold]{uri}[/] (report.html, report.md; {len(result.ranking)} arms)"
        + (f", copy in {out}" if out else ""),
        soft_wrap=True,
    )


def rank(
    spec: Annotated[str, typer.Argument(help="A finished study's spec (YAML path or bundled name).")],
    candidates: Annotated[list[str], typer.Option("--candidates", help="Candidate cards (names or YAML paths).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Images each candidate would supply (default: its card's count).")
    ] = None,
    sets: SetOption = None,
) -> None:
    """Score candidate surrogates from raw-pool criteria (teacher passes only), with a model fitted on the study."""
    from study.orchestrate.rank_candidates import rank_study_candidates

    with user_errors():
        # RankError: a clear message, exit 2
        spec_path, study_spec, _ = load_spec(spec, storage, root, tracking_uri, sets=sets)  # the run's --set
        scored, validation = rank_study_candidates(study_spec, spec_path, candidates, count=count)
    several = "teacher" in scored
    table = Table(title="Candidate surrogates, predicted student test accuracy" + (" per teacher" if several else ""))
    columns = ["teacher", "#", "card", "predicted acc", "relative"] if several else ["#", "card", "predicted acc"]
    for col in [*columns, "class entropy (raw pool)"]:
        table.add_column(col, justify="left" if col in ("card", "teacher") else "right", no_wrap=True)
    for i, row in scored.iterrows():
        star = " *" if row["outside_range"] else ""
        acc = row["predicted_test_acc"]
        shown = [str(i), row["card"], "-" if acc != acc else f"{acc:.1%}" + star]  # NaN: the teacher's scale is ranks
        if several:
            shown = [row["teacher"], *shown, f"{row['predicted_relative']:.2f}" + (star if acc != acc else "")]
        entropy = row["crit_raw_class_entropy"]
        table.add_row(*shown, f"{0.0 if abs(entropy) < 5e-4 else entropy:.3f}")  # no "-0.000" for float noise
    console.print(table)
    if several:
        console.print(
            "relative: the predicted accuracy as a share of the teacher's in-domain arm's (predicted acc = relative x "
            "that accuracy), or, for a teacher without an in-domain arm, the place among the study's surrogates for "
            "it (0 worst, 1 best; no accuracy shown)",
            soft_wrap=True,
        )
    if scored["outside_range"].any():
        console.print(
            "* the model's prediction lies outside 0-100% (the candidate is unlike the study's surrogates, so the "
            "linear model extrapolates); shown clipped, ranked by the model's value",
            soft_wrap=True,
        )
    console.print(validation.verdict(), soft_wrap=True)


def register(app: typer.Typer) -> None:
    for command in (report, rank):
        app.command()(command)
