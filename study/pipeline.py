"""The study's steps in order: validate, build surrogates, measure criteria, run the sweep, report.

`kd-study run` and `kd-study quickstart` both drive these; each step skips what is already done, so a rerun
resumes and a finished study reruns in seconds without adding MLflow runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from study import storage
from study.config import ArmSpec, CardSpec, SpecError, StudySpec
from study.criteria import FeatureMoments
from study.data import shards
from study.data.build import BuildResult, build_surrogate
from study.device import pick_device
from study.distill.trial import TrialPaths, card_for_arm, surrogate_name
from study.populations import measure_arm, val_moments
from study.report import Report, write_report
from study.sweep import run_sweep, total_trials
from study.teacher import Teacher, TeacherError, TeacherMeta, load_meta, load_teacher
from study.tracking import StudyTracker

log = logging.getLogger(__name__)


class ProgressSink(Protocol):
    """What the pipeline tells a UI; the CLI implements it with rich, tests with nothing."""

    def task(self, key: str, description: str, total: int | None) -> None: ...
    def update(self, key: str, completed: int, total: int | None = None) -> None: ...


class NoProgress:
    def task(self, key: str, description: str, total: int | None) -> None:
        pass

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        pass


@dataclass(frozen=True)
class StudyPaths:
    root: str
    shards: str
    tune_dir: str
    teacher: str
    tracking_uri: str
    report_dir: str


def study_paths(spec: StudySpec, root: str | None = None) -> StudyPaths:
    """Resolve the spec's storage against `root` (or its own `storage.root`)."""
    base = storage.resolve(root or spec.storage.root)
    uri = spec.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + storage.resolve(uri[len("sqlite:///") :], base)
    return StudyPaths(
        root=base,
        shards=storage.resolve(spec.storage.shards, base),
        tune_dir=storage.resolve(spec.storage.tune, base),
        teacher=storage.resolve(spec.teacher.uri, base),
        tracking_uri=uri,
        report_dir=storage.resolve(f"report/{spec.name}", base),  # one folder per study sharing a root
    )


@dataclass
class StudyOutcome:
    paths: StudyPaths
    teacher: TeacherMeta
    builds: dict[str, BuildResult] = field(default_factory=dict)
    sweep_ran: bool = False
    report: Report | None = None


def load_cards(spec: StudySpec, cards_dir: str | None = None) -> dict[str, CardSpec]:
    """Every arm's card, validated (and its generator's params checked) before anything runs."""
    cards = {}
    for arm in spec.arms:
        card = card_for_arm(arm, cards_dir)
        if card.kind == "generated":
            from study.data.generators import create_generator

            assert card.generator is not None
            try:
                create_generator(card.generator, card.params, reference_stats=([0.5], [0.25]))
            except ValueError as err:
                raise SpecError(f"card '{card.name}' (arm '{arm.name}'): {err}") from None
        if arm.count and card.count and arm.count > card.count:
            raise SpecError(f"arm '{arm.name}': count {arm.count} exceeds card '{card.name}' count {card.count}")
        cards[arm.name] = card
    return cards


def build_surrogates(
    cards: dict[str, CardSpec], paths: StudyPaths, meta: TeacherMeta, progress: ProgressSink, workers: int = 1
) -> dict[str, BuildResult]:
    results: dict[str, BuildResult] = {}
    for card in {c.name: c for c in cards.values()}.values():
        key = f"build:{card.name}"
        progress.task(key, f"surrogate {card.name}", None)
        results[card.name] = build_surrogate(
            card,
            paths.shards,
            reference_stats=(meta.mean, meta.std),
            teacher_id=meta.teacher_id,
            teacher=paths.teacher if card.balance else None,
            workers=workers,
            on_shard=lambda done, total, k=key: progress.update(k, done, total),
        )
    return results


def build_perturbed_surrogates(
    spec: StudySpec, cards: dict[str, CardSpec], paths: StudyPaths, meta: TeacherMeta, progress: ProgressSink
) -> dict[str, BuildResult]:
    """The derived surrogate of every offline-perturbed arm that lacks one (once per teacher x surrogate x attack)."""
    from study.data.perturb import build_perturbed

    results: dict[str, BuildResult] = {}
    for arm in spec.arms:
        if arm.perturbation.mode != "offline":
            continue
        card = cards[arm.name]
        name = surrogate_name(spec, arm, card, meta.teacher_id)
        if name in results:
            continue
        key = f"perturb:{name}"
        progress.task(key, f"perturbed {name}", None)
        results[name] = build_perturbed(
            storage.join(paths.shards, card.name),
            paths.teacher,
            paths.shards,
            arm.perturbation,
            seed=spec.seed,
            name=name,
            ray_address=spec.resources.ray_address,
            on_shard=lambda done, total, k=key: progress.update(k, done, total),
        )
    return results


def surrogate_points(spec: StudySpec, cards: dict[str, CardSpec]) -> dict[str, bool]:
    """Per arm, whether it is its surrogate's point in the report's correlations (one point per image source).

    Arms of one card share a raw pool, so they would enter a correlation as copies of one point; the card's point
    is its plain arm (no perturbation, soft labels, all images), else its first arm in the spec.
    """
    chosen: dict[str, str] = {}
    for arm in spec.arms:
        plain = arm.perturbation.mode == "none" and arm.labels == "soft" and arm.count is None
        name = cards[arm.name].name
        if name not in chosen or (plain and not _is_plain(spec.arm(chosen[name]))):
            chosen[name] = arm.name
    return {arm.name: chosen[cards[arm.name].name] == arm.name for arm in spec.arms}


