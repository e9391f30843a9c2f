"""Build a card into shards: deterministic from its seed, parallel, resumable.

Images are cut into blocks (`images_per_sample`) and blocks into shards (`samples_per_shard`); the plan depends only
on the card and the count, so a rerun finds the same shard boundaries and keeps every shard a killed build finished.
Labelled real data is stored class-interleaved, so the first N images are a class-fair subset. A card with
`balance` is first filtered through the teacher (`study.data.balance`); its kept images are stored class-interleaved
by teacher prediction, each block's json carrying the candidate indices and teacher predictions.

Shards are written by one task each: in this process, in a `spawn` process pool (`workers`), or as Ray tasks on a
cluster (`ray_address`). Spawn, not fork: the parent may hold threads (Ray, torch) or an OpenGL context (Mesa
hangs in a forked child of a process that rendered shaders).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

from study import storage
from study.config import CardSpec
from study.data import shards
from study.data.balance import ScanProgress, Selection, load_selection, save_selection, scan, scan_order
from study.data.build_plan import BlockPlan, BuildResult, ReferenceStats, plan_shards, stats_record
from study.data.images import LabelledImages, class_interleaved_order
from study.data.sources.registry import load_source
from study.data.work_records import merged, record_since, recording
from study.teacher.checkpoint import Teacher, TeacherMeta, load_meta, load_teacher

log = logging.getLogger(__name__)


def _generate_ids(generator: Any, seed: int, ids: list[int], image_size: int) -> np.ndarray:
    """Generator images `ids` in the given order; consecutive runs are rendered in one call (block contract)."""
    out, i = [], 0
    while i < len(ids):
        j = i + 1
        while j < len(ids) and ids[j] == ids[j - 1] + 1:
            j += 1
        out.append(generator.generate(seed, ids[i], j - i, image_size))
        i = j
    return np.concatenate(out)


def write_shard_task(
    card_json: str,
    root: str,
    index: int,
    first_block: int,
    blocks: list[BlockPlan],
    reference_stats: ReferenceStats | None,
    data: LabelledImages | None = None,
) -> shards.ShardInfo:
    """Write shard `index`: one task of a build, run here, in a spawned process or as a Ray task.

    Images come from `data` (real cards) or are rendered from the card's generator; a block's json holds
    `start` (its stored position), `labels` for labelled real data and, for teacher-filtered cards, `candidates`
    (candidate indices) and `teacher_predictions`.
    """
    card = CardSpec.model_validate_json(card_json)
    generator = None
    if data is None:
        from study.data.generators.registry import create_generator

        assert card.generator is not None
        generator = create_generator(card.generator, card.params, reference_stats=reference_stats)
    out = []
    for start, ids, preds in blocks:
        meta: dict[str, Any] = {"start": start}
        if data is not None:
            images = data.images[ids]
            if data.labels is not None:
                meta["labels"] = data.labels[ids].tolist()
        else:
            images = _generate_ids(generator, card.seed, ids, card.image_size)
        if preds is not None:
            meta["candidates"] = ids
            meta["teacher_predictions"] = preds
        out.append((images, meta))
    return shards.write_shard(root, index, out, first_block)


def load_real_source(card: CardSpec, count: int | None, interleave: bool = True) -> LabelledImages:
    """A real card's images: class-interleaved for shards, or in the source's stored order for a scan."""
    assert card.source is not None
    data = load_source(
        card.source.name,
        card.source.split,
        card.image_size,
        root=card.source.root,
        count=count,
        seed=card.seed,
        params=card.source.params,
    )
    if interleave and data.labels is not None:
        order = class_interleaved_order(data.labels)
        data = LabelledImages(data.images[order], data.labels[order], data.classes)
    if count is not None and len(data) > count:
        data = LabelledImages(data.images[:count], None if data.labels is None else data.labels[:count], data.classes)
    return data


def _resolve_teacher(teacher: Teacher | str | None) -> tuple[TeacherMeta | None, Callable[[], Teacher]]:
    """The teacher's meta now, the model only when a scan needs it (on CUDA when present)."""
    if teacher is None or isinstance(teacher, Teacher):
        return (teacher.meta if teacher else None), lambda: teacher  # type: ignore[return-value]
    from study.device import pick_device

    return load_meta(teacher), lambda: load_teacher(teacher, pick_device())


