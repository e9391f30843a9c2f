"""Teacher-side criteria on logits whose answers are known."""

from __future__ import annotations

import math

import torch

from study.criteria import criteria_from_logits


def test_class_entropy_is_one_for_evenly_spread_predictions() -> None:
    logits = torch.eye(10).repeat(5, 1) * 10
    c = criteria_from_logits(logits).values
    assert math.isclose(c["class_entropy"], 1.0, abs_tol=1e-9) and c["class_coverage"] == 1.0


def test_single_predicted_class_has_zero_entropy_and_one_class_coverage() -> None:
    logits = torch.zeros(20, 4)
    logits[:, 2] = 5.0
    crit = criteria_from_logits(logits)
    assert crit.values["class_entropy"] == 0.0 and crit.values["class_coverage"] == 0.25
    assert crit.predicted_histogram == [0, 0, 20, 0]


def test_boundary_fraction_counts_small_top2_margins() -> None:
    logits = torch.tensor([[0.0, 0.01, -5], [10.0, 0.0, 0.0]])
    c = criteria_from_logits(logits).values
    assert c["boundary_fraction"] == 0.5
    assert 0.5 < c["mean_confidence"] < 1.0
