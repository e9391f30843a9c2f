"""Criteria of a surrogate, measured from the teacher alone (no student training).

Frank & Davis (CVPR 2025, Sec. 5) name what makes a good KD dataset: the teacher's predictions on it cover all
classes evenly, the images are diverse, and they carry decision-boundary information. Each function below turns
one of those into a number and states its formula; `measure` computes all of them in one streaming teacher pass
over a population of images (the raw candidate pool, the built set, `study.criteria.populations`, or the batches
the student trains on, `study.criteria.trained`), on the teacher's device (CUDA when present), keeping only running
sums, so the pool can be as large as the caller wants.

K is the number of classes, N the number of images, p_i the teacher's softmax on image i (at temperature T where
named `_t`), f_i the teacher's penultimate feature vector (the input of its classifier layer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from study.data.shards.reader import to_teacher_input
from study.teacher.checkpoint import Teacher
from study.teacher.inference import normalise

log = logging.getLogger(__name__)

BOUNDARY_MARGIN = 0.2
VENDI_SAMPLE = 512  # Vendi's cost is O(n^3): a fixed-size sample keeps populations of any size comparable
EDGE_THRESHOLD = 0.1
NOT_DATA_FREE = frozenset({"frechet_val"})
"""Criteria that read the teacher's original data (its val split): not available in a data-free setting."""


# ----------------------------------------------------------------------------------------- the criteria
def class_entropy(histogram: np.ndarray) -> float:
    """H(q) / log K with q = histogram / N, the teacher's predicted-class distribution: 1 = perfectly even,
    0 = one class (the paper's criterion)."""
    h = np.asarray(histogram, dtype=np.float64)
    q = h[h > 0] / h.sum()
    return float(-(q * np.log(q)).sum() / math.log(len(h))) if len(h) > 1 else 0.0


def class_coverage(histogram: np.ndarray) -> float:
    """|{c : histogram_c > 0}| / K: the share of classes the teacher predicts at least once."""
    h = np.asarray(histogram)
    return float((h > 0).mean())


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """Per image max_c p_ic (its mean is the criterion): near 1 means few images near a decision boundary."""
    return probs.max(1).values


def prediction_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per image H(p_i) / log K (its mean is the criterion): how much dark knowledge the soft label carries."""
    k = probs.shape[1]
    return -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(k) if k > 1 else probs.new_zeros(len(probs))


def top2_margin(probs: torch.Tensor) -> torch.Tensor:
    """Per image p_i(1) - p_i(2), the gap between the two largest softmax values; `margin_mean` is its mean and
    `boundary_fraction` the share of images with a margin below `BOUNDARY_MARGIN` (close to a boundary)."""
    if probs.shape[1] < 2:
        return probs.new_ones(len(probs))
    top = probs.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(-sum_i s_i' log s_i') with s' = s / sum(s), s the singular values of the (N x D) feature matrix
    (Roy & Vetterli 2007): 1 when all features are parallel, D when they span D directions equally."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > s.max() * 1e-10] if s.size and s.max() > 0 else s[:0]
    if not s.size:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def vendi_score(features: torch.Tensor) -> float:
    """exp(-sum_i l_i log l_i), l the eigenvalues of K / n with K_ij = cos(f_i, f_j) (Friedman & Dieng 2023):
    the effective number of distinct images, 1 for n identical features, n for n orthogonal ones.

    K / n = U U^T / n for unit rows U shares its non-zero eigenvalues with U^T U / n, the smaller matrix is used.
    """
    if len(features) == 0:
        return 0.0
    unit = F.normalize(features.double(), dim=1).cpu().numpy()
    small = unit.T @ unit if unit.shape[1] < unit.shape[0] else unit @ unit.T
    lam = np.clip(np.linalg.eigvalsh(small / len(unit)), 0, None)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def class_spread(unit_sums: np.ndarray, counts: np.ndarray) -> float:
    """mean over predicted classes c with >= 2 images of 1 - |mean_{i in c} f_i / |f_i||: 0 when a class's
    features all point one way, near 1 when they scatter; the diversity within each predicted class."""
    keep = counts >= 2
    if not keep.any():
        return 0.0
    norms = np.linalg.norm(unit_sums[keep] / counts[keep, None], axis=1)
    return float((1.0 - norms).mean())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) between Gaussians fitted to two feature populations
    (the FID formula of Heusel et al. 2017, here in the teacher's feature space): 0 for identical moments."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean), 0.0))


def grey(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) pixels on the 0-255 scale (uint8, or float for trained batches) -> float (N, H, W) grey levels
    in [0, 1] (channel mean), for the image statistics."""
    return images.float().mean(1) / 255.0


