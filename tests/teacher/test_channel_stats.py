"""Teacher normalisation statistics: a channel constant over the dataset must still give a usable std."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.distill.augment import AugmentConfig, BatchAugment
from study.teacher.checkpoint import channel_stats


def test_a_constant_channel_gets_one_grey_level_of_std_and_normalises() -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((16, 8, 8, 3), np.uint8)
    images[..., 0] = rng.integers(0, 256, (16, 8, 8))
    images[..., 1] = 77  # constant: std 0 before the floor
    mean, std = channel_stats(images)
    assert mean[1] == pytest.approx(77 / 255) and mean[2] == 0.0
    assert std[1] == std[2] == pytest.approx(1 / 255)
    assert std[0] == pytest.approx(images[..., 0].std() / 255)
    augment = BatchAugment(AugmentConfig(), mean, std)  # refuses std 0: the teacher could not be trained
    batch = augment(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.Generator().manual_seed(0))
    assert torch.isfinite(batch).all()
