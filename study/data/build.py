"""Build a card into shards: deterministic from its seed, parallel, resumable.

Images are cut into blocks (`images_per_sample`) and blocks into shards (`samples_per_shard`); the plan depends only
on the card and the count, so a rerun finds the same shard boundaries and keeps every shard a killed build finished.
Labelled real data is stored class-interleaved, so the first N images are a class-fair subset.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from study import storage
from study.config import CardSpec
from study.data import shards
from study.data.images import LabelledImages, class_interleaved_order
from study.data.real import load_source

log = logging.getLogger(__name__)

ReferenceStats = tuple[list[float], list[float]]


@dataclass(frozen=True)
class BuildResult:
    root: str
    manifest: shards.Manifest
    shards_written: int
    shards_kept: int
    reused: bool


def plan_shards(count: int, per_sample: int, per_shard: int) -> list[list[tuple[int, int]]]:
    """Shard -> list of (start, n) image ranges, one per block."""
    blocks = [(s, min(per_sample, count - s)) for s in range(0, count, per_sample)]
    return [blocks[i : i + per_shard] for i in range(0, len(blocks), per_shard)]


def _labelled_blocks(data: LabelledImages, ranges: list[tuple[int, int]]) -> list[tuple[np.ndarray, dict]]:
    out = []
    for start, n in ranges:
        meta: dict[str, Any] = {"start": start}
        if data.labels is not None:
            meta["labels"] = data.labels[start : start + n].tolist()
        out.append((data.images[start : start + n], meta))
    return out


def _generate_shard(
    card_json: str,
    root: str,
    index: int,
    ranges: list[tuple[int, int]],
    first_block: int,
    reference_stats: ReferenceStats | None,
) -> shards.ShardInfo:
    from study.data.generators import create_generator

    card = CardSpec.model_validate_json(card_json)
    assert card.generator is not None
    generator = create_generator(card.generator, card.params, reference_stats=reference_stats)
    blocks = [(generator.generate(card.seed, start, n, card.image_size), {"start": start}) for start, n in ranges]
    return shards.write_shard(root, index, blocks, first_block)


def _load_real(card: CardSpec, count: int | None) -> LabelledImages:
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
    if data.labels is not None:
        order = class_interleaved_order(data.labels)
        data = LabelledImages(data.images[order], data.labels[order], data.classes)
    if count is not None and len(data) > count:
        data = LabelledImages(data.images[:count], None if data.labels is None else data.labels[:count], data.classes)
    return data


def build_surrogate(
    card: CardSpec,
    out_root: str,
    *,
    count: int | None = None,
    reference_stats: ReferenceStats | None = None,
    teacher_id: str | None = None,
    workers: int = 1,
    on_shard: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Build `card` under `<out_root>/<card.name>/` and return its manifest.

    `on_shard(done, total)` is called as shards finish (for progress bars). An existing manifest of the same card
    and count is reused after a presence check; shards of a killed build are kept when their records match.
    """
    root = storage.join(out_root, card.name)
    count = count or card.count
    card_snapshot = card.model_dump(mode="json")
    if storage.exists(storage.join(root, shards.MANIFEST)):
        old = shards.read_manifest(root)
        if old.card == card_snapshot and (count is None or old.count == count):
            shards.check_present(root, old)
            if on_shard:
                on_shard(len(old.shards), len(old.shards))
            return BuildResult(root, old, 0, len(old.shards), reused=True)
        raise shards.ShardError(
            f"{root}: already holds a surrogate built from a different card or count "
            f"(count {old.count}); remove it or give the card another name"
        )

    generator_version = None
    if card.kind == "real":
        data = _load_real(card, count)
        count, channels = len(data), data.images.shape[3]
        labelled, classes = data.labels is not None, data.classes
        histogram = np.bincount(data.labels, minlength=len(classes)).tolist() if labelled else None
    elif card.kind == "generated":
        from study.data.generators import create_generator

        assert card.generator is not None
        generator = create_generator(card.generator, card.params, reference_stats=reference_stats)
        generator_version = generator.version
        if count is None:
            raise shards.ShardError(f"card '{card.name}': a generated card needs a 'count'")
        channels, labelled, classes, histogram = 3, False, [], None
    else:
        raise shards.ShardError(f"card '{card.name}': kind '{card.kind}' is not buildable by this command yet")

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

    if card.kind == "real":
        for index in todo:
            infos[index] = shards.write_shard(root, index, _labelled_blocks(data, plan[index]), first_block[index])
            if on_shard:
                on_shard(len(infos), len(plan))
    elif workers <= 1 or len(todo) <= 1:
        for index in todo:
            infos[index] = _generate_shard(
                card.model_dump_json(), root, index, plan[index], first_block[index], reference_stats
            )
            if on_shard:
                on_shard(len(infos), len(plan))
    else:
        # spawn, not fork: the parent may hold threads (Ray, torch) that fork would copy in a broken state
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(
                    _generate_shard, card.model_dump_json(), root, i, plan[i], first_block[i], reference_stats
                ): i
                for i in todo
            }
            for future in futures:
                infos[futures[future]] = future.result()
                if on_shard:
                    on_shard(len(infos), len(plan))

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
        shards=[infos[i] for i in range(len(plan))],
    )
    shards.write_manifest(root, manifest)
    log.info("built %s: %d images in %d shards (%d kept)", root, count, len(plan), kept_count)
    return BuildResult(root, manifest, len(todo), kept_count, reused=False)
