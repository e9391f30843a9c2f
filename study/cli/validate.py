"""`kd-study validate / cards / specs`: check a study in a second and show its plan; list what is bundled."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from study.cli.console import console, user_errors
from study.cli.options import RootOption, SetOption, StorageOption, TrackingOption, load_spec


def check(spec: str, storage: str | None, root: str | None, tracking_uri: str | None, sets: list[str] | None):
    """Load the spec and check everything `run` checks before work (`study.orchestrate.validation`)."""
    from study.orchestrate.validation import plan_study

    spec_path, study_spec, tracking_from = load_spec(spec, storage, root, tracking_uri, None, sets)
    where = str(spec_path)
    plan = plan_study(study_spec, where, str(spec_path.resolve().parent), tracking_field=tracking_from)
    return spec_path, study_spec, plan


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "all (known once built)"


def print_plan(plan) -> None:
    spec, paths = plan.spec, plan.paths
    console.print(f"[bold]study {spec.name}[/] ({plan.where}): ok", soft_wrap=True)
    for tid, t in plan.teachers.items():
        state = {"present": "present", "train": "will be trained", "import": "will be imported"}[t.action]
        accuracy = ""
        if t.meta is not None and t.meta.test_accuracy is not None:
            accuracy = f", test acc {t.meta.test_accuracy:.1%}"
        label = "teacher" if len(plan.teachers) == 1 else f"teacher {tid}"
        console.print(f"{label}: {t.arch} on {t.dataset}, {state}{accuracy} ({t.uri})", soft_wrap=True)
    console.print(f"student: {spec.student.arch}", soft_wrap=True)
    console.print(f"arms ({len(spec.arms)}):", soft_wrap=True)
    for a in plan.arms:
        arm = a.arm
        extras = [f"perturbation {arm.perturbation.mode}"] if arm.perturbation.mode != "none" else []
        extras += [f"{arm.labels} labels"] if arm.labels != "soft" else []
        extras += [f"train {arm.train}"] if arm.train else []
        line = f"  {arm.name}: card {a.card.name} ({a.card.kind}), images {_count(a.images)}"
        console.print(line + "".join(f", {e}" for e in extras), soft_wrap=True)
    budget = spec.budget
    if budget.mode == "images":
        per_trial = f"{budget.images:,} images per trial, reported every {budget.report_every:,}"
    else:
        per_trial = (
            f"{budget.epochs} epochs of each arm's images per trial, reported every {budget.report_every_epochs}"
        )
    console.print(f"budget: {per_trial} ({budget.reports} reports)", soft_wrap=True)
    final = ""
    if spec.final is not None:
        final = f", final {plan.final_trials} ({spec.final.top_k} config(s) x {spec.final.seeds} seeds per arm)"
    searched = ", ".join(spec.search.space) or "nothing"
    console.print(
        f"trials: search {plan.search_trials} ({spec.search.trials_per_arm} per arm, metric {spec.search.metric}, "
        f"searching {searched}){final}, total {plan.total_trials}",
        soft_wrap=True,
    )
    console.print("surrogates:", soft_wrap=True)
    for s in plan.surrogates.values():
        note = {"reuse": "built, reused", "build": "will be built", "rebuild": "will be rebuilt (card changed)"}
        console.print(f"  {s.card}: {note[s.action]}, images {_count(s.images)} ({s.uri})", soft_wrap=True)
    for arm in spec.arms:
        if arm.perturbation.mode == "offline":
            console.print(f"  {arm.name}: its perturbed surrogate is built per teacher when missing", soft_wrap=True)
    console.print(
        f"where: root {paths.root}; shards {paths.shards}; Tune {paths.tune_dir}; report {paths.report_dir}; "
        f"MLflow {paths.tracking_uri}",
        soft_wrap=True,
    )
    rs = spec.resources
    console.print(
        f"resources per trial: cpu {rs.cpu:g}, gpu {rs.gpu:g}, max concurrent {rs.max_concurrent or 'unlimited'}",
        soft_wrap=True,
    )


def validate(
    spec: Annotated[str, typer.Argument(help="Study spec: a YAML path or a bundled name (e.g. quickstart).")],
    storage: StorageOption = None,
    root: RootOption = None,
    tracking_uri: TrackingOption = None,
    sets: SetOption = None,
) -> None:
    """Check everything `run` checks before work, write nothing, and print the plan. Exits 2 on a user error."""
    start = time.perf_counter()
    with user_errors():
        _, _, plan = check(spec, storage, root, tracking_uri, sets)
    print_plan(plan)
    console.print(f"checked in {time.perf_counter() - start:.1f} s", soft_wrap=True)


def cards() -> None:
    """List the bundled surrogate cards, one a line: name, kind, description."""
    from study.config import load_card
    from study.resources import bundled_dir, bundled_names

    with user_errors():
        for name in bundled_names("datasets"):
            card = load_card(bundled_dir("datasets") / f"{name}.yaml")
            description = " ".join(card.description.split())
            console.print(f"{name:34} {card.kind:9} {description}", soft_wrap=True, highlight=False)


def specs() -> None:
    """List the bundled study specs, one a line: name, arms, teacher."""
    from study.config import load_study
    from study.resources import bundled_dir, bundled_names

    with user_errors():
        for name in bundled_names("tune_spaces"):
            s = load_study(bundled_dir("tune_spaces") / f"{name}.yaml")
            views = [s.for_teacher(tid).teacher for tid in s.teacher_ids]
            teachers = ", ".join(f"{t.arch} on {t.dataset}" for t in views if t is not None)
            console.print(
                f"{name:22} {len(s.arms)} arms, teacher{'s' if len(views) > 1 else ''} {teachers}, "
                f"student {s.student.arch}",
                soft_wrap=True,
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    for command in (validate, cards, specs):
        app.command()(command)
