"""The batches an arm's student trains on: its surrogate's seeded stream through the arm's pipeline.

One class owns the pipeline (augment and mixup, then the online boundary attack, or the attack before augmenting
for `online_order: before_augment`), so the trial's training loop (`study.distill.trial.KDTrial`, a subclass) and
the `trained` criteria population (`study.criteria.trained`) draw the same batches from the same code: a criterion
measured on what the student trains on is measured on exactly those batches, not on a re-implementation of them.

See `study.distill.trial` for the pipeline's orders and the `online_batch` options (`boundary_only` trains on the
4 images of each success alone, so a batch holds 4 x successes images and may be empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from study.config import ArmSpec, CardSpec, StudySpec, TrainSpec
from study.data import shards
from study.data.perturb import attack_config
from study.data.shards.cache import ShardCache
from study.data.shards.reader import ShardStream, read_range, stream_loader, to_teacher_input
from study.distill.augment import AugmentConfig, BatchAugment
from study.distill.temperature import student_flip
from study.teacher.attack import AttackResult, boundary_attack
from study.teacher.checkpoint import Teacher
from study.teacher.inference import predict_classes


def is_synthetic(card: CardSpec) -> bool:
    """The paper's synthetic recipe (T 20, 4 RandAugment ops) applies: generated cards, and mixtures whose
    `recipe` is synthetic (the default when a component is generated: `study.data.mixture.mixture_recipe`)."""
    if card.kind == "mixture":
        from study.data.mixture import mixture_recipe

        return mixture_recipe(card) == "synthetic"
    return card.kind == "generated"


def is_shader(card: CardSpec) -> bool:
    """Shader images get elastic warps and inversions (paper); so does a synthetic-recipe mixture with a shader
    component (the extras are per batch, like the rest of the recipe)."""
    if card.kind == "mixture":
        return is_synthetic(card) and any(
            c.resolved is not None and is_shader(c.resolved) for c in card.components or []
        )
    return card.generator in ("shaders", "glsl_folder")


def targets_stored_label(card: CardSpec) -> bool:
    """The authors attack their OpenGL shader images toward the stored label; a mixture has no per-image kind
    in its batches, so its images keep uniform targets."""
    return card.kind != "mixture" and is_shader(card)


def held_out_slice(
    spec: StudySpec, arm: ArmSpec, root: str, manifest: shards.Manifest, channels: int, image_size: int
) -> tuple[int | None, torch.Tensor | None]:
    """(images the trial trains on, held-out uint8 images at the teacher's input) of an arm.

    With `search.metric: agreement` the last `search.agreement_images` images of the arm's built set are held out
    of training and scored by agreement with the teacher: the one exception to "every trial reads its whole
    surrogate", so a study needs no labelled data at all. Otherwise nothing is held out.
    """
    if spec.search.metric != "agreement":
        return arm.count, None
    total = min(arm.count or manifest.count, manifest.count)
    held = spec.search.agreement_images
    if held >= total:
        raise ValueError(f"arm '{arm.name}': search.agreement_images ({held}) leaves no training images of its {total}")
    images = read_range(root, manifest, total - held, total)
    return total - held, to_teacher_input(torch.from_numpy(images), channels, image_size)


class TrainingBatches:
    """An arm's seeded stream of source batches and the pipeline that turns each into a training batch.

    `make_batch` is the pipeline; `source_batches` the stream as the trial reads it (through its DataLoader, whose
    workers interleave shards). Both draw on `generator` (seeded with `seed`), so the n-th batch of a fresh
    instance is the n-th batch a trial with that seed trains on (before its budget cuts the last one).
    """

    def __init__(
        self,
        spec: StudySpec,
        arm: ArmSpec,
        train: TrainSpec,
        card: CardSpec,
        teacher: Teacher,
        root: str,
        manifest: shards.Manifest,
        seed: int,
        device: torch.device,
        cache: ShardCache | None = None,
    ) -> None:
        self.spec, self.arm, self.train, self.card, self.teacher = spec, arm, train, card, teacher
        self.seed, self.device = seed, device
        meta = teacher.meta
        synthetic = is_synthetic(card)
        t = train
        self.augment = BatchAugment(
            AugmentConfig(
                crop=t.crop,
                crop_scale=(t.crop_scale_min, 1.0),
                randaugment_ops=t.randaugment_ops if t.randaugment_ops is not None else (4 if synthetic else 2),
                randaugment_magnitude=t.randaugment_magnitude,
                # the paper adds elastic warps and inversions for shader images only
                elastic_p=0.5 if is_shader(card) else 0.0,
                invert_p=0.1 if is_shader(card) else 0.0,
                flip=student_flip(t, meta, spec.teacher),
                pad_fraction=t.pad_fraction,
                mixup=t.mixup,
            ),
            mean=meta.mean,
            std=meta.std,
        )
        online = arm.perturbation.mode == "online"
        self.attack = attack_config(arm.perturbation) if online else None
        self.attack_after_mixup = online and arm.perturbation.online_order == "after_mixup"
        self.boundary_batches = online and arm.perturbation.online_batch == "boundary_only"
        if self.boundary_batches:
            self.attacked_per_batch = t.batch_size
        elif online:
            self.attacked_per_batch = math.ceil((arm.perturbation.fraction or 1.0) * t.batch_size / 4)
        else:
            self.attacked_per_batch = 0
        # the stored label exists only where mixup made the image something else: on clean images (offline,
        # before_augment) it is the image's own class, so those keep uniform targets
        self.stored_label_targets = (
            self.attack_after_mixup and arm.perturbation.target == "pseudo_label" and targets_stored_label(card)
        )
        self.attack_counts = [0, 0]  # (successes, attacked) since the last report
        self.generator = torch.Generator().manual_seed(seed)
        train_limit, self.heldout = held_out_slice(spec, arm, root, manifest, meta.channels, meta.image_size)
        self.stream = ShardStream(root, manifest, t.batch_size, seed=seed, limit=train_limit, cache=cache)

    def source_batches(self) -> Iterator[torch.Tensor]:
        """The stream's uint8 (B, H, W, C) batches in the order a trial reads them."""
        workers = self.spec.resources.loader_workers
        return iter(stream_loader(self.stream, workers, self.device.type == "cuda"))

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        meta = self.teacher.meta
        return predict_classes(model, images, meta.mean, meta.std, self.device, self.spec.budget.eval_batch_size)

    def stored_labels(self, clean: torch.Tensor) -> torch.Tensor:
        """The teacher's class of each clean, un-augmented uint8 image: the label a shader image is stored with."""
        return self.predict(self.teacher.model, clean)

    def attack_batch(self, pixels01: torch.Tensor, targets: torch.Tensor | None) -> AttackResult:
        meta = self.teacher.meta
        assert self.attack is not None
        return boundary_attack(
            self.teacher.model, pixels01, meta.mean, meta.std, self.attack, self.generator, targets=targets
        )

    def perturb(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Online boundary perturbation of a batch: `boundary_only`, the 4 images of each success alone (4 x
        successes images); `equal_compute`, the same shape as `x` with the perturbed images in front.

        Order `after_mixup`: `x` is the augmented, mixed-up batch as the student sees it (normalised float) and
        so is the result. Order `before_augment`: `x` is an adapted uint8 batch and so is the result. `targets`
        (one per image of `x`) fixes the attack's targets; None draws uniform other classes.
        """
        meta = self.teacher.meta
        n = min(self.attacked_per_batch, len(x))
        if self.attack_after_mixup:
            mean = torch.tensor(meta.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(meta.std, device=x.device).view(1, -1, 1, 1)
            # mixup and the mean fill keep pixels inside [0, 1]; clamp only float rounding at the edges
            pixels = (x[:n].float() * std + mean).clamp_(0.0, 1.0)
        else:
            pixels = x[:n].float() / 255.0
        result = self.attack_batch(pixels, None if targets is None else targets[:n])
        self.attack_counts[0] += int(result.success.sum())
        self.attack_counts[1] += n
        if self.attack_after_mixup:
            perturbed = (result.images - mean) / std
        else:
            perturbed = (result.images * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        if self.boundary_batches:
            return perturbed
        return torch.cat([perturbed, x[n:], x[:n][~result.success]])[: len(x)]

    def make_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """One source batch (uint8 (B, H, W, C), on the device) -> the normalised float batch the student trains
        on, in the arm's pipeline order. A `boundary_only` batch holds 4 x successes images (none when every
        attack failed: then it is empty and no step is taken)."""
        meta = self.teacher.meta
        x = to_teacher_input(batch, meta.channels, meta.image_size)
        targets = self.stored_labels(x) if self.stored_label_targets else None
        if self.attack is not None and not self.attack_after_mixup:
            x = self.perturb(x)
        if len(x):
            x = self.augment(x, self.generator)
        if self.attack_after_mixup:
            x = self.perturb(x, targets)
        return x
