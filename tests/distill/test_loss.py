"""KD loss against values computed by hand."""

from __future__ import annotations

import math

import torch

from study.distill.loss import kd_loss, onehot_kd_loss


def test_kd_loss_matches_hand_computed_golden_value() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[3.0, 2.0, 1.0]])
    temperature = 2.0
    ps = [math.exp(v / 2) for v in (1, 2, 3)]
    pt = [math.exp(v / 2) for v in (3, 2, 1)]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    golden = 4.0 * sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    assert math.isclose(kd_loss(s, t, temperature).item(), golden, rel_tol=1e-5)
    # p_s = softmax([.5, 1, 1.5]) = [.1863, .3072, .5065], p_t its reverse; log-ratios are +-1 exactly
    assert math.isclose(golden, 4 * (0.50648 - 0.18632), abs_tol=1e-4)


def test_kd_loss_is_zero_when_student_equals_teacher() -> None:
    x = torch.randn(8, 10)
    assert kd_loss(x, x.clone(), 4.0).abs().item() < 1e-6


def test_kd_loss_scales_with_temperature_squared_and_averages_over_batch() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 3, 1), torch.softmax(t / 3, 1), reduction="sum").item() / 4
    assert math.isclose(kd_loss(s, t, 3.0).item(), 9 * kl, rel_tol=1e-5)


def test_onehot_variant_is_cross_entropy_to_teacher_argmax() -> None:
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    expected = torch.nn.functional.cross_entropy(s, t.argmax(1))
    assert torch.allclose(onehot_kd_loss(s, t), expected)