def _select(
    card: CardSpec,
    root: str,
    meta: TeacherMeta,
    get_teacher: Callable[[], Teacher],
    reference_stats: ReferenceStats | None,
    on_scan: ScanProgress | None,
) -> tuple[Selection, LabelledImages | None, bool]:
    """The persisted selection of this card and teacher, else a fresh scan (persisted before any shard is written)."""
    assert card.balance is not None
    snapshot = card.model_dump(mode="json")
    data = None
    if card.kind == "real":
        data = load_real_source(card, card.balance.candidates, interleave=False)  # the source's stored order
    if (selection := load_selection(root, meta.teacher_id, snapshot)) is not None:
        return selection, data, True
    if data is not None:
        budget = len(data)
        order = scan_order(card, budget)
        source = lambda start, n: data.images[order[start : start + n]]  # noqa: E731
    else:
        from study.data.generators.registry import create_generator

        assert card.generator is not None
        generator = create_generator(card.generator, card.params, reference_stats=reference_stats)
        budget = card.balance.candidate_ceiling(meta.num_classes)
        order = scan_order(card, budget)

        def source(start: int, n: int) -> np.ndarray:
            ids = order[start : start + n]
            by_id = np.argsort(ids, kind="stable")  # render in index order (consecutive runs at once), then unsort
            rendered = _generate_ids(generator, card.seed, ids[by_id].tolist(), card.image_size)
            return rendered[np.argsort(by_id, kind="stable")]

    selection = scan(source, budget, card.balance, get_teacher(), snapshot, on_scan, order=order)
    save_selection(root, selection)
    return selection, data, False


def _generator_version(card: CardSpec, reference_stats: ReferenceStats | None) -> str | None:
    if card.kind != "generated":
        return None
    from study.data.generators.registry import create_generator

    assert card.generator is not None
    return create_generator(card.generator, card.params, reference_stats=reference_stats).version


def _same_build(
    old: shards.Manifest,
    card: CardSpec,
    count: int | None,
    teacher_id: str | None,
    reference_stats: ReferenceStats | None,
    generator_version: str | None,
) -> bool:
    """Whether `old` holds what building `card` now would write (where it was built does not count)."""
    wanted = count
    if old.selection is not None and count is not None:
        wanted = min(count, old.selection.kept)
    same_teacher = card.balance is None or old.teacher == teacher_id
    same_stats = card.kind != "generated" or old.reference_stats == stats_record(reference_stats)
    same_images = old.card == card.model_dump(mode="json") and old.generator_version == generator_version
    return same_images and same_stats and (wanted is None or old.count == wanted) and same_teacher


def reusable_build(
    card: CardSpec, out_root: str, *, reference_stats: ReferenceStats | None, teacher_id: str | None
) -> BuildResult | None:
    """The finished build of a real or generated `card` that `build_surrogate` would reuse, else None (also for a
    mixture: its components decide). A cheap check (a manifest read and a presence check of its shards), so that a
    study on a cluster sends only the builds that have work to do."""
    root = storage.join(out_root, card.name)
    if card.kind not in ("real", "generated") or not storage.exists(storage.join(root, shards.MANIFEST)):
        return None
    old = shards.read_manifest(root)
    if not _same_build(old, card, card.count, teacher_id, reference_stats, _generator_version(card, reference_stats)):
        return None
    shards.check_present(root, old)
    return BuildResult(root, old, 0, len(old.shards), reused=True)


