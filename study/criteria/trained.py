"""The `trained` population: the teacher's view of the batches the student actually trains on.

The raw pool and the built set are clean uint8 images, and a student never sees those: it trains on each batch
after the arm's pipeline (augmentation and mixup, and for an online arm the boundary attack, in the arm's order),
which is also where the authors' histogram script measures the teacher. This population is a seeded sample of those
batches: the first `criteria.trained_batches` batches a trial with the study's seed trains on, drawn by the trial's
own `study.distill.batches.TrainingBatches` (its stream and its `make_batch`), so they are the trained batches
themselves, not a re-implementation of them. They use the arm's base recipe (`spec.train_for(arm)`): searched
hyperparameters keep their spec values.

A batch without images (an online `boundary_only` batch whose attacks all failed) is skipped, as the trial skips
it. At most `criteria.trained_source_batches` source batches are drawn, so an attack that never succeeds ends the
sample short, or empty (then no `criteria.trained.*` value is logged), with a warning, instead of drawing forever.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from study.config import ArmSpec, CardSpec, StudySpec
from study.criteria.measures import Criteria, FeatureMoments, measure_normalised
from study.data.build_plan import BuildResult
from study.data.shards import ShardError
from study.distill.batches import TrainingBatches
from study.teacher.checkpoint import Teacher

log = logging.getLogger(__name__)


@dataclass
class TrainedSample:
    """What `measure_trained` measured: the criteria (None when no batch held an image) and the sample's size."""

    criteria: Criteria | None
    batches: int  # training batches measured
    images: int  # images in them
    source_batches: int  # batches drawn from the stream
    wanted: int  # `criteria.trained_batches`
    limit: int  # `criteria.trained_source_batches`
    error: str | None = None  # a shard the stream could not read: the sample is dropped, the arm's trials fail on it

    @property
    def short(self) -> bool:
        return self.batches < self.wanted

    def note(self) -> str:
        """One line for the arm run's tag and the warning: what the sample holds and, when short, why."""
        if self.error is not None:
            return f"not measured: {self.error}"
        text = (
            f"{self.batches} of {self.wanted} batches, {self.images} images, from {self.source_batches} source batches"
        )
        if self.short:
            text += (
                f" (stopped at criteria.trained_source_batches = {self.limit}: the online attack succeeded on too "
                "few images, and boundary_only trains on none of a batch whose attacks all fail)"
            )
        return text

    def params(self) -> dict[str, str]:
        """The arm run's tags that say how the `trained` criteria were sampled."""
        return {
            "kd_study.criteria.trained.batches": str(self.batches),
            "kd_study.criteria.trained.images": str(self.images),
            "kd_study.criteria.trained.source_batches": str(self.source_batches),
            "kd_study.criteria.trained.sample": self.note(),
        }


def arm_batches(spec: StudySpec, arm: ArmSpec, card: CardSpec, build: BuildResult, teacher: Teacher) -> TrainingBatches:
    """The arm's training batches as a trial with the study's seed draws them, on the teacher's device."""
    device = next(teacher.model.parameters()).device
    train = spec.train_for(arm)
    return TrainingBatches(spec, arm, train, card, teacher, build.root, build.manifest, spec.seed, device)


def measure_trained(
    batches: TrainingBatches,
    wanted: int,
    limit: int,
    temperature: float = 1.0,
    reference: FeatureMoments | None = None,
) -> TrainedSample:
    """Criteria of the first `wanted` non-empty training batches of `batches`, drawing at most `limit` source
    batches; batches are measured as they are made (a batch of 4B boundary images at full resolution is large)."""
    counts = {"batches": 0, "images": 0, "drawn": 0}

    def made() -> Iterator[torch.Tensor]:
        source = batches.source_batches()
        while counts["batches"] < wanted and counts["drawn"] < limit:
            x = batches.make_batch(next(source).to(batches.device))
            counts["drawn"] += 1
            if len(x):
                counts["batches"] += 1
                counts["images"] += len(x)
                yield x

    stream = made()
    try:
        first = next(stream, None)  # None: no batch held an image, so there is nothing to measure
        found = (
            None
            if first is None
            else measure_normalised(batches.teacher, itertools.chain([first], stream), temperature, reference)
        )
    except ShardError as err:
        # A shard the arm's trials will also fail to read (and report, naming it): the criteria pass must not end
        # the study before those trials run and the report is written, so the sample is dropped, loudly.
        sample = TrainedSample(None, 0, 0, counts["drawn"], wanted, limit, error=str(err))
        log.warning("arm '%s': trained criteria %s", batches.arm.name, sample.note())
        return sample
    sample = TrainedSample(found, counts["batches"], counts["images"], counts["drawn"], wanted, limit)
    if sample.short:
        log.warning("arm '%s': trained criteria on %s", batches.arm.name, sample.note())
    return sample
