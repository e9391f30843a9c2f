"""Mixture surrogates: blends of other cards, built into shards of their own.

A `kind: mixture` card lists `components` (cards with weights, normalised to sum to 1). Building it builds (or
reuses) each component under its own name, then writes the blend as a surrogate of its own, so a trial reads one
surrogate the usual way and the amounts of a mixture are nested prefixes like any other surrogate's.

Which images: without `balance`, component i contributes the first `n_i` images of its (class-interleaved) build,
`n_i` the largest-remainder share of `count` by weight. With `balance`, the teacher filters the union: every class
gets `per_class` images, split among the components by weight (the same largest-remainder split in every class),
each component's candidates scanned in an order drawn from the card's seed. Either way the stored order interleaves
the components so that every prefix holds each within one image of its share (and, balanced, each class within
one image of its share), so realised proportions equal the weights up to rounding, at every amount.

Recipe: one per card (`recipe: real | synthetic`), not one per image by the component it came from. The
temperature acts on the KD loss of a whole batch and mixup blends pairs of images drawn from both components, so a
per-image recipe has no meaning for most training images (a photo mixed up with a dead-leaves image has no single
origin). The default is `synthetic` when any component is generated: T 20 on real images only softens their
targets, while T 2 on generated images leaves the peaked near one-hot targets that the paper's T 20 is there to
fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study import storage
from study.config import BalanceSpec, CardSpec, SpecError, load_card
from study.data import shards
from study.data.build_plan import BuildResult, ReferenceStats, plan_shards
from study.data.work_records import record_since
from study.resources import resolve_card_path

if TYPE_CHECKING:
    from study.teacher.checkpoint import Teacher, TeacherMeta

log = logging.getLogger(__name__)


def resolve_mixture(card: CardSpec, base: Path | None) -> CardSpec:
    """`card` with each component's card read into `resolved` (bundled name, or a path relative to `base`, the
    mixture card's folder); other cards unchanged. Errors name the component field."""
    if card.kind != "mixture":
        return card
    resolved = []
    for i, component in enumerate(card.components or []):
        where = f"card '{card.name}': components.{i}.card"
        try:
            sub = load_card(resolve_card_path(component.card, base))
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
        if sub.kind in ("mixture", "derived"):
            raise SpecError(f"{where}: '{sub.name}' is a {sub.kind} card; components must be real or generated")
        if sub.image_size != card.image_size:
            raise SpecError(f"{where}: '{sub.name}' has image_size {sub.image_size}, the mixture {card.image_size}")
        resolved.append(component.model_copy(update={"resolved": sub}))
    names = [c.resolved.name for c in resolved if c.resolved]
    if len(set(names)) != len(names):
        raise SpecError(f"card '{card.name}': components: a card appears twice ({names})")
    return card.model_copy(update={"components": resolved})


def component_cards(card: CardSpec) -> list[CardSpec]:
    out = []
    for i, component in enumerate(card.components or []):
        if component.resolved is None:
            raise SpecError(f"card '{card.name}': components.{i} is not resolved (resolve_mixture first)")
        out.append(component.resolved)
    return out


def mixture_recipe(card: CardSpec) -> str:
    """`real` or `synthetic`: the card's `recipe`, else synthetic when any component is generated (module doc)."""
    if card.recipe is not None:
        return card.recipe
    return "synthetic" if any(c.kind == "generated" for c in component_cards(card)) else "real"


def uses_teacher(card: CardSpec) -> bool:
    """Whether building `card` filters images through the teacher (its own `balance` or a component's)."""
    if card.kind == "mixture":
        return card.balance is not None or any(c.balance is not None for c in component_cards(card))
    return card.balance is not None


def depends_on_teacher(card: CardSpec) -> bool:
    """Whether two teachers get different builds of `card`: it is filtered through the teacher (`uses_teacher`),
    or a generator of it matches the teacher data's mean/std. A multi-teacher study builds such a card per
    teacher and shares every other build."""
    from study.data.generators.registry import create_generator

    parts = component_cards(card) if card.kind == "mixture" else [card]
    generated = [p for p in parts if p.kind == "generated" and p.generator]
    return uses_teacher(card) or any(create_generator(p.generator, p.params).follows_teacher_stats for p in generated)


