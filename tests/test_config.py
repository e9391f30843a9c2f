"""Specs and cards: validated at load time, with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import SpecError, load_card, load_study
from study.resources import bundled_dir


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestStudySpec:
    def test_bundled_quickstart_spec_loads(self) -> None:
        spec = load_study(bundled_dir("tune_spaces") / "quickstart.yaml")
        assert [a.name for a in spec.arms] == [
            "digits_train",
            "photo_crops",
            "dead_leaves",
            "random_strokes",
            "gaussian_noise",
        ]

    def test_unknown_key_names_file_and_field(self, tmp_path: Path) -> None:
        path = write(tmp_path, "s.yaml", "name: x\narms: [{name: a, card: digits_train}]\nbudget: {imagez: 5}\n")
        with pytest.raises(SpecError) as err:
            load_study(path)
        assert str(path) in str(err.value) and "budget.imagez: unknown field" in str(err.value)

    def test_wrong_type_names_field(self, tmp_path: Path) -> None:
        path = write(tmp_path, "s.yaml", "name: x\narms: [{name: a, card: c}]\nsearch: {trials_per_arm: many}\n")
        with pytest.raises(SpecError, match=r"search\.trials_per_arm"):
            load_study(path)

    def test_missing_file_names_path(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match=r"nope\.yaml: file not found"):
            load_study(tmp_path / "nope.yaml")

    def test_searching_an_unknown_hyperparameter_is_refused(self, tmp_path: Path) -> None:
        text = "name: x\narms: [{name: a, card: c}]\nsearch: {space: {lrr: {type: uniform, low: 0, high: 1}}}\n"
        with pytest.raises(SpecError, match="cannot search"):
            load_study(write(tmp_path, "s.yaml", text))

    def test_duplicate_arm_names_are_refused(self, tmp_path: Path) -> None:
        text = "name: x\narms: [{name: a, card: c}, {name: a, card: d}]\n"
        with pytest.raises(SpecError, match="unique"):
            load_study(write(tmp_path, "s.yaml", text))

    def test_science_hash_ignores_storage_tracking_and_resources(self, tmp_path: Path) -> None:
        base = "name: x\narms: [{name: a, card: c}]\n"
        a = load_study(write(tmp_path, "a.yaml", base))
        b = load_study(write(tmp_path, "b.yaml", base + "storage: {root: /elsewhere}\nresources: {cpu: 4}\n"))
        c = load_study(write(tmp_path, "c.yaml", base + "train: {lr: 0.05}\n"))
        assert a.science_hash() == b.science_hash() != c.science_hash()


class TestCards:
    def test_every_bundled_card_loads(self) -> None:
        cards = sorted(bundled_dir("datasets").glob("*.yaml"))
        assert cards
        for path in cards:
            assert load_card(path).name == path.stem

    def test_generated_card_without_generator_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="needs a 'generator'"):
            load_card(write(tmp_path, "c.yaml", "name: c\nkind: generated\ncount: 5\n"))

    def test_yaml_syntax_error_names_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "c.yaml", "name: [unclosed\n")
        with pytest.raises(SpecError, match="not valid YAML"):
            load_card(path)
