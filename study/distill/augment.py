"""Batched, per-image augmentation: the training recipe of Frank & Davis (CVPR 2025, arXiv 2411.12817).

The paper's public code applies, per image with torchvision v2, a resize and a random crop to the input size,
``RandAugment(num_ops=2,
magnitude=14)`` (4 ops for synthetic surrogates, plus ``ElasticTransform(alpha=50, sigma=5)`` at p=0.5 and
``RandomInvert`` at p=0.1 for shaders), a horizontal flip, a pad-and-crop filled with the dataset mean,
``ToDtype`` + ``Normalize``, then mixup with lambda ~ Beta(1, 1) on the batch. Calling torchvision's v2
transforms on a batch would draw ONE set of parameters for the whole batch, which is a different recipe; this
module draws every parameter per image and applies them to an (N, C, H, W) batch at once, on CPU or CUDA.

Order and where it departs from torchvision (each departure is distributional noise, not a change of recipe):

* Crop: ``crop="random"`` (default) is the authors' ``Resize(size)`` + ``RandomCrop(size)`` (their
  ``utils/transforms.py``): the images already come at the teacher's square input size, so that crop is the whole
  image, the identity, and draws nothing. ``crop="random_resized"`` is kd-study's earlier RandomResizedCrop (area
  ``crop_scale``, ratio 3/4-4/3), kept as an option (and used to train teachers).
* Geometry: crop, the geometric RandAugment ops (ShearX/Y about the top-left corner, TranslateX/Y by whole
  pixels, Rotate about the centre, torchvision's magnitudes) and the elastic displacement are composed into
  ONE sampling grid per image (``F.affine_grid`` / ``F.grid_sample``, bilinear, fill = mean). torchvision
  resamples once per op with nearest interpolation for RandAugment; composing avoids stacking interpolation
  blur. Because geometry runs first, colour ops drawn BEFORE a geometric op also touch its fill region.
* Colour ops run in their drawn slot order on float images in [0, 1] (clamped after each op, no uint8 rounding
  between ops). Posterize and Equalize quantise to uint8 levels first; Equalize then uses torchvision's
  batched per-image, per-channel kernel, so it is exact on those levels. Color is identity on grey (C=1).
* Flip and pad-crop (integer shifts, fill = mean, i.e. zero after normalisation) run last as one gather; both
  commute with every colour op, so their place after the colour ops is exact.
* Mixup lambda ~ Beta(1, 1) is Uniform(0, 1), drawn per sample: ``x_mix = lam * x + (1 - lam) * x[perm]``.

All randomness comes from one ``torch.Generator`` (on CPU), so a seeded trial is reproducible on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import equalize

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
"""torchvision v2 ``RandAugment``'s op space, in its order; an op is drawn uniformly per image and slot."""
OP_INDEX = {name: i for i, name in enumerate(OPS)}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED_OPS = (*GEOMETRIC_OPS, "Brightness", "Color", "Contrast", "Sharpness")
NUM_BINS = 31
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """The recipe's knobs; defaults are the paper's real-data recipe.

    Synthetic surrogates (shaders) use ``randaugment_ops=4, elastic_p=0.5, invert_p=0.1``. ``crop_scale`` applies
    to ``crop="random_resized"`` only.
    """

    crop: Literal["random", "random_resized"] = "random"
    crop_scale: tuple[float, float] = (0.35, 1.0)
    randaugment_ops: int = 2
    randaugment_magnitude: int = 14
    elastic_p: float = 0.0
    invert_p: float = 0.0
    flip: bool = True
    pad_fraction: float = 0.125
    mixup: bool = True

    def __post_init__(self) -> None:
        if self.crop not in ("random", "random_resized"):
            raise ValueError(f"AugmentConfig.crop must be 'random' or 'random_resized', got {self.crop!r}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"AugmentConfig.crop_scale needs 0 < low <= high <= 1, got {self.crop_scale}")
        if self.randaugment_ops < 0:
            raise ValueError(f"AugmentConfig.randaugment_ops must be >= 0, got {self.randaugment_ops}")
        if not 0 <= self.randaugment_magnitude < NUM_BINS:
            raise ValueError(
                f"AugmentConfig.randaugment_magnitude must be in [0, {NUM_BINS - 1}], got {self.randaugment_magnitude}"
            )
        for name in ("elastic_p", "invert_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.pad_fraction < 0.0:
            raise ValueError(f"AugmentConfig.pad_fraction must be >= 0, got {self.pad_fraction}")


@dataclass
class AugmentParams:
    """Every per-image random draw of one batch (first dimension N), so tests and logs can see them.

    ``ops``/``magnitudes`` are (N, num_ops): the op index into ``OPS`` and its signed magnitude per slot.
    ``crop`` is (N, 4) = (top, left, height, width) in pixels; ``shift`` is (N, 2) = pad-crop (dy, dx) offsets
    in [0, 2 * pad]; ``displacement`` is (N, H, W, 2) in grid units (zero where no elastic was drawn);
    ``lam``/``perm`` are mixup's (empty when mixup is off).
    """

    crop: torch.Tensor
    ops: torch.Tensor
    magnitudes: torch.Tensor
    displacement: torch.Tensor | None
    elastic: torch.Tensor
    invert: torch.Tensor
    flip: torch.Tensor
    shift: torch.Tensor
    lam: torch.Tensor
    perm: torch.Tensor

    def to(self, device: torch.device) -> AugmentParams:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return AugmentParams(**{k: (v.to(device) if v is not None else None) for k, v in moved.items()})


def _op_magnitudes(magnitude: int, height: int, width: int) -> torch.Tensor:
    """Unsigned magnitude of each op at ``magnitude`` of 31 bins: torchvision v2 RandAugment's table."""
    frac = magnitude / (NUM_BINS - 1)
    table = {
        "ShearX": 0.3 * frac,
        "ShearY": 0.3 * frac,
        "TranslateX": float(int(150.0 / 331.0 * width * frac)),
        "TranslateY": float(int(150.0 / 331.0 * height * frac)),
        "Rotate": 30.0 * frac,
        "Brightness": 0.9 * frac,
        "Color": 0.9 * frac,
        "Contrast": 0.9 * frac,
        "Sharpness": 0.9 * frac,
        "Posterize": float(round(8 - magnitude / ((NUM_BINS - 1) / 4))),
        "Solarize": 1.0 - frac,
    }
    return torch.tensor([table.get(name, 0.0) for name in OPS], dtype=torch.float32)


def mixup(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018) with lambda ~ Beta(1, 1) = Uniform(0, 1) drawn per sample.

    Returns ``(lam * x + (1 - lam) * x[perm], lam, perm)``; lam and perm are on ``x.device``.
    """
    lam = torch.rand(x.shape[0], generator=generator).to(x.device)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return _mix(x, lam, perm), lam, perm


def _mix(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    lam_b = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return torch.lerp(x[perm], x, lam_b)


class BatchAugment:
    """Applies the recipe to uint8 (N, C, H, W) batches with parameters drawn per image.

    ``mean``/``std`` are the teacher's normalisation (length C, in [0, 1] units); ``mean`` is also the fill.
    """

    def __init__(self, config: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.config = config
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        return self.apply(images, self.draw(n, h, w, generator))

    def padding(self, height: int, width: int) -> int:
        """Pad-crop padding in pixels: ``round(pad_fraction * size)`` (4 px at 32 x 32)."""
        return round(self.config.pad_fraction * max(height, width))

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        """Draws every random parameter of a batch of ``n`` images on the CPU generator."""
        cfg, g = self.config, generator
        if cfg.crop == "random_resized":
            crop = _draw_crop(n, height, width, cfg.crop_scale, g)
        else:  # RandomCrop to the input's own size: the whole image, nothing to draw
            crop = torch.tensor([0, 0, height, width]).repeat(n, 1)
        k = cfg.randaugment_ops
        ops = torch.randint(0, len(OPS), (n, k), generator=g)
        negate = torch.rand(n, k, generator=g) <= 0.5
        base = _op_magnitudes(cfg.randaugment_magnitude, height, width)[ops]
        signed = torch.isin(ops, torch.tensor([OP_INDEX[o] for o in SIGNED_OPS]))
        magnitudes = torch.where(signed & negate, -base, base)
        elastic = torch.rand(n, generator=g) < cfg.elastic_p
        displacement = _draw_displacement(n, height, width, g) if cfg.elastic_p > 0 else None
        if displacement is not None:
            displacement = displacement * elastic.view(-1, 1, 1, 1)
        invert = torch.rand(n, generator=g) < cfg.invert_p
        flip = torch.rand(n, generator=g) < 0.5 if cfg.flip else torch.zeros(n, dtype=torch.bool)
        pad = self.padding(height, width)
        shift = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
        if cfg.mixup:
            lam, perm = torch.rand(n, generator=g), torch.randperm(n, generator=g)
        else:
            lam, perm = torch.empty(0), torch.empty(0, dtype=torch.long)
        return AugmentParams(crop, ops, magnitudes, displacement, elastic, invert, flip, shift, lam, perm)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W), mixup applied when configured."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        if c != self.mean.numel():
            raise ValueError(f"images have {c} channels but mean/std have {self.mean.numel()}")
        device = images.device
        p = params.to(device)
        mean = self.mean.to(device).view(1, c, 1, 1)
        std = self.std.to(device).view(1, c, 1, 1)
        x = images.float().div_(255.0)
        x = _geometry(x, p, mean)
        for slot in range(p.ops.shape[1]):
            x = _colour_slot(x, p.ops[:, slot], p.magnitudes[:, slot])
        if bool(p.invert.any()):
            x = torch.where(p.invert.view(-1, 1, 1, 1), 1.0 - x, x)
        x = x.sub_(mean).div_(std)
        x = _flip_pad_crop(x, p.flip, p.shift, self.padding(h, w))
        if p.lam.numel():
            x = _mix(x, p.lam, p.perm)
        return x


def _draw_crop(n: int, height: int, width: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop's box per image: 10 (area, log-ratio) tries, first fit, else centre crop."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, CROP_TRIES, generator=g))
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, CROP_TRIES, generator=g))
    cw = torch.sqrt(area * ratio).round().long()
    ch = torch.sqrt(area / ratio).round().long()
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = fits.long().argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fw, fh = round(height * CROP_RATIO[1]), height
    else:
        fw, fh = width, height
    cw = torch.where(any_fit, cw.gather(1, first).squeeze(1), fw)
    ch = torch.where(any_fit, ch.gather(1, first).squeeze(1), fh)
    u = torch.rand(n, 2, generator=g)
    top = torch.where(any_fit, (u[:, 0] * (height - ch + 1)).long(), (height - ch) // 2)
    left = torch.where(any_fit, (u[:, 1] * (width - cw + 1)).long(), (width - cw) // 2)
    return torch.stack([top, left, ch, cw], dim=1)


def _draw_displacement(n: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """ElasticTransform(alpha=50, sigma=5)'s field per image: U(-1, 1) noise, Gaussian-blurred, grid units."""
    alpha, sigma = 50.0, 5.0
    noise = torch.rand(n, 2, height, width, generator=g) * 2 - 1
    size = int(8 * sigma + 1) | 1
    size = min(size, 2 * min(height, width) - 1)
    t = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # The reflect-padded separable blur is linear along each axis: two small matrix products do it.
    field = _blur_matrix(height, kernel) @ noise @ _blur_matrix(width, kernel).T
    field = field * torch.tensor([alpha / width, alpha / height]).view(1, 2, 1, 1)
    return field.permute(0, 2, 3, 1).contiguous()


def _blur_matrix(length: int, kernel: torch.Tensor) -> torch.Tensor:
    """(length, length) matrix of a 1-D convolution with reflect padding (torchvision's gaussian_blur)."""
    pad = kernel.numel() // 2
    eye = torch.eye(length).unsqueeze(1)
    rows = F.conv1d(F.pad(eye, (pad, pad), mode="reflect"), kernel.view(1, 1, -1))
    return rows.squeeze(1).T.contiguous()


def _inverse_sampling_matrix(p: AugmentParams, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(N, 3, 3) map from output to input pixel coordinates: crop box composed with each op's inverse."""
    n = p.crop.shape[0]
    top, left, ch, cw = (p.crop[:, i].float() for i in range(4))
    m = torch.zeros(n, 3, 3, device=device)
    m[:, 0, 0], m[:, 0, 2] = cw / width, left
    m[:, 1, 1], m[:, 1, 2] = ch / height, top
    m[:, 2, 2] = 1.0
    cx, cy = width / 2.0, height / 2.0
    for slot in range(p.ops.shape[1]):
        op, mag = p.ops[:, slot], p.magnitudes[:, slot]
        if not bool(torch.isin(op, torch.tensor([OP_INDEX[o] for o in GEOMETRIC_OPS], device=device)).any()):
            continue
        inv = torch.eye(3, device=device).repeat(n, 1, 1)
        # Each op's inverse is the same op with the magnitude negated (shear about the top-left corner).
        sel = op == OP_INDEX["ShearX"]
        inv[:, 0, 1] = torch.where(sel, -mag, inv[:, 0, 1])
        sel = op == OP_INDEX["ShearY"]
        inv[:, 1, 0] = torch.where(sel, -mag, inv[:, 1, 0])
        sel = op == OP_INDEX["TranslateX"]
        inv[:, 0, 2] = torch.where(sel, -mag, inv[:, 0, 2])
        sel = op == OP_INDEX["TranslateY"]
        inv[:, 1, 2] = torch.where(sel, -mag, inv[:, 1, 2])
        sel = op == OP_INDEX["Rotate"]
        theta = torch.deg2rad(torch.where(sel, mag, torch.zeros_like(mag)))
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.eye(3, device=device).repeat(n, 1, 1)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
        rot[:, 0, 2] = cx - cos * cx + sin * cy
        rot[:, 1, 2] = cy - sin * cx - cos * cy
        m = m @ torch.where(sel.view(-1, 1, 1), rot, inv)
    return m


def _geometry(x: torch.Tensor, p: AugmentParams, mean: torch.Tensor) -> torch.Tensor:
    """One bilinear resampling per image through the composed crop + RandAugment + elastic map, fill mean."""
    n, _, h, w = x.shape
    m = _inverse_sampling_matrix(p, h, w, x.device)
    identity = torch.eye(3, device=x.device).expand(n, 3, 3)
    if p.displacement is None and torch.equal(m, identity):
        return x
    # Pixel coordinates [0, W] <-> grid coordinates [-1, 1] (align_corners=False).
    to_grid = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], device=x.device)
    to_pixel = torch.tensor([[w / 2.0, 0, w / 2.0], [0, h / 2.0, h / 2.0], [0, 0, 1]], device=x.device)
    theta = (to_grid @ m @ to_pixel)[:, :2, :]
    # The grid is built by broadcasting (what ``F.affine_grid`` computes, ~10x faster on CPU than its bmm).
    u = ((torch.arange(w, device=x.device) + 0.5) * (2.0 / w) - 1.0).view(1, 1, w)
    v = ((torch.arange(h, device=x.device) + 0.5) * (2.0 / h) - 1.0).view(1, h, 1)
    if p.displacement is not None:
        u, v = u + p.displacement[..., 0], v + p.displacement[..., 1]
    t = theta.view(n, 6, 1, 1)
    gx = t[:, 0] * u + t[:, 1] * v + t[:, 2]
    gy = t[:, 3] * u + t[:, 4] * v + t[:, 5]
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(x - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.add_(mean).clamp_(0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    wts = torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * wts).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH kernel on the interior, border unchanged, then blended by ``factor``."""
    h, w = x.shape[-2:]
    # Kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as shifted-slice sums: cheaper than conv2d here.
    rows = x[..., 0 : h - 2, :] + x[..., 1 : h - 1, :] + x[..., 2:h, :]
    box = rows[..., 0 : w - 2] + rows[..., 1 : w - 1] + rows[..., 2:w]
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return _blend(x, blurred, factor)


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255.0).round_()


def _colour_op(name: str, x: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """torchvision v2 RandAugment's colour op ``name`` on float images in [0, 1] with per-image magnitude."""
    if name == "Brightness":
        return (x * (1.0 + mag).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    if name == "Color":
        return x if x.shape[1] == 1 else _blend(x, _grey(x), 1.0 + mag)
    if name == "Contrast":
        return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), 1.0 + mag)
    if name == "Sharpness":
        return _sharpness(x, 1.0 + mag)
    if name == "Posterize":
        step = (2.0 ** (8 - mag)).view(-1, 1, 1, 1)
        return torch.floor(_to_levels(x) / step) * step / 255.0
    if name == "Solarize":
        return torch.where(x >= mag.view(-1, 1, 1, 1), 1.0 - x, x)
    if name == "AutoContrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        flat = hi <= lo
        lo = torch.where(flat, torch.zeros_like(lo), lo)
        hi = torch.where(flat, torch.ones_like(hi), hi)
        return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
    if name == "Equalize":
        return equalize(_to_levels(x).to(torch.uint8)).float() / 255.0
    raise ValueError(f"unknown colour op {name!r}")


COLOUR_OPS = tuple(o for o in OPS if o not in GEOMETRIC_OPS and o != "Identity")


def _colour_slot(x: torch.Tensor, ops: torch.Tensor, mags: torch.Tensor) -> torch.Tensor:
    """Applies one RandAugment slot's colour op to the images that drew it (a loop over ops, not images)."""
    for name in COLOUR_OPS:
        idx = (ops == OP_INDEX[name]).nonzero().squeeze(1)
        if idx.numel():
            x[idx] = _colour_op(name, x[idx], mags[idx])
    return x


def _flip_pad_crop(x: torch.Tensor, flip: torch.Tensor, shift: torch.Tensor, pad: int) -> torch.Tensor:
    """Horizontal flip, then zero-pad by ``pad`` and crop at ``shift`` (0 = mean once normalised).

    One gather from the zero-padded batch; flipping the padded image equals padding the flipped one.
    """
    n, c, h, w = x.shape
    if pad == 0 and not bool(flip.any()):
        return x
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = x.new_zeros(n, c, hp, wp)
    padded[:, :, pad : pad + h, pad : pad + w] = x
    rows = torch.arange(h, device=x.device).view(1, h) + shift[:, :1]
    cols = torch.arange(w, device=x.device).view(1, w) + shift[:, 1:]
    cols = torch.where(flip.view(n, 1), wp - 1 - cols, cols)
    index = (rows * wp).view(n, h, 1) + cols.view(n, 1, w)
    flat = padded.view(n, c, hp * wp)
    return flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
