"""Distillation losses.

The study uses Hinton et al.'s KD loss alone (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"; Frank & Davis, CVPR 2025, Sec. 3): no hard-label term, because a surrogate's own labels (if it has any)
mean nothing to the teacher. The one-hot variant is the paper's ablation of soft labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, averaged over the batch.

    The `T^2` factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015, Sec. 2).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def onehot_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the teacher's top-1 class: the 'hard teacher labels' ablation."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=1))
