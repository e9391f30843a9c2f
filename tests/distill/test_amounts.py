"""Amount sweeps: `counts:` expansion, nested deterministic subsets, balanced prefixes, the epochs budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from study.config import BudgetSpec, CardSpec, SpecError, StudySpec, load_study
from study.data.build import build_surrogate
from study.data.shards.reader import ShardStream, read_all
from study.distill.trial import KDTrial, TrialPaths
from study.orchestrate.validation import load_cards
from study.teacher.checkpoint import load_teacher


def spec_with(arms: list[dict], **extra) -> StudySpec:
    return StudySpec.model_validate({"name": "amounts", "arms": arms, **extra})


def first_batch(root: str, manifest, limit: int, seed: int = 0) -> np.ndarray:
    """One epoch of a `limit`-image stream as one batch (the shuffle buffer holds all of it)."""
    return next(iter(ShardStream(root, manifest, batch_size=limit, seed=seed, limit=limit))).numpy()


def as_rows(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


class TestCountsExpansion:
    def test_counts_expand_into_one_arm_per_amount(self) -> None:
        spec = spec_with(
            [{"name": "leaves", "card": "dead_leaves", "counts": [2000, 500, 1000]}, {"name": "d", "card": "x"}]
        )
        assert [(a.name, a.count, a.amount_of) for a in spec.arms] == [
            ("leaves_n500", 500, "leaves"),
            ("leaves_n1000", 1000, "leaves"),
            ("leaves_n2000", 2000, "leaves"),
            ("d", None, None),
        ]

    def test_count_and_counts_together_is_an_error_naming_the_field(self, tmp_path: Path) -> None:
        path = tmp_path / "s.yaml"
        path.write_text(
            yaml.safe_dump({"name": "s", "arms": [{"name": "a", "card": "x", "count": 5, "counts": [1, 2]}]})
        )
        with pytest.raises(SpecError, match=r"(?s)s.yaml: .*arms\.0\.counts: arm 'a' sets both 'count' and 'counts'"):
            load_study(path)

    def test_a_count_above_the_surrogates_size_is_an_error_naming_counts(self) -> None:
        spec = spec_with([{"name": "leaves", "card": "dead_leaves", "counts": [100, 4096]}])
        with pytest.raises(SpecError, match=r"arm 'leaves_n4096': counts of arm 'leaves': 4096 exceeds .* count 2048"):
            load_cards(spec)

    def test_bad_counts_are_refused(self) -> None:
        for counts in ([], [0, 5], [5, 5], "100"):
            with pytest.raises(ValueError, match=r"arms\.0\.counts"):
                spec_with([{"name": "a", "card": "x", "counts": counts}])


class TestNestedSubsets:
    def test_amounts_are_nested_and_deterministic(self, tmp_path: Path) -> None:
        card = CardSpec(name="digits", kind="real", source={"name": "digits"}, images_per_sample=64)
        result = build_surrogate(card, str(tmp_path))
        stored, _ = read_all(result.root, result.manifest)
        small, large = first_batch(result.root, result.manifest, 100), first_batch(result.root, result.manifest, 300)
        assert as_rows(small) == as_rows(stored[:100]) and as_rows(large) == as_rows(stored[:300])
        assert as_rows(small) < as_rows(large)
        np.testing.assert_array_equal(small, first_batch(result.root, result.manifest, 100))

    def test_the_first_n_of_a_balanced_build_are_balanced(self, digits_teacher: Path, tmp_path: Path) -> None:
        teacher = load_teacher(str(digits_teacher))
        card = CardSpec(
            name="bal", kind="real", source={"name": "digits"}, balance={"per_class": 12}, images_per_sample=32
        )
        result = build_surrogate(card, str(tmp_path), teacher=teacher)
        _, preds = read_all(result.root, result.manifest, field="teacher_predictions")
        for n in (10, 30, 60, 120):
            assert np.bincount(preds[:n], minlength=10).tolist() == [n // 10] * 10


class TestBudgetMode:
    def test_images_is_the_default_and_epochs_scales_with_the_amount(self) -> None:
        assert BudgetSpec().mode == "images" and BudgetSpec().images_for(10) == (20_000_000, 1_000_000)
        epochs = BudgetSpec(mode="epochs", epochs=6, report_every_epochs=2)
        assert epochs.images_for(500) == (3000, 1000) and epochs.reports == 3

    def test_fields_of_the_other_mode_are_errors(self) -> None:
        with pytest.raises(ValueError, match="apply to mode 'images'"):
            BudgetSpec(mode="epochs", epochs=2, images=100)
        with pytest.raises(ValueError, match="needs 'epochs'"):
            BudgetSpec(mode="epochs")
        with pytest.raises(ValueError, match="apply to mode 'epochs'"):
            BudgetSpec(epochs=3)
        for budget in (BudgetSpec(), BudgetSpec(mode="epochs", epochs=2)):  # trials receive the spec as JSON
            assert BudgetSpec.model_validate_json(budget.model_dump_json()) == budget

    def test_an_epochs_trial_trains_its_amount_times_epochs(self, digits_teacher: Path, tmp_path: Path) -> None:
        build_surrogate(CardSpec(name="digits_train", kind="real", source={"name": "digits"}), str(tmp_path))
        spec = spec_with(
            [{"name": "d", "card": "digits_train", "counts": [64]}],
            train={"batch_size": 32, "randaugment_ops": 0, "mixup": False},
            budget={"mode": "epochs", "epochs": 2, "report_every_epochs": 1, "eval_batch_size": 128},
        )
        card = CardSpec(name="digits_train", kind="real", source={"name": "digits"})
        trial = KDTrial(spec, spec.arm("d_n64"), TrialPaths(str(digits_teacher), str(tmp_path), cards={"d_n64": card}))
        reports: list[dict] = []
        trial.run(lambda m, _: reports.append(m))
        assert [r["images_seen"] for r in reports] == [64.0, 128.0] and reports[-1]["budget_images"] == 128.0
