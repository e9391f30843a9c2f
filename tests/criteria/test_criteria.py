"""Teacher-side criteria on constructed inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from study.criteria.measures import (
    FeatureMoments,
    class_coverage,
    class_entropy,
    class_spread,
    criteria_from_logits,
    edge_pixels,
    effective_rank,
    frechet_distance,
    grey,
    measure,
    prediction_entropy,
    radial_power,
    spectrum_slope,
    top2_margin,
    vendi_score,
)
from study.data.generators.registry import create_generator
from study.teacher.checkpoint import Teacher, TeacherMeta


class TestPredictionCriteria:
    def test_class_entropy_is_one_for_evenly_spread_predictions(self) -> None:
        c = criteria_from_logits(torch.eye(10).repeat(5, 1) * 10).values
        assert math.isclose(c["class_entropy"], 1.0, abs_tol=1e-9) and c["class_coverage"] == 1.0

    def test_single_predicted_class_has_zero_entropy_and_one_class_coverage(self) -> None:
        logits = torch.zeros(20, 4)
        logits[:, 2] = 5.0
        crit = criteria_from_logits(logits)
        assert crit.values["class_entropy"] == 0.0 and crit.values["class_coverage"] == 0.25
        assert crit.predicted_histogram == [0, 0, 20, 0]

    def test_class_entropy_of_two_equal_classes_out_of_four_is_one_half(self) -> None:
        assert class_entropy(np.array([5, 5, 0, 0])) == pytest.approx(0.5)
        assert class_coverage(np.array([5, 5, 0, 0])) == 0.5

    def test_uniform_softmax_has_entropy_one_and_confidence_one_over_k(self) -> None:
        c = criteria_from_logits(torch.zeros(7, 5)).values
        assert c["prediction_entropy"] == pytest.approx(1.0) and c["confidence"] == pytest.approx(0.2)
        assert c["margin_mean"] == pytest.approx(0.0) and c["boundary_fraction"] == 1.0

    def test_one_hot_softmax_has_entropy_zero(self) -> None:
        probs = torch.eye(4)
        assert prediction_entropy(probs).tolist() == pytest.approx([0.0] * 4)
        assert top2_margin(probs).tolist() == pytest.approx([1.0] * 4)

    def test_temperature_flattens_the_softmax(self) -> None:
        c = criteria_from_logits(torch.tensor([[4.0, 0.0, 0.0]]), temperature=4.0).values
        expected = math.exp(1) / (math.exp(1) + 2)
        assert c["confidence_t"] == pytest.approx(expected) and c["confidence"] > c["confidence_t"]
        assert c["prediction_entropy_t"] > c["prediction_entropy"]

    def test_boundary_fraction_counts_small_top2_margins(self) -> None:
        c = criteria_from_logits(torch.tensor([[0.0, 0.01, -5], [10.0, 0.0, 0.0]])).values
        assert c["boundary_fraction"] == 0.5
        assert 0.5 < c["confidence"] < 1.0


class TestFeatureCriteria:
    def test_identical_features_have_effective_rank_one_and_vendi_one(self) -> None:
        f = torch.ones(50, 8) * torch.arange(1.0, 9.0)
        assert effective_rank(torch.linalg.svdvals(f).numpy()) == pytest.approx(1.0)
        assert vendi_score(f) == pytest.approx(1.0)

    def test_orthogonal_features_have_full_effective_rank_and_vendi_n(self) -> None:
        f = torch.eye(6) * 3
        assert effective_rank(torch.linalg.svdvals(f).numpy()) == pytest.approx(6.0)
        assert vendi_score(f) == pytest.approx(6.0)

    def test_class_spread_is_zero_for_aligned_features_and_one_for_cancelling_ones(self) -> None:
        same = np.array([[4.0, 0.0], [0.0, 0.0]])  # class 0: 4 unit vectors along x
        assert class_spread(same, np.array([4, 0])) == pytest.approx(0.0)
        assert class_spread(np.zeros((1, 2)), np.array([2])) == pytest.approx(1.0)  # two opposite unit vectors

    def test_frechet_distance_is_zero_for_equal_moments_and_the_mean_shift_squared_otherwise(self) -> None:
        cov = np.diag([1.0, 2.0, 3.0])
        assert frechet_distance(np.zeros(3), cov, np.zeros(3), cov) == pytest.approx(0.0, abs=1e-9)
        assert frechet_distance(np.zeros(3), cov, np.array([3.0, 4.0, 0.0]), cov) == pytest.approx(25.0)
        # 1-D: (s1 - s2)^2 for variances s1^2, s2^2
        assert frechet_distance(np.zeros(1), np.eye(1) * 4, np.zeros(1), np.eye(1)) == pytest.approx(1.0)


class TestImageCriteria:
    def test_spectrum_slope_recovers_the_generator_alpha(self) -> None:
        for alpha in (0.0, 2.0):
            gen = create_generator("spectral_noise", {"alpha": alpha}) if alpha else create_generator("gaussian_noise")
            images = torch.from_numpy(gen.generate(0, 0, 64, 32)).permute(0, 3, 1, 2)
            slope = spectrum_slope(radial_power(grey(images)).numpy())
            assert slope == pytest.approx(-alpha, abs=0.3)

    def test_edge_density_is_zero_for_flat_images_and_counts_a_step(self) -> None:
        flat = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
        assert edge_pixels(grey(flat)) == (0, 72)
        step = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
        step[..., 4:] = 255
        edges, interior = edge_pixels(grey(step))
        assert (edges, interior) == (12, 36)  # the two interior columns next to the step, 6 rows each


class Linear(nn.Module):
    """A teacher whose penultimate features are the flattened image and whose logits are known."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Flatten()
        self.fc = nn.Linear(3 * 4 * 4, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def test_measure_streams_batches_and_hooks_the_classifier_input() -> None:
    meta = TeacherMeta(
        arch="linear",
        num_classes=3,
        classes=["a", "b", "c"],
        image_size=4,
        channels=3,
        mean=[0.0] * 3,
        std=[1.0] * 3,
        dataset="none",
        weights_sha256="0" * 64,
    )
    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    one = measure(Teacher(Linear(), meta), [images], temperature=2.0)
    many = measure(Teacher(Linear(), meta), [images[:7], images[7:30], images[30:]], temperature=2.0)
    assert one.predicted_histogram == many.predicted_histogram == [0, 40, 0]
    for name, value in one.values.items():
        assert many.values[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    features = images.transpose(0, 3, 1, 2).reshape(40, -1) / 255.0  # the classifier's input: normalised pixels
    assert one.moments is not None
    np.testing.assert_allclose(one.moments.mean, features.mean(0), atol=1e-6)
    np.testing.assert_allclose(one.moments.cov, np.cov(features.T), atol=1e-6)
    ref = FeatureMoments(one.moments.count, one.moments.mean, one.moments.cov)
    again = measure(Teacher(Linear(), meta), [images], reference=ref)
    assert again.values["frechet_val"] == pytest.approx(0.0, abs=1e-6)
    assert one.values["class_entropy"] == 0.0 and one.values["confidence"] == pytest.approx(math.e / (math.e + 2))