def _is_plain(arm: ArmSpec) -> bool:
    return arm.perturbation.mode == "none" and arm.labels == "soft" and arm.count is None


def record_arms(
    spec: StudySpec,
    cards: dict[str, CardSpec],
    builds: dict[str, BuildResult],
    teacher: Teacher,
    tracker: StudyTracker,
    progress: ProgressSink,
) -> None:
    """Parent run per arm with card params, raw-pool and built-set criteria and artifacts, measured once per arm."""
    progress.task("criteria", "criteria (teacher forward passes)", len(spec.arms))
    points = surrogate_points(spec, cards)
    reference: list[FeatureMoments | None] = []
    for i, arm in enumerate(spec.arms):
        card = cards[arm.name]
        image_set = surrogate_name(spec, arm, card, teacher.meta.teacher_id)
        build = builds[image_set]
        params = {
            "surrogate": card.name,
            "image_set": image_set,
            "surrogate_point": points[arm.name],
            "kind": card.kind,
            "generator": card.generator or "",
            "source": card.source.name if card.source else "",
            "card_params": card.params,
            "count": arm.count or build.manifest.count,
            "labels": arm.labels,
            "teacher": teacher.meta.teacher_id,
            "arm_train": arm.train,
            "perturbation": arm.perturbation.model_dump(),
        }
        run_id = tracker.arm_run(arm.name, params)
        logged, _ = tracker.run_data(run_id)
        if arm.perturbation.mode == "offline" and "perturbation.success_rate" not in logged:
            derived = build.manifest.card
            tracker.log_arm_metrics(
                run_id, {f"perturbation.{k}": derived[k] for k in ("success_rate", "attacked", "successes")}
            )
            tracker.log_arm_artifacts(
                run_id,
                {
                    "perturbation_histograms.json": json.dumps(
                        {k: derived[k] for k in ("histogram_before", "histogram_after", "attacked", "successes")}
                        | {"classes": teacher.meta.classes, "source": derived["source"]}
                    ).encode()
                },
            )
        if "criteria.raw.class_entropy" not in logged:
            if not reference:
                reference.append(val_moments(teacher))
            found = measure_arm(spec, arm, card, build, teacher, reference[0])
            tracker.log_arm_metrics(run_id, found.logged_metrics())
            files = {"manifest.json": build.manifest.model_dump_json(indent=2).encode(), **found.artifacts}
            if arm.perturbation.mode == "offline":
                files.pop("perturbation_histograms.json", None)
            tracker.log_arm_artifacts(run_id, files)
        progress.update("criteria", i + 1)


def sweep_complete(spec: StudySpec, tracker: StudyTracker) -> bool:
    finished = [r for r in tracker.trial_runs() if r.info.status == "FINISHED"]
    return len(finished) >= total_trials(spec)


def run_study(
    spec: StudySpec,
    root: str | None = None,
    progress: ProgressSink | None = None,
    cards_dir: str | None = None,
    build_workers: int = 1,
) -> StudyOutcome:
    """Everything after the teacher: build what is missing, criteria, sweep (resumed if interrupted), report."""
    progress = progress or NoProgress()
    paths = study_paths(spec, root)
    cards = load_cards(spec, cards_dir)
    try:
        meta = load_meta(paths.teacher)
    except TeacherError as err:
        raise SpecError(f"{err}\n  (the spec's teacher.uri is '{spec.teacher.uri}')") from None
    outcome = StudyOutcome(paths, meta)
    outcome.builds = build_surrogates(cards, paths, meta, progress, build_workers)
    outcome.builds.update(build_perturbed_surrogates(spec, cards, paths, meta, progress))
    for arm in spec.arms:
        build = outcome.builds[surrogate_name(spec, arm, cards[arm.name], meta.teacher_id)]
        if arm.count and arm.count > build.manifest.count:
            raise shards.ShardError(
                f"{build.root}: arm '{arm.name}' wants {arm.count} images, it holds {build.manifest.count}"
            )
    tracker = StudyTracker(paths.tracking_uri, spec)
    teacher = load_teacher(paths.teacher, pick_device())
    record_arms(spec, cards, outcome.builds, teacher, tracker, progress)
    total = total_trials(spec)
    progress.task("sweep", f"KD trials ({len(spec.arms)} arms x {spec.search.trials_per_arm})", total)
    if not sweep_complete(spec, tracker):
        Path(paths.tune_dir).mkdir(parents=True, exist_ok=True)
        trial_paths = TrialPaths(teacher=paths.teacher, shards_root=paths.shards, cards_dir=cards_dir)
        run_sweep(spec, trial_paths, paths.tune_dir, tracker, lambda done, t: progress.update("sweep", done, t))
        outcome.sweep_ran = True
    tracker.set_arm_terminated()
    progress.update("sweep", total, total)
    outcome.report = write_report(
        tracker, Path(paths.report_dir), meta.test_accuracy, title=spec.name, teacher=meta, expected_trials=total
    )
    return outcome
