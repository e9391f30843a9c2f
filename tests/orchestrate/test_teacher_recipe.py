"""The paper's standard teachers and what follows from them: flips, fine-grained temperature, meta.json keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.config import CardSpec, RealSource, TeacherSpec, TrainSpec
from study.distill.temperature import kd_temperature, student_flip, teacher_fine_grained
from study.teacher.checkpoint import TeacherMeta, load_meta

REAL = CardSpec(name="photos", kind="real", source=RealSource(name="photo_crops"))
GENERATED = CardSpec(name="leaves", kind="generated", generator="dead_leaves", count=8)


def meta(dataset: str = "digits", **fields) -> TeacherMeta:
    base = dict(arch="resnet8", num_classes=10, classes=list("0123456789"), image_size=32, channels=1)
    return TeacherMeta(**base, mean=[0.5], std=[0.25], dataset=dataset, weights_sha256="0" * 64, **fields)


class TestTeacherSpec:
    def test_defaults_are_a_standard_cross_entropy_teacher(self) -> None:
        spec = TeacherSpec()
        assert spec.label_smoothing == 0.0 and spec.optimizer == "sgd" and spec.schedule == "cosine"
        assert spec.lr == 0.1 and spec.momentum == 0.9

    @pytest.mark.parametrize(
        ("dataset", "flip"),
        [("cifar10", True), ("tiny_imagenet", True), ("digits", False), ("svhn", False), ("folder", False)],
    )
    def test_flips_default_on_for_natural_images_only(self, dataset: str, flip: bool) -> None:
        assert TeacherSpec(dataset=dataset).resolved_flip() is flip

    def test_an_explicit_flip_wins(self) -> None:
        assert TeacherSpec(dataset="folder", flip=True).resolved_flip() is True
        assert TeacherSpec(dataset="cifar10", flip=False).resolved_flip() is False

    def test_trained_teacher_records_its_recipe_in_meta_json(self, digits_teacher: Path) -> None:
        recorded = json.loads((digits_teacher / "meta.json").read_text())
        assert recorded["label_smoothing"] == 0.0 and recorded["optimizer"] == "sgd"
        assert recorded["schedule"] == "cosine" and recorded["flip"] is False and recorded["fine_grained"] is False

    def test_a_meta_json_written_before_these_keys_still_loads(self, tmp_path: Path) -> None:
        old = meta().model_dump(exclude={"label_smoothing", "optimizer", "schedule", "flip", "fine_grained"})
        (tmp_path / "meta.json").write_text(json.dumps(old))
        loaded = load_meta(str(tmp_path))
        assert loaded.flip is None and loaded.fine_grained is None


class TestTemperature:
    def test_real_surrogate_of_a_coarse_teacher_gets_two(self) -> None:
        assert kd_temperature(TrainSpec(), REAL, meta()) == (2.0, "real")

    def test_generated_surrogate_gets_twenty(self) -> None:
        choice = kd_temperature(TrainSpec(), GENERATED, meta())
        assert (choice.value, choice.rule) == (20.0, "synthetic")

    @pytest.mark.parametrize("dataset", ["fgvc_aircraft", "oxford_pets", "food101", "dtd"])
    def test_fine_grained_teacher_gets_twenty_on_real_images(self, dataset: str) -> None:
        choice = kd_temperature(TrainSpec(), REAL, meta(dataset))
        assert (choice.value, choice.rule) == (20.0, "fine_grained")

    def test_fine_grained_is_overridable_by_meta_and_spec(self) -> None:
        assert teacher_fine_grained(meta("cifar10", fine_grained=True))
        assert not teacher_fine_grained(meta("fgvc_aircraft"), TeacherSpec(fine_grained=False))
        assert kd_temperature(TrainSpec(), REAL, meta("fgvc_aircraft"), TeacherSpec(fine_grained=False)).value == 2.0

    def test_an_explicit_temperature_wins(self) -> None:
        choice = kd_temperature(TrainSpec(temperature=4.0), GENERATED, meta("fgvc_aircraft"))
        assert (choice.value, choice.rule) == (4.0, "explicit")


class TestStudentFlip:
    def test_unset_flip_follows_the_teacher(self) -> None:
        assert student_flip(TrainSpec(), meta(flip=False)) is False
        assert student_flip(TrainSpec(), meta("cifar10", flip=True)) is True

    def test_old_meta_without_flip_uses_the_dataset_rule(self) -> None:
        assert student_flip(TrainSpec(), meta("digits")) is False
        assert student_flip(TrainSpec(), meta("cifar10")) is True

    def test_an_explicit_train_flip_wins(self) -> None:
        assert student_flip(TrainSpec(flip=True), meta(flip=False)) is True
