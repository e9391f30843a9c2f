"""The study's steps in order: validate, build surrogates, measure criteria, run the sweep, report.

`kd-study run` and `kd-study quickstart` both drive these; each step skips what is already done, so a rerun
resumes and a finished study reruns in seconds without adding MLflow runs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from study import environment, storage
from study.config import ArmSpec, CardSpec, SpecError, StudySpec, uncrossed_name
from study.criteria.measures import FeatureMoments
from study.criteria.populations import ArmCriteria, measure_arm, val_moments
from study.data import shards
from study.data.build import build_surrogate
from study.data.build_plan import BuildResult
from study.data.eval_splits import build_eval_shards
from study.data.mixture import uses_teacher
from study.data.shards import WorkRecord
from study.data.shards.cache import ShardCacheSpec
from study.device import pick_device
from study.distill.trial import TrialPaths, surrogate_name
from study.orchestrate.presweep import (
    build_on_cluster,
    built_by,
    cluster_address,
    measure_on_cluster,
    node_tags,
    offline_surrogates,
)
from study.orchestrate.progress import NoProgress, ProgressSink
from study.orchestrate.sweep import run_sweep
from study.orchestrate.teacher_training import train_teacher
from study.orchestrate.validation import (
    StudyPaths,
    check_teacher_meta,
    load_cards,
    plan_study,
    total_trials,
)
from study.report.study_report import Report, write_report
from study.teacher.checkpoint import META, NO_EVAL_DATA, Teacher, TeacherError, TeacherMeta, load_meta, load_teacher
from study.tracking import ARM, OUTCOME, OUTCOMES, PHASE, StudyTracker, short_http_retries

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    paths: StudyPaths
    teachers: dict[str, TeacherMeta]  # by teacher id (`teacher` in a one-teacher study)
    builds: dict[str, BuildResult] = field(default_factory=dict)
    sweep_ran: bool = False
    report: Report | None = None
    report_uri: str = ""
    trial_outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Trials that raised after their retries (diverged trials are results, not failures)."""
        return self.trial_outcomes.get("failed", 0)


def study_content(
    cards: dict[str, CardSpec],
    metas: TeacherMeta | dict[str, TeacherMeta],
    arm_teachers: dict[str, str] | None = None,
) -> dict[str, object]:
    """What the spec names but does not contain, for the science hash: the teachers' weights, each card's
    normalised content (defaults filled in, so formatting and comments do not count) and generator version.

    `metas` by teacher id; `arm_teachers` maps each arm to its teacher's id (a multi-teacher study). A one-teacher
    study's content is what it was before multi-teacher studies existed, so its experiment name is unchanged."""
    from study.data.generators.registry import create_generator
    from study.data.mixture import component_cards

    metas = {"teacher": metas} if isinstance(metas, TeacherMeta) else metas
    arm_teachers = arm_teachers or {}
    first = next(iter(metas.values()))

    def version(card: CardSpec, meta: TeacherMeta) -> str | None:
        if card.kind == "generated" and card.generator:
            return create_generator(card.generator, card.params, reference_stats=(meta.mean, meta.std)).version
        return None

    content: dict[str, object] = (
        {"teacher_weights_sha256": first.weights_sha256}
        if len(metas) == 1 and not arm_teachers
        else {"teachers_weights_sha256": {tid: m.weights_sha256 for tid, m in sorted(metas.items())}}
    )
    for arm, card in sorted(cards.items()):
        meta = metas.get(arm_teachers.get(arm, ""), first)
        # a mixture's snapshot holds its resolved components' cards; their generator versions count too
        entry: dict[str, object] = {"card": card.model_dump(mode="json"), "generator_version": version(card, meta)}
        if card.kind == "mixture":
            entry["component_generator_versions"] = [version(c, meta) for c in component_cards(card)]
        content[f"card.{arm}"] = entry
    return content


def build_surrogates(
    cards: dict[str, CardSpec],
    paths: StudyPaths,
    meta: TeacherMeta,
    progress: ProgressSink,
    workers: int = 1,
    built: set[str] | frozenset[str] = frozenset(),
) -> dict[str, BuildResult]:
    """Build every card not in `built` (cards another teacher of the study already built: they do not depend on
    the teacher, `load_cards` renamed those that do)."""
    results: dict[str, BuildResult] = {}
    for card in {c.name: c for c in cards.values() if c.name not in built}.values():
        key = f"build:{card.name}"
        progress.task(key, f"surrogate {card.name}", None)
        results[card.name] = build_surrogate(
            card,
            paths.shards,
            reference_stats=(meta.mean, meta.std),
            teacher_id=meta.teacher_id,
            teacher=paths.teacher if uses_teacher(card) else None,
            workers=workers,
            on_shard=lambda done, total, k=key: progress.update(k, done, total),
            replace_stale=True,
        )
    return results


