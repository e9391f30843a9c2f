"""`kd-study quickstart / run / status / trial`: run a study, or one trial of it, and follow it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from study.cli.console import RichProgress, console, progress_bars, user_errors
from study.cli.options import RayAddressOption, RootOption, SetOption, StorageOption, TrackingOption, load_spec


def _print_ranking(outcome) -> None:
    ranking = outcome.report.ranking
    show_surrogate = bool(len(ranking)) and bool((ranking["arm"] != ranking["surrogate"]).any())
    ranked = str(ranking["ranked_by"].iloc[0]) if len(ranking) else "test_acc"
    label = {"test_acc": "test acc", "agreement": "agreement"}[ranked]
    picked = next((c.removeprefix("best_") for c in ranking.columns if c.startswith("best_")), "val_acc")
    best = f"best trial by {picked}"
    bases = ["final seeds" if str(b).startswith("mean") else best for b in ranking.get("basis", [])]
    show_basis = len(set(bases)) > 1  # one basis for every arm goes in the caption: the table fits 80 columns
    caption = None
    if bases and not show_basis:
        caption = (
            f"{label}: mean of the final seeds, 95% t interval"
            if bases[0] == "final seeds"
            else f"{label}: the {bases[0]} (no final phase)"
        )
    title = f"Arms ranked by student {'test accuracy' if ranked == 'test_acc' else 'agreement'}"
    table = Table(title=title, caption=caption)
    columns = ["#", "arm", *(["surrogate"] if show_surrogate else []), label, "95% CI", *(["basis"] * show_basis)]
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "surrogate", "basis") else "right", no_wrap=True)
    for (rank, row), basis in zip(ranking.iterrows(), bases, strict=True):
        cells = [str(rank), row["arm"], *([row["surrogate"]] if show_surrogate else [])]
        ci = "" if row["ci_low"] != row["ci_low"] else f"{100 * row['ci_low']:.1f}-{100 * row['ci_high']:.1f}%"
        cells += [f"{row[ranked]:.1%}", ci, *([basis] * show_basis)]
        table.add_row(*cells)
    console.print(table)
    for tid, meta in outcome.teachers.items():
        if meta.test_accuracy is not None:
            label = "teacher" if len(outcome.teachers) == 1 else f"teacher {tid} ({meta.arch} on {meta.dataset})"
            console.print(f"{label} test accuracy: {meta.test_accuracy:.2%}")
    console.print(f"finding: {outcome.report.finding}", soft_wrap=True)
    report_at = outcome.report_uri or str(outcome.report.html.parent)
    console.print(f"report: [bold]{report_at}[/] (report.html, report.md, results.parquet)", soft_wrap=True)
    console.print(f"MLflow UI: [bold]mlflow ui --backend-store-uri {outcome.paths.tracking_uri}[/]", soft_wrap=True)


def quickstart(
    out: Annotated[Path, typer.Option(help="Folder for everything the study writes.")] = Path("kd-study-quickstart"),
    spec: Annotated[
        str | None, typer.Option(help="Use this study spec (a YAML path or a bundled name) instead of the quickstart.")
    ] = None,
) -> None:
    """Run the whole study at small scale: teacher, surrogates, criteria, Ray Tune sweep, report."""
    from study.config import load_study
    from study.resources import resolve_spec_path

    start = time.perf_counter()
    with user_errors():
        study_spec = load_study(resolve_spec_path(spec)) if spec else None  # a typo fails before torch loads
        from study.orchestrate.quickstart import quickstart as run_quickstart

        with progress_bars() as progress:
            outcome = run_quickstart(out, study_spec, RichProgress(progress))
    _print_ranking(outcome)
    console.print(f"done in {time.perf_counter() - start:.0f} s")


def run(
    spec: Annotated[str, typer.Argument(help="Study spec: a YAML path or a bundled name (e.g. quickstart).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    ray_address: RayAddressOption = None,
    sets: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the report to this local folder.")] = None,
    workers: Annotated[
        int, typer.Option("--workers", "--build-workers", min=1, help="Processes for generating surrogates.")
    ] = 1,
) -> None:
    """Build what is missing, then run (or resume) the Ray Tune study and write the report.

    Exits 0 when every trial reached a result (diverged trials are results), 3 when trials failed (after the
    report is written; they are listed there), 2 on a user error found before anything ran.
    """
    from study.cli.validate import check

    with user_errors():
        # the checks of `kd-study validate` first: a typo costs a second, before torch and Ray are imported
        check(spec, storage, root, tracking_uri, sets)
        spec_path, study_spec, _ = load_spec(spec, storage, root, tracking_uri, ray_address, sets)
        from study.orchestrate.pipeline import run_study

        with progress_bars() as progress:
            outcome = run_study(
                study_spec,
                None,
                RichProgress(progress),
                build_workers=workers,
                spec_path=str(spec_path),
                report_out=out,
            )
    _print_ranking(outcome)
    if outcome.failed:
        console.print(f"[bold red]{outcome.failed} trial(s) failed[/] after their retries (listed in the report)")
        raise typer.Exit(3)


def status(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    sets: SetOption = None,
) -> None:
    """Per arm and phase: trials done / running / failed / pending and the best search metric so far (MLflow)."""
    from study.orchestrate.pipeline import open_tracker
    from study.orchestrate.status import study_status
    from study.orchestrate.validation import study_paths

    with user_errors():
        spec_path, study_spec, _ = load_spec(spec, storage, root, tracking_uri, None, sets)
        paths = study_paths(study_spec)
        tracker = open_tracker(study_spec, paths, str(spec_path.resolve().parent))
        rows = study_status(study_spec, tracker)
    if rows is None:
        console.print(f"study {tracker.name}: not started (no experiment in {paths.tracking_uri})")
        raise typer.Exit(1)
    table = Table(title=f"study {tracker.name}")
    best_col = "best val" if study_spec.search.metric == "val_acc" else "best agr"
    for col in ("arm", "phase", "done", "running", "failed", "pending", "stopped", best_col):  # fits 80 columns
        table.add_column(col, justify="left" if col in ("arm", "phase") else "right", no_wrap=True)
    for r in rows:
        best = f"{r.best:.2%}" if r.best is not None else "-"
        cells = (r.done, r.running, r.failed, r.pending, r.stopped_early)
        table.add_row(r.arm, r.phase, *(str(c) for c in cells), best)
    console.print(table)


def trial(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    arm: Annotated[str, typer.Option(help="Arm to distill on.")],
    storage: StorageOption = None,
    root: RootOption = None,
    sets: SetOption = None,
) -> None:
    """Run one KD trial of an arm with the spec's default hyperparameters (no Ray Tune, no MLflow)."""
    from study.config import SpecError

    with user_errors():
        spec_path, study_spec, _ = load_spec(spec, storage, root, None, None, sets)
        try:
            chosen = study_spec.arm(arm)  # an unknown arm is a user error (did you mean ...), before torch loads
        except SpecError as err:
            raise SpecError(f"{spec_path}: --arm: {err}") from None
        from study.distill.trial import KDTrial, TrialPaths
        from study.orchestrate.validation import study_paths

        paths = study_paths(study_spec)
        cards_dir = str(spec_path.resolve().parent)  # card paths in a spec are relative to its folder
        kd = KDTrial(study_spec, chosen, TrialPaths(paths.teacher, paths.shards, cards_dir, teachers=paths.teachers))

        def show(metrics: dict[str, float], _: dict) -> None:
            console.print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        kd.run(show)


def register(app: typer.Typer) -> None:
    for command in (quickstart, run, status, trial):
        app.command()(command)