def radial_power(grey_images: torch.Tensor) -> torch.Tensor:
    """Sum over images of the power spectrum |FFT(x - mean x)|^2, averaged over rings of integer radius
    1 .. min(H, W) // 2 (index r - 1); the input of `spectrum_slope`."""
    x = grey_images.double() - grey_images.double().mean((1, 2), keepdim=True)
    power = torch.fft.fft2(x).abs().square().sum(0)
    h, w = power.shape
    fy = torch.fft.fftfreq(h, device=power.device).view(-1, 1) * h
    fx = torch.fft.fftfreq(w, device=power.device).view(1, -1) * w
    radius = torch.sqrt(fy.square() + fx.square()).round().long()
    rmax = min(h, w) // 2
    sums = torch.zeros(rmax + 1, dtype=power.dtype, device=power.device).index_add_(
        0, radius.clamp(max=rmax).flatten(), power.flatten()
    )
    counts = torch.bincount(radius.clamp(max=rmax).flatten(), minlength=rmax + 1).to(power.dtype)
    return (sums / counts.clamp_min(1))[1:rmax]


def spectrum_slope(ring_power: np.ndarray) -> float:
    """Slope of the least-squares line through (log r, log P(r)), P the mean power at spatial frequency r:
    about -2 for natural images (van der Schaaf & van Hateren 1996), 0 for white noise; teacher-independent."""
    p = np.asarray(ring_power, dtype=np.float64)
    r = np.arange(1, len(p) + 1, dtype=np.float64)
    ok = p > 0
    if ok.sum() < 2:
        return 0.0
    return float(np.polyfit(np.log(r[ok]), np.log(p[ok]), 1)[0])


def edge_pixels(grey_images: torch.Tensor) -> tuple[int, int]:
    """(edge pixels, interior pixels): a pixel is an edge where the Sobel gradient magnitude, scaled so that a
    full-contrast step gives 1, exceeds `EDGE_THRESHOLD`; `edge_density` = edge pixels / interior pixels."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=grey_images.device) / 4
    x = grey_images.float().unsqueeze(1)
    gx = F.conv2d(x, kx.view(1, 1, 3, 3))
    gy = F.conv2d(x, kx.T.contiguous().view(1, 1, 3, 3))
    mag = torch.sqrt(gx.square() + gy.square())
    return int((mag > EDGE_THRESHOLD).sum()), mag.numel()


# ----------------------------------------------------------------------------------------- one streaming pass
@dataclass(frozen=True)
class FeatureMoments:
    """Mean and covariance of a population's penultimate features (the Fréchet reference)."""

    count: int
    mean: np.ndarray
    cov: np.ndarray


@dataclass(frozen=True)
class Criteria:
    values: dict[str, float]
    predicted_histogram: list[int]
    moments: FeatureMoments | None = None


def classifier_input_hook(model: nn.Module, num_classes: int, store: list[torch.Tensor]) -> Any:
    """Record the input of the model's classifier (the last `nn.Linear` with `num_classes` outputs, which every
    zoo and torchvision classifier ends in) as its penultimate features; returns the hook handle, or None."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        return None
    return heads[-1].register_forward_pre_hook(lambda _m, inputs: store.append(inputs[0].detach().flatten(1)))


@dataclass
class Accumulator:
    """Running sums of one population's pass; `values()` turns them into the criteria."""

    num_classes: int
    temperature: float
    device: torch.device
    n: int = 0
    histogram: torch.Tensor | None = None
    sums: dict[str, float] = field(default_factory=dict)
    feature_sum: torch.Tensor | None = None
    feature_gram: torch.Tensor | None = None
    class_unit_sums: torch.Tensor | None = None
    vendi_sample: list[torch.Tensor] = field(default_factory=list)
    ring_power: torch.Tensor | None = None
    edges: int = 0
    interior: int = 0

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value.double().sum())

    def add(self, logits: torch.Tensor, features: torch.Tensor, images: torch.Tensor) -> None:
        logits = logits.float()
        probs, probs_t = logits.softmax(1), (logits / self.temperature).softmax(1)
        pred = probs.argmax(1)
        hist = torch.bincount(pred, minlength=self.num_classes)
        self.histogram = hist if self.histogram is None else self.histogram + hist
        self._add("confidence", confidence(probs))
        self._add("confidence_t", confidence(probs_t))
        self._add("prediction_entropy", prediction_entropy(probs))
        self._add("prediction_entropy_t", prediction_entropy(probs_t))
        margin = top2_margin(probs)
        self._add("margin_mean", margin)
        self._add("boundary_fraction", (margin < BOUNDARY_MARGIN).float())
        f = features.double()
        unit = F.normalize(f, dim=1)
        if self.feature_sum is None:
            d = f.shape[1]
            self.feature_sum = f.new_zeros(d)
            self.feature_gram = f.new_zeros(d, d)
            self.class_unit_sums = f.new_zeros(self.num_classes, d)
        assert self.feature_gram is not None and self.class_unit_sums is not None
        self.feature_sum += f.sum(0)
        self.feature_gram += f.T @ f
        self.class_unit_sums.index_add_(0, pred, unit)
        taken = sum(len(v) for v in self.vendi_sample)
        if taken < VENDI_SAMPLE:
            self.vendi_sample.append(f[: VENDI_SAMPLE - taken])
        g = grey(images)
        ring = radial_power(g)
        self.ring_power = ring if self.ring_power is None else self.ring_power + ring
        edges, interior = edge_pixels(g)
        self.edges, self.interior = self.edges + edges, self.interior + interior
        self.n += len(logits)

    def moments(self) -> FeatureMoments:
        assert self.feature_sum is not None and self.feature_gram is not None
        mean = (self.feature_sum / self.n).cpu().numpy()
        gram = self.feature_gram.cpu().numpy()
        cov = (gram - self.n * np.outer(mean, mean)) / max(self.n - 1, 1)
        return FeatureMoments(self.n, mean, cov)

    def values(self, reference: FeatureMoments | None) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no images to measure criteria on")
        assert self.histogram is not None and self.feature_gram is not None and self.class_unit_sums is not None
        hist = self.histogram.cpu().numpy()
        out = {"class_entropy": class_entropy(hist), "class_coverage": class_coverage(hist)}
        out |= {name: total / self.n for name, total in self.sums.items()}
        gram_eig = np.linalg.eigvalsh(self.feature_gram.cpu().numpy())
        out["feature_effective_rank"] = effective_rank(np.sqrt(np.clip(gram_eig, 0, None)))
        out["feature_vendi"] = vendi_score(torch.cat(self.vendi_sample))
        out["feature_class_spread"] = class_spread(self.class_unit_sums.cpu().numpy(), hist)
        assert self.ring_power is not None
        out["spectrum_slope"] = spectrum_slope(self.ring_power.cpu().numpy())
        out["edge_density"] = self.edges / max(self.interior, 1)
        if reference is not None:
            mine = self.moments()
            out["frechet_val"] = frechet_distance(mine.mean, mine.cov, reference.mean, reference.cov)
        return out