def build_surrogate(
    card: CardSpec,
    out_root: str,
    *,
    count: int | None = None,
    reference_stats: ReferenceStats | None = None,
    teacher_id: str | None = None,
    teacher: Teacher | str | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    on_scan: ScanProgress | None = None,
    replace_stale: bool = False,
    record_work: bool = False,
) -> BuildResult:
    """Build `card` under `<out_root>/<card.name>/` and return its manifest.

    `teacher` (a loaded `Teacher` or a teacher URI) is required by cards with `balance` and then also gives the
    manifest's teacher id and, unless `reference_stats` is given, the generators' reference mean/std. For a
    teacher-filtered card `count` caps the kept images (the first `count` in class-interleaved order).
    A `mixture` card builds its components first (`study.data.mixture`).
    `ray_address` runs one Ray task per shard (the Ray runtime already initialised in this process, else
    `ray.init(address=ray_address)`); on a multi-node cluster `out_root` must be storage every node reaches (s3://).
    `on_shard(done, total)` is called as shards finish and `on_scan(scanned, kept, budget)` as the teacher scans
    candidates (for progress bars). An existing manifest of the same card, count and teacher (and, for generated
    cards, the same reference mean/std: matched noise follows the teacher's statistics) is reused after a
    presence check; shards of a killed build are kept when their records match. A surrogate built from anything
    else is an error, or with `replace_stale` (the study pipeline) rebuilt in place.
    `record_work` (a build running as a Ray task) writes where its pieces ran into the manifest's `built_on`.
    """
    started = time.time()
    pieces: dict[str, shards.WorkRecord] | None = {} if record_work else None
    root = storage.join(out_root, card.name)
    count = count or card.count
    card_snapshot = card.model_dump(mode="json")
    meta, get_teacher = _resolve_teacher(teacher)
    if meta is not None:
        teacher_id = meta.teacher_id
        reference_stats = reference_stats or (meta.mean, meta.std)
    if card.kind == "mixture":
        from study.data.mixture import build_mixture

        return build_mixture(
            card, out_root, count=count, reference_stats=reference_stats, teacher_id=teacher_id, meta=meta,
            get_teacher=get_teacher, teacher=teacher, build_component=build_surrogate, workers=workers,
            ray_address=ray_address, on_shard=on_shard,
            replace_stale=replace_stale, record_work=record_work,
        )  # fmt: skip
    if card.balance is not None and meta is None:
        raise shards.ShardError(
            f"card '{card.name}': 'balance' selects images through a teacher; give one (kd-study data build --teacher)"
        )
    generator_version = _generator_version(card, reference_stats)
    if storage.exists(storage.join(root, shards.MANIFEST)):
        old = shards.read_manifest(root)
        if _same_build(old, card, count, teacher_id, reference_stats, generator_version):
            shards.check_present(root, old)
            if on_shard:
                on_shard(len(old.shards), len(old.shards))
            return BuildResult(root, old, 0, len(old.shards), reused=True)
        if not replace_stale:
            raise shards.ShardError(
                f"{root}: already holds a surrogate built from a different card, generator version, count, teacher "
                f"or reference statistics (count {old.count}, generator version {old.generator_version}, "
                f"teacher {old.teacher}); remove it or give the card another name"
            )
        log.warning("%s: built from another card, generator version, count, teacher or statistics; rebuilding", root)
        shards.forget_build(root, old)

    selection, selection_reused = None, False
    data: LabelledImages | None = None
    if card.kind not in ("real", "generated"):
        raise shards.ShardError(f"card '{card.name}': kind '{card.kind}' is not buildable by this command yet")
    if card.balance is not None:
        assert meta is not None
        with recording(pieces, "selection"):
            selection, data, selection_reused = _select(card, root, meta, get_teacher, reference_stats, on_scan)
        if selection_reused and pieces is not None:
            pieces.pop("selection")  # scanned by an earlier, killed build: its record is not this one's
        order = class_interleaved_order(np.asarray(selection.predictions, dtype=np.int64))[:count]
        kept_ids = [selection.candidates[i] for i in order]
        kept_preds: list[int] | None = [selection.predictions[i] for i in order]
        count, classes = len(kept_ids), meta.classes
        histogram = np.bincount(np.asarray(kept_preds, dtype=np.int64), minlength=len(classes)).tolist()
        channels = 3 if data is None else data.images.shape[3]
        labelled = data is not None and data.labels is not None
    elif card.kind == "real":
        data = load_real_source(card, count)
        count, channels = len(data), data.images.shape[3]
        labelled, classes = data.labels is not None, data.classes
        histogram = np.bincount(data.labels, minlength=len(classes)).tolist() if data.labels is not None else None
        kept_ids, kept_preds = list(range(count)), None
    else:
        if count is None:
            raise shards.ShardError(f"card '{card.name}': a generated card needs a 'count'")
        channels, labelled, classes, histogram = 3, False, [], None
        kept_ids, kept_preds = list(range(count)), None

    plan = plan_shards(count, card.images_per_sample, card.samples_per_shard)
    infos: dict[int, shards.ShardInfo] = {}
    for index in range(len(plan)):
        if (kept := shards.finished_shard(root, index)) is not None:
            infos[index] = kept
    kept_count = len(infos)
    todo = [i for i in range(len(plan)) if i not in infos]
    first_block = np.cumsum([0] + [len(p) for p in plan]).tolist()
    if on_shard:
        on_shard(len(infos), len(plan))

    def blocks_of(index: int) -> list[BlockPlan]:
        return [
            (start, kept_ids[start : start + n], None if kept_preds is None else kept_preds[start : start + n])
            for start, n in plan[index]
        ]

    def done(index: int, info: shards.ShardInfo) -> None:
        infos[index] = info
        if on_shard:
            on_shard(len(infos), len(plan))

    jobs = [(card.model_dump_json(), root, i, first_block[i], blocks_of(i), reference_stats) for i in todo]
    shards_started = time.time()
    if ray_address is not None and len(todo) > 1:  # one shard: a task would only add a worker's start-up
        work = _run_on_ray(jobs, data, ray_address, done)
        if pieces is not None:
            pieces["shards"] = merged(work)
    elif data is not None or workers <= 1 or len(todo) <= 1:
        # real data is already in this process: shipping it to workers costs more than writing it
        for job in jobs:
            done(job[2], write_shard_task(*job, data=data))
        if pieces is not None and todo:
            pieces["shards"] = record_since(shards_started)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(write_shard_task, *job): job[2] for job in jobs}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                # fail fast: finished shards are kept for the rerun, queued ones are not worth waiting for
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        if pieces is not None:
            pieces["shards"] = record_since(shards_started)  # this node's processes

    manifest = shards.Manifest(
        name=card.name,
        kind=card.kind,
        card=card_snapshot,
        generator_version=generator_version,
        seed=card.seed,
        count=count,
        image_size=card.image_size,
        channels=channels,
        images_per_sample=card.images_per_sample,
        labelled=labelled,
        classes=classes,
        class_histogram=histogram,
        teacher=teacher_id,
        reference_stats=stats_record(reference_stats) if card.kind == "generated" else None,
        selection=None if selection is None else selection.record,
        shards=[infos[i] for i in range(len(plan))],
        built_on=None if pieces is None else {**pieces, "build": record_since(started)},
    )
    shards.write_manifest(root, manifest)
    log.info("built %s: %d images in %d shards (%d kept)", root, count, len(plan), kept_count)
    return BuildResult(root, manifest, len(todo), kept_count, reused=False, selection_reused=selection_reused)


def _recorded_shard_task(*job: Any, data: LabelledImages | None) -> tuple[shards.ShardInfo, shards.WorkRecord]:
    started = time.time()
    return write_shard_task(*job, data=data), record_since(started)


def _run_on_ray(
    jobs: list[tuple], data: LabelledImages | None, address: str, done: Callable[[int, shards.ShardInfo], None]
) -> list[shards.WorkRecord]:
    """One Ray task per shard; real data goes once into the object store and is shared by every task. Returns
    where each shard was written."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=1)(_recorded_shard_task)
    data_ref = ray.put(data) if data is not None else None
    pending = {task.remote(*job, data=data_ref): job[2] for job in jobs}
    work = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        info, record = ray.get(ready[0])
        work.append(record)
        done(index, info)
    return work
