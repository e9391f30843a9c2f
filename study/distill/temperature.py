"""The paper's per-arm choices that follow from the teacher and the surrogate: KD temperature and student flips.

Frank & Davis (CVPR 2025) distil at T = 20 when the surrogate is synthetic (generated) or the teacher is
fine-grained (FGVC-Aircraft, Oxford Pets, Food-101, DTD), whose outputs on surrogates are peaky, and at T = 2
otherwise. A spec's explicit `train.temperature` wins. Students flip images only when the teacher was trained
with flips: a mirrored digit or letter is not an image of the teacher's classes.
"""

from __future__ import annotations

from typing import NamedTuple

from study.config import FINE_GRAINED_SOURCES, CardSpec, TeacherSpec, TrainSpec
from study.teacher.checkpoint import TeacherMeta

SYNTHETIC_TEMPERATURE = 20.0
REAL_TEMPERATURE = 2.0


class TemperatureChoice(NamedTuple):
    """The arm's KD temperature and the rule that chose it (`explicit`, `synthetic`, `fine_grained`, `real`)."""

    value: float
    rule: str


def teacher_fine_grained(meta: TeacherMeta, teacher: TeacherSpec | None = None) -> bool:
    """The spec's `teacher.fine_grained` if set, else the teacher's meta.json, else its source's kind."""
    if teacher is not None and teacher.fine_grained is not None:
        return teacher.fine_grained
    if meta.fine_grained is not None:
        return meta.fine_grained
    return meta.dataset in FINE_GRAINED_SOURCES


def kd_temperature(
    train: TrainSpec, card: CardSpec, meta: TeacherMeta, teacher: TeacherSpec | None = None
) -> TemperatureChoice:
    """T for an arm: explicit `train.temperature`, else 20 for generated surrogates or fine-grained teachers,
    else 2 (the paper's rule)."""
    if train.temperature is not None:
        return TemperatureChoice(train.temperature, "explicit")
    if card.kind == "generated" or (card.kind == "mixture" and _mixture_is_synthetic(card)):
        return TemperatureChoice(SYNTHETIC_TEMPERATURE, "synthetic")
    if teacher_fine_grained(meta, teacher):
        return TemperatureChoice(SYNTHETIC_TEMPERATURE, "fine_grained")
    return TemperatureChoice(REAL_TEMPERATURE, "real")


def _mixture_is_synthetic(card: CardSpec) -> bool:
    """A mixture takes one recipe for all its images: its `recipe`, synthetic by default when a component is
    generated (`study.data.mixture`)."""
    from study.data.mixture import mixture_recipe

    return mixture_recipe(card) == "synthetic"


def teacher_flip(meta: TeacherMeta, teacher: TeacherSpec | None = None) -> bool:
    """Whether the teacher trained with flips: its meta.json, else the default rule for its dataset (old metas)."""
    if meta.flip is not None:
        return meta.flip
    base = teacher if teacher is not None else TeacherSpec()
    return base.model_copy(update={"dataset": meta.dataset}).resolved_flip()


def student_flip(train: TrainSpec, meta: TeacherMeta, teacher: TeacherSpec | None = None) -> bool:
    """An explicit `train.flip` wins; None follows the teacher's training."""
    return train.flip if train.flip is not None else teacher_flip(meta, teacher)


def arm_recipe(train: TrainSpec, card: CardSpec, meta: TeacherMeta, teacher: TeacherSpec | None = None) -> dict:
    """What the rules chose for an arm, for logging as its params: temperature, its rule, student flips."""
    choice = kd_temperature(train, card, meta, teacher)
    return {"temperature": choice.value, "temperature_rule": choice.rule, "flip": student_flip(train, meta, teacher)}
