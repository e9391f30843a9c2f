"""Offline adversarial boundary perturbation: a `derived` surrogate built once per teacher x surrogate.

Frank & Davis (CVPR 2025) train students on surrogate images pushed to the teacher's decision boundary
(`study.teacher.attack`). Attacking every batch online costs tens of teacher forward/backward passes per image
on every trial; an arm with `perturbation.mode: offline` instead reads the perturbed images precomputed here,
so every trial (and every search sample) of the arm reuses one attack pass.

Layout: `<root>/<source>__adv_<hash8>/shard-000000.tar ...` + `manifest.json`, `kind: derived`. One
derived shard per source shard, one derived block per source block holding the 4 images of each success (a
block whose attacks all failed is left out). Images are stored at the teacher's input size and channels. The
manifest's `card` records the source surrogate, teacher id, attack config, seed, success rate and the class
histograms of the teacher's predictions before (attacked source images) and after (stored images).

Deterministic: block b is attacked with a generator seeded from (seed, b), so a rebuild (local or on Ray,
in any order) writes byte-identical shards. Resumable: shards are written in order (a block's `start` depends
on the successes before it), and a shard a killed build finished is kept with its per-shard statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from study import storage
from study.config import PerturbationSpec
from study.data import shards
from study.data.build_plan import BuildResult
from study.data.shards.reader import iter_blocks, to_teacher_input
from study.data.work_records import merged, record_since
from study.device import pick_device, require_cuda
from study.teacher.attack import KINDS, AttackConfig, boundary_attack
from study.teacher.checkpoint import Teacher, load_teacher
from study.teacher.inference import normalise, predict

log = logging.getLogger(__name__)

STATS_SUFFIX = ".perturb.json"
ATTACK_VERSION = 2
"""Bumped when `boundary_attack` changes its output for the same config (2: the authors' pair rule), so a
derived set of an older attack is rebuilt under a new name rather than reused."""
CLEAN_KIND = len(KINDS)
"""`kind` of a clean source image kept in a derived block (`clean_fraction`); 0..3 index `attack.KINDS`."""
_TEACHERS: dict[str, Teacher] = {}


def attack_config(spec: PerturbationSpec) -> AttackConfig:
    return AttackConfig(**spec.attack_fields())


def derived_name(source: str, spec: PerturbationSpec, teacher_id: str, seed: int) -> str:
    """`<source>__adv_<hash8>`: hash of the attack config, fraction, build seed and teacher id."""
    key = {
        "attack": spec.attack_fields(),
        "attack_version": ATTACK_VERSION,
        "fraction": spec.fraction,
        "seed": seed,
        "teacher": teacher_id,
    }
    if spec.clean_fraction:  # only when set, so derived sets built before the field existed keep their names
        key["clean_fraction"] = spec.clean_fraction
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{source}__adv_{digest}"


def block_generator(seed: int, block: int) -> torch.Generator:
    """The generator of block `block`: seeded from (seed, block) only, so blocks can run anywhere, any order."""
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class BlockResult:
    """One attacked source block: the stored images and the statistics the manifest aggregates."""

    images: np.ndarray  # uint8 (4S, H, W, C)
    meta: dict[str, Any]
    attacked: int
    successes: int
    before: list[int]
    after: list[int]
    clean: int = 0
    work: shards.WorkRecord | None = None  # where it ran, when it ran as a Ray task


def perturb_block(
    teacher: Teacher,
    images: np.ndarray,
    source_start: int,
    block: int,
    spec: PerturbationSpec,
    seed: int,
    device: torch.device,
) -> BlockResult:
    """Attack the first `ceil(fraction * n)` images of a source block (uint8 N x H x W x C).

    With `clean_fraction` c > 0 the block also keeps its first `ceil(c * N)` source images unperturbed (kind
    `CLEAN_KIND`), as an online batch keeps clean images beside the perturbed ones: a share
    `cN / (cN + 4S)` of the derived set for S successes.
    """
    meta_t = teacher.meta
    n = math.ceil((spec.fraction or 1.0) * len(images))
    adapted = to_teacher_input(
        torch.from_numpy(np.ascontiguousarray(images)).to(device), meta_t.channels, meta_t.image_size
    )
    x = adapted[:n].float() / 255.0
    result = boundary_attack(
        teacher.model, x, meta_t.mean, meta_t.std, attack_config(spec), block_generator(seed, block)
    )
    perturbed = (result.images * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    c = spec.clean_fraction
    n_clean = math.ceil(c * len(images))
    clean = adapted[:n_clean]
    clean_pred = teacher_logits(teacher, clean).argmax(1)
    out = torch.cat([perturbed, clean]).permute(0, 2, 3, 1).cpu().numpy()
    k = meta_t.num_classes
    predictions = torch.cat([result.predictions, clean_pred]).cpu()
    return BlockResult(
        images=np.ascontiguousarray(out),
        meta={
            "source_start": source_start,
            "source_index": (result.source_index.cpu() + source_start).tolist()
            + list(range(source_start, source_start + n_clean)),
            "kind": result.kind.cpu().tolist() + [CLEAN_KIND] * n_clean,
            "teacher_pred": predictions.tolist(),
        },
        attacked=n,
        successes=int(result.success.sum()),
        before=np.bincount(result.pred_before.cpu().numpy(), minlength=k).tolist(),
        after=np.bincount(predictions.numpy(), minlength=k).tolist(),
        clean=n_clean,
    )


def teacher_logits(teacher: Teacher, adapted: torch.Tensor) -> torch.Tensor:
    """The teacher's logits on adapted uint8 (N, C, H, W) images."""
    if len(adapted) == 0:
        return torch.empty(0, teacher.meta.num_classes, device=adapted.device)
    return predict(teacher.model, normalise(adapted, teacher.meta.mean, teacher.meta.std))


def _cached_teacher(uri: str) -> Teacher:
    if uri not in _TEACHERS:
        _TEACHERS[uri] = load_teacher(uri, pick_device())
    return _TEACHERS[uri]


def _perturb_task(
    teacher_uri: str, images: np.ndarray, source_start: int, block: int, spec_json: str, seed: int, gpus: float = 0.0
) -> BlockResult:
    """A block's attack on a Ray worker; the teacher is loaded once per worker process. Given a GPU, it runs there
    or fails (never on the CPU behind the GPU's back)."""
    started = time.time()
    require_cuda(gpus, f"offline perturbation of block {block}")
    torch.set_num_threads(1)
    teacher = _cached_teacher(teacher_uri)
    spec = PerturbationSpec.model_validate_json(spec_json)
    result = perturb_block(teacher, images, source_start, block, spec, seed, next(teacher.model.parameters()).device)
    return replace(result, work=record_since(started))


def _use_ray(ray_address: str | None) -> bool:
    if ray_address is None:
        try:
            import ray
        except ImportError:
            return False
        return ray.is_initialized()
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    return True


def _source_shard_blocks(source_root: str, manifest: shards.Manifest, index: int) -> list[tuple[np.ndarray, int]]:
    info = manifest.shards[index]
    uri = storage.join(source_root, info.name)
    return [(images, int(meta["start"])) for images, meta in iter_blocks([uri], {uri: info.count})]


def _attacked_shards(
    todo: list[int],
    source_root: str,
    manifest: shards.Manifest,
    first_block: list[int],
    teacher_uri: str,
    spec: PerturbationSpec,
    seed: int,
    use_ray: bool,
    block_resources: dict[str, float] | None = None,
) -> Iterator[tuple[int, list[BlockResult]]]:
    """(shard index, its attacked blocks) in shard order; on Ray, one shard ahead is in flight, each block a task
    with `block_resources` (Ray's `num_cpus`/`num_gpus`; default one CPU)."""
    if not use_ray:
        teacher = _cached_teacher(teacher_uri)
        device = next(teacher.model.parameters()).device
        for index in todo:
            blocks = _source_shard_blocks(source_root, manifest, index)
            yield (
                index,
                [
                    perturb_block(teacher, images, start, first_block[index] + b, spec, seed, device)
                    for b, (images, start) in enumerate(blocks)
                ],
            )
        return
    import ray

    resources = block_resources or {"num_cpus": 1}
    remote = ray.remote(**resources)(_perturb_task)  # type: ignore[call-overload]
    spec_json = spec.model_dump_json()
    gpus = float(resources.get("num_gpus", 0.0))

    def submit(index: int) -> list[Any]:
        blocks = _source_shard_blocks(source_root, manifest, index)
        return [
            remote.remote(teacher_uri, images, start, first_block[index] + b, spec_json, seed, gpus)
            for b, (images, start) in enumerate(blocks)
        ]

    pending = [(index, submit(index)) for index in todo[:2]]
    for position in range(len(todo)):
        index, refs = pending.pop(0)
        if position + 2 < len(todo):
            pending.append((todo[position + 2], submit(todo[position + 2])))
        yield index, ray.get(refs)


def _stats_uri(root: str, index: int) -> str:
    return storage.join(root, "_parts", f"{shards.shard_name(index)}{STATS_SUFFIX}")


def build_perturbed(
    source_root: str,
    teacher_uri: str,
    out_root: str,
    spec: PerturbationSpec,
    *,
    seed: int = 0,
    name: str | None = None,
    ray_address: str | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    block_resources: dict[str, float] | None = None,
    record_work: bool = False,
) -> BuildResult:
    """Build the derived surrogate of `source_root` under `<out_root>/<name>/` (default `derived_name`).

    Blocks are attacked as Ray tasks (`block_resources`: Ray's `num_cpus`/`num_gpus` per block, default one CPU)
    when `ray_address` is given or a Ray runtime is already up, in this process otherwise; results are identical
    either way. An existing manifest of the same derivation is reused. `record_work` (a build running as a Ray
    task) writes where it and its attacks ran into the manifest's `built_on`.
    """
    started = time.time()
    source = shards.read_manifest(source_root)
    shards.check_present(source_root, source)
    teacher = _cached_teacher(teacher_uri)
    teacher_id = teacher.meta.teacher_id
    name = name or derived_name(source.name, spec, teacher_id, seed)
    root = storage.join(out_root, name)
    derivation = {
        "source": source.name,
        "source_card": source.card,
        "teacher": teacher_id,
        "attack": spec.attack_fields(),
        "attack_version": ATTACK_VERSION,
        "fraction": spec.fraction,
        "seed": seed,
    }
    if spec.clean_fraction:
        derivation["clean_fraction"] = spec.clean_fraction
    if storage.exists(storage.join(root, shards.MANIFEST)):
        old = shards.read_manifest(root)
        if {k: old.card.get(k) for k in derivation} == json.loads(json.dumps(derivation)):
            shards.check_present(root, old)
            if on_shard:
                on_shard(len(old.shards), len(old.shards))
            return BuildResult(root, old, 0, len(old.shards), reused=True)
        raise shards.ShardError(f"{root}: already holds a surrogate derived differently; remove it or rename")

    total = len(source.shards)
    infos: dict[int, shards.ShardInfo] = {}
    stats: dict[int, dict[str, Any]] = {}
    for index in range(total):
        kept = shards.finished_shard(root, index)
        if kept is not None and storage.exists(_stats_uri(root, index)):
            infos[index] = kept
            stats[index] = json.loads(storage.read_text(_stats_uri(root, index)))
    kept_count = len(infos)
    blocks_per_shard = [math.ceil(s.count / source.images_per_sample) for s in source.shards]
    first_block = np.cumsum([0, *blocks_per_shard]).tolist()
    todo = [i for i in range(total) if i not in infos]
    if on_shard:
        on_shard(len(infos), total)

    use_ray = _use_ray(ray_address) and bool(todo)
    out_start = 0
    next_index = 0
    attacks_started = time.time()
    work: list[shards.WorkRecord] = []
    attacked_shards = _attacked_shards(
        todo, source_root, source, first_block, teacher_uri, spec, seed, use_ray, block_resources
    )
    for index, results in attacked_shards:
        work += [r.work for r in results if r.work is not None]
        while next_index < index:  # kept shards before this one
            out_start += infos[next_index].count
            next_index += 1
        blocks = []
        for r in results:
            if len(r.images):
                blocks.append((r.images, {"start": out_start, **r.meta}))
                out_start += len(r.images)
        k = teacher.meta.num_classes
        stats[index] = {
            "attacked": sum(r.attacked for r in results),
            "successes": sum(r.successes for r in results),
            "clean": sum(r.clean for r in results),
            "before": np.sum([r.before for r in results] or [[0] * k], axis=0).tolist(),
            "after": np.sum([r.after for r in results] or [[0] * k], axis=0).tolist(),
        }
        # statistics first: a shard is kept on resume only when its record and statistics both exist
        storage.write_text(_stats_uri(root, index), json.dumps(stats[index]))
        infos[index] = shards.write_shard(root, index, blocks, first_block[index])
        next_index = index + 1
        if on_shard:
            on_shard(len(infos), total)

    attacked = sum(s["attacked"] for s in stats.values())
    successes = sum(s["successes"] for s in stats.values())
    clean = sum(s.get("clean", 0) for s in stats.values())
    before = np.sum([s["before"] for s in stats.values()], axis=0).tolist()
    after = np.sum([s["after"] for s in stats.values()], axis=0).tolist()
    count = sum(i.count for i in infos.values())
    if count == 0:
        raise shards.ShardError(
            f"{root}: no attack succeeded on {attacked} images of '{source.name}' "
            f"(epsilon={spec.epsilon}, max_iters={spec.max_iters}); widen the ball or allow more iterations"
        )
    manifest = shards.Manifest(
        name=name,
        kind="derived",
        card={
            "name": name,
            "kind": "derived",
            **derivation,
            "attacked": attacked,
            "successes": successes,
            "success_rate": successes / max(attacked, 1),
            "clean": clean,
            "histogram_before": before,
            "histogram_after": after,
        },
        seed=seed,
        count=count,
        image_size=teacher.meta.image_size,
        channels=teacher.meta.channels,
        images_per_sample=(5 if spec.clean_fraction else 4) * source.images_per_sample,
        labelled=False,
        classes=teacher.meta.classes,
        class_histogram=after,
        teacher=teacher_id,
        shards=[infos[i] for i in range(total)],
    )
    if record_work:
        pieces = {"perturbation": record_since(started)}
        if todo:
            pieces["attack"] = merged(work) if work else record_since(attacks_started)
        manifest.built_on = pieces
    shards.write_manifest(root, manifest)
    log.info(
        "perturbed %s -> %s: %d/%d successes, %d images (%d shards kept)",
        source.name,
        root,
        successes,
        attacked,
        count,
        kept_count,
    )
    return BuildResult(root, manifest, len(todo), kept_count, reused=False)