def allocate(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `total` by `weights` (summing to 1): exact shares rounded, ties to the first."""
    raw = [total * w for w in weights]
    base = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - base[i]), i))
    for i in by_remainder[: total - sum(base)]:
        base[i] += 1
    return base


def interleave(counts: list[int]) -> np.ndarray:
    """Component index per position, so that every prefix of length k holds component i within one of
    `k * counts[i] / sum(counts)` (the component furthest below its share goes next; ties to the first)."""
    total = sum(counts)
    taken = np.zeros(len(counts))
    share = np.asarray(counts, dtype=np.float64) / max(total, 1)
    out = np.empty(total, dtype=np.int64)
    for k in range(total):
        deficit = share * (k + 1) - taken
        deficit[taken >= np.asarray(counts)] = -np.inf
        i = int(np.argmax(deficit))
        out[k] = i
        taken[i] += 1
    return out


def manifest_sha256(root: str) -> str:
    """The sha256 of a component's manifest text, without `built_on`: a component rebuilt on another node holds
    the same images, and must not make its mixture stale."""
    text = storage.read_text(storage.join(root, shards.MANIFEST))
    if '"built_on"' in text:
        record = json.loads(text)
        if record.pop("built_on", None) is not None:
            text = json.dumps(record, indent=2)
    return hashlib.sha256(text.encode()).hexdigest()


def _as_channels(images: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(images, channels, axis=3) if images.shape[3] != channels else images


def _balanced_pick(
    card: CardSpec, pools: list[np.ndarray], teacher: Teacher, weights: list[float]
) -> tuple[list[tuple[int, int]], list[int], list[shards.SelectionRecord]]:
    """Teacher-filtered picks over the union: (component, index) and prediction per kept image, in stored order."""
    from study.data.balance import scan

    assert card.balance is not None
    num_classes = teacher.meta.num_classes
    per_component = allocate(card.balance.head(num_classes), weights)
    by_class: list[list[list[tuple[int, int]]]] = [[[] for _ in pools] for _ in range(num_classes)]
    records = []
    for i, pool in enumerate(pools):
        if per_component[i] == 0:
            continue
        order = np.random.default_rng([card.seed, i]).permutation(len(pool))
        budget = len(pool) if card.balance.candidates is None else min(len(pool), card.balance.candidates)
        spec = BalanceSpec(per_class=per_component[i])
        source = lambda start, n, pool=pool, order=order: pool[order[start : start + n]]  # noqa: E731
        selection = scan(source, budget, spec, teacher, card.model_dump(mode="json"))
        records.append(selection.record)
        for cand, pred in zip(selection.candidates, selection.predictions, strict=True):
            by_class[pred][i].append((i, int(order[cand])))
    picks: list[tuple[int, int]] = []
    labels: list[int] = []
    for c, lists in enumerate(by_class):
        next_of = [0] * len(lists)
        for k in interleave([len(x) for x in lists]):
            picks.append(lists[k][next_of[k]])
            next_of[k] += 1
            labels.append(c)
    from study.data.images import class_interleaved_order  # torch: imported where images are handled

    order = class_interleaved_order(np.asarray(labels, dtype=np.int64))
    return [picks[j] for j in order], [labels[j] for j in order], records


def build_mixture(
    card: CardSpec,
    out_root: str,
    *,
    count: int | None,
    reference_stats: ReferenceStats | None,
    teacher_id: str | None,
    meta: TeacherMeta | None,
    get_teacher: Callable[[], Teacher],
    teacher: Teacher | str | None,
    build_component: Callable[..., BuildResult],
    workers: int = 1,
    ray_address: str | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    replace_stale: bool = False,
    record_work: bool = False,
) -> BuildResult:
    """Build the components with `build_component` (`study.data.build.build_surrogate`, passed in so that the two
    modules do not import each other), reusing what exists, then the mixture under `<out_root>/<card.name>/`.
    `record_work` (a build running as a Ray task) writes where the mixture's build ran into its `built_on`, as a
    plain card's build does, so a cluster study's node tags cover mixtures too."""
    started = time.time()
    components = component_cards(card)
    if uses_teacher(card) and meta is None:
        raise shards.ShardError(f"card '{card.name}': it selects images through a teacher; give one (--teacher)")
    builds = [
        build_component(
            c,
            out_root,
            reference_stats=reference_stats,
            teacher_id=teacher_id,
            teacher=teacher if c.balance else None,
            workers=workers,
            ray_address=ray_address,
            replace_stale=replace_stale,
            record_work=record_work,
        )
        for c in components
    ]
    shas = [manifest_sha256(b.root) for b in builds]
    root = storage.join(out_root, card.name)
    count = min(count or card.count or 0, card.count or 0) or None
    snapshot = card.model_dump(mode="json")
    if storage.exists(storage.join(root, shards.MANIFEST)):
        old = shards.read_manifest(root)
        same = (
            old.card == snapshot
            and (card.balance is None or old.teacher == teacher_id)
            and [c.manifest_sha256 for c in old.components or []] == shas
            and (card.balance is not None or old.count == count)
        )
        if same:
            shards.check_present(root, old)
            if on_shard:
                on_shard(len(old.shards), len(old.shards))
            return BuildResult(root, old, 0, len(old.shards), reused=True)
        if not replace_stale:
            raise shards.ShardError(
                f"{root}: already holds a surrogate built from a different card, components or teacher; "
                "remove it or give the card another name"
            )
        log.warning("%s: built from another card, components or teacher; rebuilding", root)
        shards.forget_build(root, old)

    channels = max(b.manifest.channels for b in builds)
    from study.data.shards.reader import read_all  # torch: imported where shards are read

    pools = [_as_channels(read_all(b.root, b.manifest)[0], channels) for b in builds]
    weights = [c.weight for c in card.components or []]
    selection = None
    classes: list[str] = []
    histogram = None
    preds: list[int] | None = None
    if card.balance is not None:
        assert meta is not None
        picks, preds, records = _balanced_pick(card, pools, get_teacher(), weights)
        picks, preds = picks[:count], preds[:count]
        classes = meta.classes
        histogram = np.bincount(np.asarray(preds, dtype=np.int64), minlength=len(classes)).tolist()
        selection = _merge_records(records, histogram)
    else:
        assert count is not None
        wanted = allocate(count, weights)
        for i, (n, b) in enumerate(zip(wanted, builds, strict=True)):
            if n > b.manifest.count:
                raise shards.ShardError(
                    f"card '{card.name}': components.{i} ('{b.manifest.name}') holds {b.manifest.count} images, "
                    f"the mixture needs {n} of them (count {count} x weight {weights[i]:.3f})"
                )
        taken = [0] * len(pools)
        picks = []
        for i in interleave(wanted):
            picks.append((int(i), taken[i]))
            taken[i] += 1
    total = len(picks)
    plan = plan_shards(total, card.images_per_sample, card.samples_per_shard)
    first_block = np.cumsum([0] + [len(p) for p in plan]).tolist()
    infos: dict[int, shards.ShardInfo] = {}
    written = 0
    for index, blocks in enumerate(plan):
        if (kept := shards.finished_shard(root, index)) is not None:
            infos[index] = kept
            continue
        written += 1
        out = []
        for start, n in blocks:
            part = picks[start : start + n]
            block_meta: dict = {
                "start": start,
                "components": [i for i, _ in part],
                "component_indices": [j for _, j in part],
            }
            if preds is not None:
                block_meta["teacher_predictions"] = preds[start : start + n]
            out.append((np.stack([pools[i][j] for i, j in part]), block_meta))
        infos[index] = shards.write_shard(root, index, out, first_block[index])
        if on_shard:
            on_shard(len(infos), len(plan))
    from_each = np.bincount(np.asarray([i for i, _ in picks], dtype=np.int64), minlength=len(pools)).tolist()
    manifest = shards.Manifest(
        name=card.name,
        kind=card.kind,
        card=snapshot,
        seed=card.seed,
        count=total,
        image_size=card.image_size,
        channels=channels,
        images_per_sample=card.images_per_sample,
        labelled=False,
        classes=classes,
        class_histogram=histogram,
        teacher=teacher_id if uses_teacher(card) else None,
        selection=selection,
        shards=[infos[i] for i in range(len(plan))],
        components=[
            shards.ComponentRecord(name=b.manifest.name, weight=w, count=n, built=b.manifest.count, manifest_sha256=sha)
            for b, w, n, sha in zip(builds, weights, from_each, shas, strict=True)
        ],
        realised={b.manifest.name: n / max(total, 1) for b, n in zip(builds, from_each, strict=True)},
        built_on={"build": record_since(started)} if record_work else None,
    )
    shards.write_manifest(root, manifest)
    log.info("built mixture %s: %d images, %s from each component", root, total, from_each)
    return BuildResult(root, manifest, written, len(plan) - written, reused=False)


def _merge_records(records: list[shards.SelectionRecord], achieved: list[int]) -> shards.SelectionRecord:
    """One selection record of the union: quotas, candidates and raw histograms summed over the components."""
    scanned = sum(r.candidates_scanned for r in records)
    kept = sum(achieved)
    return shards.SelectionRecord(
        mode="balanced",
        quotas=[sum(q) for q in zip(*(r.quotas for r in records), strict=True)],
        candidates_budget=sum(r.candidates_budget for r in records),
        candidates_scanned=scanned,
        kept=kept,
        raw_histogram=[sum(h) for h in zip(*(r.raw_histogram for r in records), strict=True)],
        achieved=achieved,
        acceptance_rate=scanned / kept if kept else None,
        complete=all(r.complete for r in records),
    )
