"""Noise surrogates: the paper's Gaussian baseline, uniform noise and 1/f^alpha spectral noise.

- ``gaussian_noise``: i.i.d. per-pixel N(mean_c, std_c) with the teacher dataset's per-channel mean/std, the
  "Gaussian noise" baseline of Frank & Davis, "What Makes a Good Dataset for Knowledge Distillation?" (CVPR
  2025, arXiv:2411.12817).
- ``uniform_noise``: i.i.d. per-pixel U(low_c, high_c).
- ``spectral_noise``: random-phase noise whose power spectrum falls as 1/f^alpha, per channel; alpha = 2 is
  the spectrum of natural images (van der Schaaf & van Hateren 1996) and the "spectrum" baseline of Baradad et
  al., "Learning to See by Looking at Noise" (NeurIPS 2021). Made by filtering white Gaussian noise in the
  Fourier domain with amplitude |f|^(-alpha/2), then standardising each image channel to the requested
  mean/std.

Values are drawn in [0, 1] units, clipped and rounded to uint8. Mean/std come from the params, else from the
teacher's reference stats, else 0.5/0.25.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from study.data.generators.registry import (
    Generator,
    GeneratorError,
    ReferenceStats,
    channel_stats,
    image_rng,
    register_generator,
    to_uint8,
)


@register_generator
class GaussianNoise(Generator):
    name: ClassVar[str] = "gaussian_noise"
    version: ClassVar[str] = "1"

    class Params(Generator.Params):
        mean: list[float] | None = None
        std: list[float] | None = None

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        self.mean, self.std = channel_stats(self.name, params.mean, params.std, reference_stats)

    @property
    def follows_teacher_stats(self) -> bool:
        return self.params.mean is None or self.params.std is None

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        shape = (image_size, image_size, 3)
        out = np.empty((count, *shape), dtype=np.uint8)
        for k in range(count):
            z = image_rng(seed, start + k).standard_normal(shape)
            out[k] = to_uint8(self.mean + self.std * z)
        return out


@register_generator
class UniformNoise(Generator):
    name: ClassVar[str] = "uniform_noise"
    version: ClassVar[str] = "1"

    class Params(Generator.Params):
        low: list[float] = Field(default_factory=lambda: [0.0])
        high: list[float] = Field(default_factory=lambda: [1.0])

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        for field in ("low", "high"):
            if len(getattr(params, field)) not in (1, 3):
                raise GeneratorError(f"generator '{self.name}': {field} needs 1 or 3 values")
        self.low = np.broadcast_to(np.asarray(params.low, dtype=np.float64), (3,))
        self.high = np.broadcast_to(np.asarray(params.high, dtype=np.float64), (3,))
        if np.any(self.high < self.low):
            raise GeneratorError(f"generator '{self.name}': high must be >= low, got {params.low} / {params.high}")

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        shape = (image_size, image_size, 3)
        out = np.empty((count, *shape), dtype=np.uint8)
        for k in range(count):
            u = image_rng(seed, start + k).random(shape)
            out[k] = to_uint8(self.low + (self.high - self.low) * u)
        return out


@register_generator
class SpectralNoise(Generator):
    name: ClassVar[str] = "spectral_noise"
    version: ClassVar[str] = "1"

    class Params(Generator.Params):
        alpha: float = Field(2.0, ge=0.0, le=6.0, description="power spectrum ~ 1/f^alpha")
        mean: list[float] | None = None
        std: list[float] | None = None

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        self.mean, self.std = channel_stats(self.name, params.mean, params.std, reference_stats)

    @property
    def follows_teacher_stats(self) -> bool:
        return self.params.mean is None or self.params.std is None

    def _amplitude(self, image_size: int) -> np.ndarray:
        fy = np.fft.fftfreq(image_size)[:, None]
        fx = np.fft.rfftfreq(image_size)[None, :]
        f = np.hypot(fy, fx)
        f[0, 0] = 1.0
        amplitude = f ** (-self.params.alpha / 2.0)
        amplitude[0, 0] = 0.0  # no DC: each channel's mean is set afterwards
        return amplitude

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        if count == 0:
            return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
        # channels first so that each FFT is over the last two axes
        white = np.stack(
            [image_rng(seed, start + k).standard_normal((3, image_size, image_size)) for k in range(count)]
        )
        amplitude = self._amplitude(image_size)
        # One 2-D transform per (image, channel): pocketfft computes each independently, so results do not
        # depend on the block; tests pin this.
        coloured = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(image_size, image_size))
        centred = coloured - coloured.mean(axis=(2, 3), keepdims=True)
        scale = centred.std(axis=(2, 3), keepdims=True)
        standard = centred / np.where(scale > 0, scale, 1.0)
        images = self.mean[:, None, None] + self.std[:, None, None] * standard
        return to_uint8(images.transpose(0, 2, 3, 1))