def build_perturbed_surrogates(
    spec: StudySpec, cards: dict[str, CardSpec], paths: StudyPaths, meta: TeacherMeta, progress: ProgressSink
) -> dict[str, BuildResult]:
    """The derived surrogate of every offline-perturbed arm that lacks one (once per teacher x surrogate x attack)."""
    from study.data.perturb import build_perturbed

    results: dict[str, BuildResult] = {}
    for name, (arm, card) in offline_surrogates(spec, cards, meta.teacher_id).items():
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
    eval_root: str | None = None,
    teacher_uri: str | None = None,
    progress_span: tuple[int, int] | None = None,
) -> None:
    """Parent run per arm with card params, raw-pool, built-set and trained-batch criteria and artifacts, measured once
    per arm (the trained sample's size in the run's `kd_study.criteria.trained.*` tags).

    `eval_root` holds the teacher's val split for the Fréchet reference (else it is loaded from its dataset).
    With `teacher_uri` (a study on a cluster) the arms are measured as Ray tasks (`presweep.measure_on_cluster`),
    else one after another in this process."""
    # (arms measured before these, arms in all): one bar across the teachers of a multi-teacher study
    before, total = progress_span or (0, len(spec.arms))
    if before == 0:
        progress.task("criteria", "criteria (teacher forward passes)", total)
    points = surrogate_points(spec, cards)
    reference: list[FeatureMoments | None] = []
    measured = before
    todo: list[tuple[ArmSpec, CardSpec, BuildResult]] = []
    runs: dict[str, str] = {}

    def log_criteria(arm: ArmSpec, found: ArmCriteria, where: WorkRecord | None) -> None:
        build = builds[surrogate_name(spec, arm, cards[arm.name], teacher.meta.teacher_id)]
        run_id = runs[arm.name]
        tracker.log_arm_metrics(run_id, found.logged_metrics())
        files = {"manifest.json": build.manifest.model_dump_json(indent=2).encode(), **found.artifacts}
        if arm.perturbation.mode == "offline":
            files.pop("perturbation_histograms.json", None)
        tracker.log_arm_artifacts(run_id, files)
        if tags := node_tags(built_by(build.manifest), where) | found.tags:
            tracker.tag_arm(run_id, tags)
        nonlocal measured
        measured += 1
        progress.update("criteria", measured)

    for arm in spec.arms:
        card = cards[arm.name]
        image_set = surrogate_name(spec, arm, card, teacher.meta.teacher_id)
        build = builds[image_set]
        selection = build.manifest.selection
        params = {
            "surrogate": card.name,
            "image_set": image_set,
            "surrogate_point": points[arm.name],
            "kind": card.kind,
            "generator": card.generator or "",
            "source": card.source.name if card.source else "",
            "card_params": card.params,
            "count": arm.count or build.manifest.count,
            "amount_of": arm.amount_of or "",
            # by the card names the user wrote: a per-teacher build's `@teacher` is not allowed in a param key
            "components": {uncrossed_name(r.name): r.weight for r in build.manifest.components or []},
            "labels": arm.labels,
            "teacher": teacher.meta.teacher_id,
            "teacher_dataset": teacher.meta.dataset,  # the report's in-domain rule, per teacher
            "arm_train": arm.train,
            "perturbation": arm.perturbation.model_dump(),
            # "not balanced (k of K classes filled)" when the teacher scan hit its ceiling; the report marks it
            "selection": selection.label() if selection is not None else "",
            "selection_achieved": selection.achieved if selection is not None else [],
        }
        run_id = tracker.arm_run(arm.name, params)  # tagged with its teacher's id (`kd_study.teacher`)
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
        runs[arm.name] = run_id
        if "criteria.raw.class_entropy" in logged:
            measured += 1
            progress.update("criteria", measured)
        elif teacher_uri is not None:
            todo.append((arm, card, build))
        else:
            if not reference:
                reference.append(val_moments(teacher, eval_root))
            log_criteria(arm, measure_arm(spec, arm, card, build, teacher, reference[0]), None)
    if teacher_uri is not None:
        measure_on_cluster(spec, todo, teacher_uri, eval_root, log_criteria)


