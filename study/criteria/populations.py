"""The populations a surrogate's criteria are measured on, and the arm-level measurements around them.

* The **raw candidate pool**: what the surrogate's source offers before any selection. After balanced
  teacher-filtered selection (the paper's protocol) the built set's class entropy is ~1 by construction, so only
  the raw pool can tell balanced surrogates apart.
* The **built set**: the images the student trains on, after selection (the shards) or perturbation (the derived
  shards of an offline arm; for an online arm, the attack's output on a sample of the built set).
* The **trained batches** (`study.criteria.trained`): a seeded sample of the batches the student trains on, after
  the arm's augmentation, mixup and online attack, as the teacher sees them.

`measure_arm` measures all three for one arm; the pipeline logs them on its parent run (`criteria.raw.*`,
`criteria.built.*`, `criteria.trained.*`; `criteria.class_entropy` is the paper's measure, i.e. the raw pool's).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from study.config import ArmSpec, CardSpec, StudySpec
from study.criteria.measures import Criteria, FeatureMoments, batched, measure
from study.criteria.trained import arm_batches, measure_trained
from study.data.balance import scan_order
from study.data.build import load_real_source
from study.data.build_plan import BuildResult
from study.data.generators.registry import create_generator
from study.data.preview import preview_grid
from study.data.shards.reader import read_all
from study.data.sources.registry import load_source
from study.distill.temperature import kd_temperature
from study.teacher.checkpoint import Teacher, TeacherMeta

log = logging.getLogger(__name__)

ATTACK_SAMPLE = 256  # images attacked to measure an online arm (its perturbed images exist only inside trials)


def raw_pool(card: CardSpec, n: int, reference_stats: tuple[list[float], list[float]], num_classes: int) -> np.ndarray:
    """The raw candidate pool: the first `n` candidates of the card's balanced scan order, before any selection.

    The order is `study.data.balance.scan_order` over the candidates a balanced build would scan (the real source as
    loaded, or the generator's images up to its candidate ceiling), so for a teacher-filtered card the pool is
    exactly what the scan saw first. A card without `balance` gets the same seeded order over its source (a seeded
    sample).
    """
    if card.kind == "generated":
        assert card.generator is not None
        generator = create_generator(card.generator, card.params, reference_stats=reference_stats)
        total = card.balance.candidate_ceiling(num_classes) if card.balance else max(card.count or n, n)
        ids = scan_order(card, total)[:n]
        by_id = np.argsort(ids, kind="stable")  # render in index order, consecutive runs in one call, then unsort
        runs = np.split(ids[by_id], np.flatnonzero(np.diff(ids[by_id]) != 1) + 1)
        rendered = np.concatenate([generator.generate(card.seed, int(r[0]), len(r), card.image_size) for r in runs])
        return rendered[np.argsort(by_id, kind="stable")]
    if card.kind == "mixture":
        return _mixture_pool(card, n, reference_stats, num_classes)
    if card.kind != "real" or card.source is None:
        raise ValueError(f"card '{card.name}': no raw candidate pool for kind '{card.kind}'")
    # the candidates the balanced scan visits: the source in its stored order, the scan's seeded permutation
    data = load_real_source(card, card.balance.candidates if card.balance else card.count, interleave=False)
    return data.images[scan_order(card, len(data.images))[:n]]


def _mixture_pool(
    card: CardSpec, n: int, reference_stats: tuple[list[float], list[float]], num_classes: int
) -> np.ndarray:
    """A mixture's raw pool: each component's raw pool in its weighted share of `n` (largest remainder),
    interleaved as the mixture stores its images; grey components are repeated to the widest channel count."""
    from study.data.mixture import allocate, component_cards, interleave

    weights = [c.weight for c in card.components or []]
    pools = [
        raw_pool(part, k, reference_stats, num_classes) if k else None
        for part, k in zip(component_cards(card), allocate(n, weights), strict=True)
    ]
    channels = max(p.shape[3] for p in pools if p is not None)
    pools = [p if p is None or p.shape[3] == channels else np.repeat(p, channels, axis=3) for p in pools]
    taken = [0] * len(pools)
    out = []
    for i in interleave([0 if p is None else len(p) for p in pools]):
        out.append(pools[i][taken[i]])  # type: ignore[index]
        taken[i] += 1
    return np.stack(out)


def arm_temperature(spec: StudySpec, arm: ArmSpec, card: CardSpec, meta: TeacherMeta) -> float:
    """The arm's KD temperature, by the rule its trials use (`study.distill.temperature.kd_temperature`)."""
    return kd_temperature(spec.train_for(arm), card, meta, spec.teacher).value


def val_moments(teacher: Teacher, eval_root: str | None = None) -> FeatureMoments | None:
    """The teacher's feature moments on its own val split (the Fréchet reference), or None without that split.

    With `eval_root` the split is read from the study's eval shards (`study.data.eval_splits`): the driver of a
    submitted study runs on the cluster, which has the bucket but not the teacher's dataset.
    """
    meta = teacher.meta
    if not meta.has_eval_data:
        return None  # an imported teacher without eval data: nothing to compare against
    try:
        if eval_root is not None:
            from study.data.eval_splits import read_eval_split

            images, _ = read_eval_split(eval_root, meta.teacher_id, meta.val_split)
        else:
            source = (meta.dataset, meta.val_split, meta.image_size)
            images = load_source(*source, root=meta.dataset_root, params=meta.dataset_params).images
    except Exception as err:  # a teacher whose data is not here: criteria stay data-free
        log.warning("no val split for %s (%s): frechet_val is not measured", meta.dataset, err)
        return None
    return measure(teacher, batched(images)).moments


@dataclass
class Attacked:
    """An attack run on a sample of an arm's images: the stats the report shows and the pictures."""

    success_rate: float
    histogram_before: list[int]
    histogram_after: list[int]
    images: np.ndarray  # uint8, the attack's output (4 per success)
    grid_png: bytes


def attack_sample(teacher: Teacher, images: np.ndarray, arm: ArmSpec, seed: int) -> Attacked:
    """Run the arm's attack (`study.data.perturb.perturb_block`, the offline builder's step) on `images`."""
    from study.data.perturb import perturb_block

    device = next(teacher.model.parameters()).device
    block = perturb_block(teacher, images, 0, 0, arm.perturbation, seed, device)
    return Attacked(
        success_rate=block.successes / max(block.attacked, 1),
        histogram_before=block.before,
        histogram_after=block.after,
        images=block.images,
        grid_png=before_after_png(images, block.images, block.meta["source_index"], block.meta["kind"]),
    )


def before_after_png(originals: np.ndarray, attacked: np.ndarray, source_index: list[int], kind: list[int]) -> bytes:
    """Pairs of tiles: each original next to its just-after-crossing image (kind 0), up to 16 pairs."""
    tiles = []
    for i, (src, k) in enumerate(zip(source_index, kind, strict=True)):
        if k == 0 and len(tiles) < 32:
            orig = originals[src]
            tiles += [orig if orig.shape == attacked[i].shape else attacked[i] * 0, attacked[i]]
    buf = io.BytesIO()
    if tiles:
        preview_grid(np.stack(tiles), scale=3).save(buf, format="png")
    return buf.getvalue()


@dataclass
class ArmCriteria:
    """What `measure_arm` found: raw, built and trained criteria (trained: None when no training batch held an
    image), their histograms, extra metrics, artifacts and the tags that say how the trained batches were sampled."""

    raw: Criteria
    built: Criteria
    trained: Criteria | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def logged_metrics(self) -> dict[str, float]:
        out = {f"criteria.raw.{k}": v for k, v in self.raw.values.items()}
        out |= {f"criteria.built.{k}": v for k, v in self.built.values.items()}
        if self.trained is not None:
            out |= {f"criteria.trained.{k}": v for k, v in self.trained.values.items()}
        out["criteria.class_entropy"] = self.raw.values["class_entropy"]  # the paper's measure: the raw pool's
        return out | self.metrics


def measure_arm(
    spec: StudySpec,
    arm: ArmSpec,
    card: CardSpec,
    build: BuildResult,
    teacher: Teacher,
    reference: FeatureMoments | None,
) -> ArmCriteria:
    """Raw-pool, built-set and trained-batch criteria of one arm, plus its acceptance rate and attack statistics.

    The raw pool of an offline-perturbed arm is its source card's; its built set is the derived surrogate, which its
    trained batches are drawn from.
    """
    meta, images = teacher.meta, spec.criteria.images
    temperature = arm_temperature(spec, arm, card, meta)
    pool = raw_pool(card, images, (meta.mean, meta.std), meta.num_classes)
    raw = measure(teacher, batched(pool), temperature, reference)
    built_images, _ = read_all(build.root, build.manifest, min(arm.count or build.manifest.count, images))
    extra: dict[str, float] = {}
    artifacts: dict[str, bytes] = {}
    selection = build.manifest.selection
    if selection is not None and selection.candidates_scanned:
        extra["criteria.raw.acceptance_rate"] = selection.kept / selection.candidates_scanned
    if arm.perturbation.mode == "online":
        attacked = attack_sample(teacher, built_images[:ATTACK_SAMPLE], arm, spec.seed)
        extra["criteria.built.attack_success"] = attacked.success_rate
        artifacts["perturbation_histograms.json"] = json.dumps(
            {
                "histogram_before": attacked.histogram_before,
                "histogram_after": attacked.histogram_after,
                "attacked": min(len(built_images), ATTACK_SAMPLE),
                "classes": meta.classes,
            }
        ).encode()
        artifacts["perturbation.png"] = attacked.grid_png
        if len(attacked.images):
            built_images = attacked.images
    elif arm.perturbation.mode == "offline":
        derived = build.manifest.card
        extra["criteria.built.attack_success"] = float(derived["success_rate"])
        artifacts["perturbation.png"] = attack_sample(teacher, pool[:64], arm, spec.seed).grid_png
    built = measure(teacher, batched(built_images), temperature, reference)
    c = spec.criteria
    trained = measure_trained(
        arm_batches(spec, arm, card, build, teacher),
        c.trained_batches,
        c.trained_source_batches,
        temperature,
        reference,
    )
    artifacts["class_histogram.json"] = json.dumps(
        {
            "raw": raw.predicted_histogram,
            "built": built.predicted_histogram,
            "trained": trained.criteria.predicted_histogram if trained.criteria is not None else None,
            "classes": meta.classes,
            "raw_images": len(pool),
            "built_images": len(built_images),
            "trained_images": trained.images,
            "trained_sample": trained.note(),
            "temperature": temperature,
        }
    ).encode()
    artifacts["samples.png"] = sample_grid_png(built_images)
    return ArmCriteria(raw, built, trained.criteria, extra, artifacts, trained.params())


def sample_grid_png(images: np.ndarray, n: int = 64) -> bytes:
    """The arm's sample grid artifact: the same grid `kd-study data preview` writes."""
    buf = io.BytesIO()
    preview_grid(images[: min(n, len(images))], scale=2).save(buf, format="png")
    return buf.getvalue()
