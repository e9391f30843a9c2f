"""Everything checkable is checked before anything runs, and each error names the file and the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from study.config import SpecError, load_card, load_study
from study.data.build_plan import BuildResult
from study.data.shards import Manifest
from study.orchestrate.pipeline import check_arm_sizes, run_study

BASE = {"name": "v", "arms": [{"name": "a", "card": "digits_train"}]}


def study_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, **changes}))
    return path


def refused(path: Path, *fragments: str) -> None:
    with pytest.raises(SpecError) as err:
        run_study(load_study(path), root=str(path.parent), spec_path=str(path))
    for fragment in (str(path), *fragments):
        assert fragment in str(err.value)


def test_an_unknown_student_arch_is_refused_naming_the_field(tmp_path: Path) -> None:
    refused(study_file(tmp_path, student={"arch": "resnet9000"}), "student.arch", "resnet9000")


def test_a_teacher_load_teacher_cannot_build_is_refused_naming_its_meta(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "weights.pt").write_bytes(b"not a state dict")
    meta = {
        "arch": "resnet9000",
        "num_classes": 10,
        "classes": list("0123456789"),
        "image_size": 32,
        "channels": 1,
        "mean": [0.5],
        "std": [0.25],
        "dataset": "digits",
        "weights_sha256": hashlib.sha256(b"not a state dict").hexdigest(),
    }
    (teacher / "meta.json").write_text(json.dumps(meta))
    path = study_file(tmp_path, teacher={"uri": str(teacher)})
    refused(path, str(teacher / "meta.json"), "arch 'resnet9000'", "teacher.uri")
    assert not (tmp_path / "shards").exists()  # refused before any build


def test_an_int_field_searched_as_uniform_is_refused(tmp_path: Path) -> None:
    path = study_file(tmp_path, search={"space": {"batch_size": {"type": "uniform", "low": 16, "high": 64}}})
    with pytest.raises(SpecError, match=r"search\.space.*'batch_size' is a int field.*not 'uniform'"):
        load_study(path)


def test_a_searched_range_outside_the_fields_bounds_is_refused(tmp_path: Path) -> None:
    path = study_file(tmp_path, search={"space": {"momentum": {"type": "uniform", "low": 0.5, "high": 1.5}}})
    with pytest.raises(SpecError, match=r"search\.space.*'momentum'.*1\.5"):
        load_study(path)


def test_a_bool_field_is_searched_only_as_a_choice_of_bools(tmp_path: Path) -> None:
    path = study_file(tmp_path, search={"space": {"mixup": {"type": "choice", "values": [True, "sometimes"]}}})
    with pytest.raises(SpecError, match=r"search\.space.*'mixup'.*sometimes"):
        load_study(path)


def test_a_searched_name_an_arm_fixes_is_refused(tmp_path: Path) -> None:
    arms = [{"name": "a", "card": "digits_train"}, {"name": "b", "card": "digits_train", "train": {"lr": 1.0}}]
    path = study_file(tmp_path, arms=arms, search={"space": {"lr": {"type": "loguniform", "low": 0.01, "high": 1}}})
    with pytest.raises(SpecError, match=r"arms\.1\.train: arm 'b' fixes \['lr'\]"):
        load_study(path)


def test_an_arm_of_zero_images_is_refused(tmp_path: Path) -> None:
    path = study_file(tmp_path, arms=[{"name": "a", "card": "digits_train", "count": 0}])
    with pytest.raises(SpecError, match=r"arms\.0\.count"):
        load_study(path)


def test_a_card_of_zero_images_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "card.yaml"
    path.write_text("name: c\nkind: generated\ngenerator: uniform_noise\ncount: 0\n")
    with pytest.raises(SpecError, match=rf"(?s){path}.*count"):
        load_card(path)


def test_a_built_surrogate_of_zero_images_is_refused_naming_the_arm(tmp_path: Path) -> None:
    spec = load_study(study_file(tmp_path))
    empty = Manifest(
        name="digits_train", kind="real", card={}, seed=0, count=0, image_size=32, channels=1, images_per_sample=256,
        labelled=True, shards=[],
    )  # fmt: skip
    builds = {"digits_train": BuildResult(str(tmp_path / "shards"), empty, 0, 0, reused=True)}
    with pytest.raises(SpecError, match=r"study\.yaml: arms\.0 \('a'\).*0 images"):
        check_arm_sizes(spec, builds, {"a": "digits_train"}, str(tmp_path / "study.yaml"))


def test_an_arm_smaller_than_a_batch_is_accepted_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_study(study_file(tmp_path, arms=[{"name": "small", "card": "digits_train", "count": 10}]))
    manifest = Manifest(
        name="digits_train", kind="real", card={}, seed=0, count=1257, image_size=32, channels=1, images_per_sample=256,
        labelled=True, shards=[],
    )  # fmt: skip
    builds = {"digits_train": BuildResult(str(tmp_path), manifest, 0, 0, reused=True)}
    check_arm_sizes(spec, builds, {"small": "digits_train"}, "study.yaml")
    assert "arm 'small' has 10 images, fewer than one batch of 256" in caplog.text