def publish_report(
    tracker: StudyTracker,
    paths: StudyPaths,
    teacher: TeacherMeta | None,
    title: str,
    out: Path | None = None,
    expected_trials: int | None = None,
    metric: str = "val_acc",
) -> tuple[Report, str]:
    """Write the report to `<root>/report` and return it with that URI; with `out`, also a local copy there.

    With an S3 root the files are written in a temporary folder and uploaded, so nothing stays on the machine
    that ran the driver (a batch job's disk goes away); `out` is the way to keep a local copy.
    """
    kwargs = {
        "teacher_accuracy": teacher.test_accuracy if teacher else None,
        "title": title,
        "teacher": teacher,
        "expected_trials": expected_trials,
        "metric": metric,
    }
    if not storage.is_s3(paths.report_dir):
        report = write_report(tracker, Path(paths.report_dir), **kwargs)
        record_results(tracker, report, Path(paths.report_dir))
        if out is not None and Path(out).resolve() != Path(paths.report_dir).resolve():
            shutil.copytree(paths.report_dir, out, dirs_exist_ok=True)
        return report, paths.report_dir
    with tempfile.TemporaryDirectory(prefix="kd-report-") as tmp:
        report = write_report(tracker, Path(tmp), **kwargs)
        record_results(tracker, report, Path(tmp))
        for file in sorted(Path(tmp).rglob("*")):
            if file.is_file():
                storage.upload_file(file, storage.join(paths.report_dir, file.relative_to(tmp).as_posix()))
        if out is not None:
            shutil.copytree(tmp, out, dirs_exist_ok=True)
            local = Path(out)
            report = replace(
                report,
                markdown=local / report.markdown.name,
                html=local / report.html.name,
                parquet=local / report.parquet.name,
                correlations=local / report.correlations.name if report.correlations else None,
                plots=[local / p.name for p in report.plots],
            )
    return report, paths.report_dir