@torch.no_grad()
def measure(
    teacher: Teacher,
    batches: Iterable[np.ndarray],
    temperature: float = 1.0,
    reference: FeatureMoments | None = None,
) -> Criteria:
    """Every criterion of a population given as uint8 (n, H, W, C) batches, in one pass on the teacher's device.

    `temperature` is the arm's KD temperature (the `_t` criteria); `reference` the teacher's val-split feature
    moments for `frechet_val` (omitted when None). Without a classifier layer to hook, logits stand in for features.
    """
    meta = teacher.meta
    device = next(teacher.model.parameters()).device

    def inputs() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            x = to_teacher_input(x, meta.channels, meta.image_size)
            yield normalise(x, meta.mean, meta.std), x

    return _measure(teacher, inputs(), temperature, reference)


@torch.no_grad()
def measure_normalised(
    teacher: Teacher,
    batches: Iterable[torch.Tensor],
    temperature: float = 1.0,
    reference: FeatureMoments | None = None,
) -> Criteria:
    """`measure` on batches the teacher takes as they are: normalised float (n, C, H, W) at its input (what the
    student trains on after augmentation, mixup and an online attack; `study.criteria.trained`). The image
    statistics read the pixels back as (x * std + mean) on the 0-255 scale."""
    meta = teacher.meta
    device = next(teacher.model.parameters()).device
    mean = torch.tensor(meta.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, device=device).view(1, -1, 1, 1)

    def inputs() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for batch in batches:
            x = batch.to(device).float()
            yield x, (x * std + mean).clamp(0.0, 1.0) * 255.0

    return _measure(teacher, inputs(), temperature, reference)


def _measure(
    teacher: Teacher,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    temperature: float,
    reference: FeatureMoments | None,
) -> Criteria:
    """The one teacher pass: `inputs` yields (normalised input, pixels on the 0-255 scale) per batch."""
    meta, model = teacher.meta, teacher.model
    device = next(model.parameters()).device
    store: list[torch.Tensor] = []
    handle = classifier_input_hook(model, meta.num_classes, store)
    if handle is None:
        log.warning("teacher %s has no classifier layer to hook: feature criteria use its logits", meta.arch)
    acc = Accumulator(meta.num_classes, temperature, device)
    was_training = model.training
    model.eval()
    try:
        for x, pixels in inputs:
            store.clear()
            logits = model(x).float()
            acc.add(logits, store[-1] if store else logits, pixels)
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    values = acc.values(reference)
    assert acc.histogram is not None
    return Criteria(values, acc.histogram.cpu().long().tolist(), acc.moments())


def criteria_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> Criteria:
    """The prediction criteria of given logits (features = logits, no image statistics worth reading)."""
    acc = Accumulator(logits.shape[1], temperature, logits.device)
    images = torch.zeros(len(logits), 1, 8, 8, dtype=torch.uint8)
    acc.add(logits, logits, images)
    assert acc.histogram is not None
    return Criteria(acc.values(None), acc.histogram.long().tolist())


def batched(images: np.ndarray, size: int = 512) -> Iterable[np.ndarray]:
    for i in range(0, len(images), size):
        yield images[i : i + size]
