"""Criteria of a surrogate, measured from the teacher alone (no student training).

Frank & Davis (CVPR 2025, Sec. 5) name what makes a good KD dataset: the teacher's predictions on it cover all
classes evenly, the images are diverse, and they carry decision-boundary information. Each criterion here turns one
of those into a number from teacher forward passes on the first `max_images` images of a surrogate, so the report
can ask which of them predict distillation quality.

- `class_entropy`: entropy of the teacher's predicted-class histogram divided by log(K); 1 = perfectly even.
- `class_coverage`: fraction of the K classes the teacher predicts at least once.
- `mean_confidence`: mean max-softmax; near 1 means few images near a boundary.
- `boundary_fraction`: fraction of images whose top-2 softmax margin is below 0.2 (close to a decision boundary).
- `soft_label_entropy`: mean entropy of the teacher's softmax, over log(K): how much dark knowledge each image carries.
- `feature_diversity`: mean pairwise cosine distance of the teacher's logit vectors (a cheap diversity proxy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from study.data.loader import to_teacher_input
from study.teacher import Teacher, normalise, predict

BOUNDARY_MARGIN = 0.2


@dataclass(frozen=True)
class Criteria:
    values: dict[str, float]
    predicted_histogram: list[int]


def measure(teacher: Teacher, images: np.ndarray, batch_size: int = 512) -> Criteria:
    """Criteria of uint8 (N, H, W, C) images (any size/channels; adapted to the teacher's input first)."""
    meta = teacher.meta
    device = next(teacher.model.parameters()).device
    x = to_teacher_input(torch.from_numpy(images), meta.channels, meta.image_size)
    x = normalise(x.to(device), meta.mean, meta.std)
    logits = predict(teacher.model, x, batch_size)
    return criteria_from_logits(logits)


def criteria_from_logits(logits: torch.Tensor) -> Criteria:
    k = logits.shape[1]
    probs = logits.float().softmax(1)
    pred = probs.argmax(1)
    hist = torch.bincount(pred, minlength=k).double()
    p_hist = hist / hist.sum()
    nz = p_hist[p_hist > 0]
    top2 = probs.topk(min(2, k), dim=1).values
    margin = top2[:, 0] - (top2[:, 1] if k > 1 else 0)
    entropy = -(probs.clamp_min(1e-12).log() * probs).sum(1)
    unit = logits.float() - logits.float().mean(1, keepdim=True)
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sample = unit[: min(len(unit), 2048)]
    n = len(sample)
    cos = sample @ sample.T
    mean_cos = (cos.sum() - cos.diagonal().sum()) / max(n * (n - 1), 1)
    values = {
        "class_entropy": float(-(nz * nz.log()).sum() / math.log(k)),
        "class_coverage": float((hist > 0).double().mean()),
        "mean_confidence": float(top2[:, 0].mean()),
        "boundary_fraction": float((margin < BOUNDARY_MARGIN).float().mean()),
        "soft_label_entropy": float(entropy.mean() / math.log(k)),
        "feature_diversity": float(1.0 - mean_cos),
    }
    return Criteria(values, hist.long().tolist())