def arm_results(ranking: pd.DataFrame) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Per arm, the report's result as numbers (its score's mean and interval, rank, trial counts by outcome) and
    its basis (final seeds or the best search trial)."""
    results: dict[str, dict[str, float]] = {}
    basis: dict[str, str] = {}
    for rank, row in ranking.iterrows():
        values = {"rank": float(rank)}
        for key, value in row.items():
            if key in ("arm", "surrogate", "basis", "ranked_by") or isinstance(value, str | bool):
                continue
            if value is not None and value == value:  # NaN: no interval with one trial, nothing to log
                values[str(key)] = float(value)
        results[str(row["arm"])] = values
        basis[str(row["arm"])] = f"{row.get('basis', '')}; score {row.get('ranked_by', '')}"
    return results, basis


def record_results(tracker: StudyTracker, report: Report, folder: Path) -> None:
    """The study's answer where the MLflow UI shows it: each arm's result on its parent run, the spec and the
    report folder as artifacts of the study run."""
    results, basis = arm_results(report.ranking)
    tracker.log_arm_results(results, basis)
    tracker.log_study(folder)


def trial_outcomes(tracker: StudyTracker) -> dict[str, int]:
    """How many trial runs ended with each `kd_study.outcome` (runs without one have not ended)."""
    counts: dict[str, int] = {}
    for run in tracker.trial_runs():
        outcome = run.data.tags.get(OUTCOME, "unfinished")
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def sweep_complete(spec: StudySpec, tracker: StudyTracker) -> bool:
    """Whether every trial the sweep will ever run has ended, so that a rerun skips Tune altogether.

    Counted per arm from the store: `trials_per_arm` search trials with an outcome, then the final phase the
    searcher queues for the arm (`PerArmSearch`): `seeds` reruns of each of its best `top_k` search trials that
    completed their budget with a finite search metric. An arm whose search trials all diverged, failed or stopped
    early queues no final trial; counting against `total_trials` would call such a study unfinished forever, and
    every rerun would re-enter Tune.
    """
    runs = tracker.trial_runs()
    metric = spec.search.metric
    for arm in spec.arms:
        ended = [r for r in runs if r.data.tags.get(ARM) == arm.name and r.data.tags.get(OUTCOME) in OUTCOMES]
        search = [r for r in ended if r.data.tags.get(PHASE, "search") == "search"]
        if len(search) < spec.search.trials_per_arm:
            return False
        if spec.final is None:
            continue
        eligible = sum(
            r.data.tags.get(OUTCOME) == "completed" and math.isfinite(r.data.metrics.get(metric, math.nan))
            for r in search
        )
        if len(ended) - len(search) < min(spec.final.top_k, eligible) * spec.final.seeds:
            return False
    return True


def check_arm_sizes(spec: StudySpec, builds: dict[str, BuildResult], names: dict[str, str], where: str) -> None:
    """An empty surrogate is an error; one smaller than a batch works (its batches repeat images) but is
    worth a warning, since every batch then holds duplicates."""
    for i, arm in enumerate(spec.arms):
        build = builds[names[arm.name]]
        images = min(arm.count or build.manifest.count, build.manifest.count)
        if build.manifest.count == 0:
            raise SpecError(f"{where}: arms.{i} ('{arm.name}'): surrogate {build.root} holds 0 images")
        if arm.count and arm.count > build.manifest.count:
            field = f"arms.{i}.count" if not arm.amount_of else f"counts of arm '{arm.amount_of}'"
            raise shards.ShardError(
                f"{build.root}: {field}: arm '{arm.name}' wants {arm.count} images, it holds {build.manifest.count}"
            )
        batch = spec.train_for(arm).batch_size
        if images < batch:
            log.warning(
                "arm '%s' has %d images, fewer than one batch of %d: its batches repeat images", arm.name, images, batch
            )


def check_held_out(spec: StudySpec, builds: dict[str, BuildResult], names: dict[str, str], where: str) -> None:
    """With `search.metric: agreement` every arm must keep training images beside its held-out slice."""
    if spec.search.metric != "agreement":
        return
    for i, arm in enumerate(spec.arms):
        manifest = builds[names[arm.name]].manifest
        images = min(arm.count or manifest.count, manifest.count)
        if spec.search.agreement_images >= images:
            raise SpecError(
                f"{where}: search.agreement_images ({spec.search.agreement_images}) must be below arms.{i} "
                f"('{arm.name}') image count {images}: the held-out slice comes out of the arm's own images"
            )


def ensure_teacher(spec: StudySpec, paths: StudyPaths, progress: ProgressSink) -> TeacherMeta:
    """The study's teacher meta: imported from `teacher.weights` or trained (`teacher.train: true`) when missing.

    Training is opt-in, so a typo in `teacher.uri` stops here instead of starting a long training. An existing
    teacher made for another arch or dataset than the spec sets is an error naming both.
    """
    t = spec.teacher
    if t.dataset_root is not None:  # like teacher.uri and teacher.weights: relative to the study root
        t = t.model_copy(update={"dataset_root": storage.resolve(t.dataset_root, paths.root)})
    if not storage.exists(storage.join(paths.teacher, META)):
        if t.weights is not None:
            from study.orchestrate.teacher_import import ImportOptions, import_teacher

            options = ImportOptions(
                arch=t.arch,
                classes=t.classes,
                image_size=t.image_size,
                mean=t.mean,
                std=t.std,
                eval_dataset=None if t.dataset == NO_EVAL_DATA else t.dataset,
                eval_root=t.dataset_root,
                eval_params=t.params,
                fine_grained=t.fine_grained,
            )
            progress.task("teacher", f"importing teacher {t.arch} from {t.weights}", None)
            import_teacher(storage.resolve(t.weights, paths.root), paths.teacher, options)
        elif t.train:
            progress.task("teacher", f"teacher {t.arch} on {t.dataset}", t.epochs)
            train_teacher(t, paths.teacher, on_epoch=lambda e, n, _loss: progress.update("teacher", e, n))
    try:
        meta = load_meta(paths.teacher)
    except TeacherError as err:
        raise SpecError(
            f"{err}\n  (the spec's teacher.uri is '{t.uri}'; set teacher.train: true to train it, "
            "or teacher.weights to import one)"
        ) from None
    check_teacher_meta(spec, meta, paths.teacher)
    return meta


def run_study(
    spec: StudySpec,
    root: str | None = None,
    progress: ProgressSink | None = None,
    cards_dir: str | None = None,
    build_workers: int = 1,
    report_out: Path | None = None,
    spec_path: str | None = None,
) -> StudyOutcome:
    """Everything after the teacher: build what is missing, criteria, sweep (resumed if interrupted), report.

    The study always ends with its report: failed and diverged trials are outcomes recorded in MLflow and listed
    there (`StudyOutcome.failed` tells the CLI to exit non-zero). Everything checkable is checked before the
    first build (`study.orchestrate.validation.plan_study`): the spec, the cards (resolved against `cards_dir`,
    default: the spec file's folder), the tracking URI, the teacher and the manifests that exist.
    """
    progress = progress or NoProgress()
    where = spec_path or f"study '{spec.name}'"
    if cards_dir is None and spec_path is not None:
        cards_dir = str(Path(spec_path).resolve().parent)
    plan = plan_study(spec, where, cards_dir, root)  # what `kd-study validate` checks, before any work
    paths, cards = plan.paths, plan.cards
    # one view per teacher (a one-teacher study is its own): its teacher, its arms, its cards
    views = [(tid, spec.for_teacher(tid), paths.for_teacher(tid)) for tid in spec.teacher_ids]
    metas: dict[str, TeacherMeta] = {}
    teachers: dict[str, Teacher] = {}
    for tid, view, view_paths in views:
        metas[tid] = ensure_teacher(view, view_paths, progress)
        try:
            teachers[tid] = load_teacher(view_paths.teacher, pick_device())
        except TeacherError as err:
            assert view.teacher is not None
            raise SpecError(f"{err}\n  ({where}: teacher.uri is '{view.teacher.uri}')") from None
    outcome = StudyOutcome(paths, metas)
    on_cluster = cluster_address(spec) is not None
    for tid, view, view_paths in views:
        meta, view_cards = metas[tid], {a.name: cards[a.name] for a in view.arms}
        if on_cluster:  # Ray tasks across the cluster (study.orchestrate.presweep)
            found = build_on_cluster(view, view_cards, paths.shards, view_paths.teacher, meta, progress, outcome.builds)
            outcome.builds.update(found)
        else:
            built = set(outcome.builds)
            outcome.builds.update(build_surrogates(view_cards, view_paths, meta, progress, build_workers, built))
            outcome.builds.update(build_perturbed_surrogates(view, view_cards, view_paths, meta, progress))
    names = {
        a.name: surrogate_name(spec, a, cards[a.name], metas[a.teacher or "teacher"].teacher_id) for a in spec.arms
    }
    check_arm_sizes(spec, outcome.builds, names, where)
    check_held_out(spec, outcome.builds, names, where)
    for meta in metas.values():
        if meta.has_eval_data:
            build_eval_shards(meta, paths.eval_root)
    short_http_retries()
    tracker = StudyTracker(paths.tracking_uri, spec, content=study_content(cards, metas, arm_teachers(spec)))
    here = environment.probe()
    tracker.record_environment(environment.fingerprint(here), here)
    measured = 0
    for tid, view, view_paths in views:
        view_cards = {a.name: cards[a.name] for a in view.arms}
        cluster_teacher = view_paths.teacher if on_cluster else None
        span, measured = (measured, len(spec.arms)), measured + len(view.arms)
        record_arms(
            view, view_cards, outcome.builds, teachers[tid], tracker, progress, paths.eval_root, cluster_teacher, span
        )
    total = total_trials(spec)
    progress.task("sweep", f"KD trials ({len(spec.arms)} arms x {spec.search.trials_per_arm})", total)
    if not sweep_complete(spec, tracker):
        if not storage.is_s3(paths.tune_dir):
            Path(paths.tune_dir).mkdir(parents=True, exist_ok=True)
        trial_paths = TrialPaths(
            teacher=paths.teacher,
            shards_root=paths.shards,
            cards=cards,
            eval_root=paths.eval_root if all(m.has_eval_data for m in metas.values()) else None,
            cache=ShardCacheSpec.from_settings(spec.storage.cache, spec.storage.cache_max_gb),
            teachers=paths.teachers if spec.teachers else {},
        )
        run_sweep(spec, trial_paths, paths.tune_dir, tracker, lambda done, t: progress.update("sweep", done, t))
        outcome.sweep_ran = True
    tracker.set_arm_terminated()
    progress.update("sweep", total, total)
    outcome.trial_outcomes = trial_outcomes(tracker)
    only = next(iter(metas.values())) if len(metas) == 1 else None  # the report's teacher line: one teacher only
    outcome.report, outcome.report_uri = publish_report(
        tracker, paths, only, spec.name, report_out, total, metric=spec.search.metric
    )
    return outcome


def arm_teachers(spec: StudySpec) -> dict[str, str]:
    """Each arm's teacher id in a multi-teacher study; empty for a one-teacher study (its content is unchanged)."""
    return {a.name: a.teacher for a in spec.arms if a.teacher is not None}


def open_tracker(spec: StudySpec, paths: StudyPaths, cards_dir: str | None = None) -> StudyTracker:
    """The tracker of an existing study (its experiment name needs the teachers' and the cards' contents)."""
    metas = {}
    for tid in spec.teacher_ids:
        view = spec.for_teacher(tid)
        assert view.teacher is not None
        try:
            metas[tid] = load_meta(paths.for_teacher(tid).teacher)
        except TeacherError as err:
            raise SpecError(f"{err}\n  (the spec's teacher.uri is '{view.teacher.uri}')") from None
    content = study_content(load_cards(spec, cards_dir), metas, arm_teachers(spec))
    return StudyTracker(paths.tracking_uri, spec, content=content)
