"""Random strokes: a few thick light curves on a dark background, drawn from their distance fields.

Why it exists: a teacher trained on thin-stroke images (digits, letters) maps noise, dead leaves and photo
crops to a few of its classes only. The quickstart's digits teacher (resnet20, 16 px) rarely or never predicts
some digits for them (class 1 for 1/f^3 noise: 5 kept of 100 at the 200,000-candidate ceiling with most
teachers), so a balanced build of those sources cannot fill every class. Shaders would, but need system EGL
libraries. Random strokes are a generated source in pure numpy that covers the thin-stroke classes: the images
share the low-level statistics such teachers key on (bright strokes a pixel or two wide on a flat dark ground)
while the strokes are random curves, not glyphs; no class is drawn.

The model: random brush strokes, the procedural family of the free-form masks of Yu et al., "Free-Form Image
Inpainting with Gated Convolution" (ICCV 2019), as curves. Each image draws a stroke count uniform in
``strokes_min .. strokes_max``; each stroke is, with probability ``arc_share``, an elliptic arc (centre in the
middle of the image, radii 0.15 .. 0.4 of its size, random rotation and start angle, sweep a quarter to a full
turn: open and closed loops) and otherwise a quadratic Bezier curve (end points uniform inside ``margin``;
control point displaced from the chord's midpoint uniformly in a disc of radius ``curvature``: straight to
strongly bent). Width is uniform in ``width_min .. width_max`` (fractions of the image size), brightness
uniform in ``ink_min .. 1``, background uniform in ``0 .. background_max``. Each curve is a polyline of
``segments`` segments (8 keeps arcs within half a pixel of true at 16 px; raise it for large images); a
pixel's coverage is ``clip(width/2 - d + 0.5, 0, 1)`` in pixel units for its distance ``d`` to the polyline
(a one-pixel anti-aliased edge), and overlapping strokes combine by their maximum. Images are grey (R = G = B).

The defaults were tuned for class coverage only (stroke count, width, curvature, arc share, measured on the
quickstart digits teacher's predictions): 20,000 candidates at 16 px gave every digit at least 1 in 55.

Each image draws all of its random numbers from its own stream (``strokes_max`` strokes' worth, used or not),
so images are block independent. Rendering is vectorised numpy over blocks of images (~5k img/s at 16 px on
one core).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from study.data.generators.registry import Generator, GeneratorError, ReferenceStats, image_rng, register_generator

_ELEMENTS_PER_CHUNK = 1 << 21  # images x strokes x segments x pixels evaluated at once (~8 MB of float32)
_DRAWS_PER_STROKE = 10  # kind, six shape draws, arc sweep, width, brightness
_DRAWS_PER_IMAGE = 2  # stroke count, background


@register_generator
class RandomStrokes(Generator):
    name: ClassVar[str] = "random_strokes"
    version: ClassVar[str] = "1"

    class Params(Generator.Params):
        strokes_min: int = Field(2, ge=1, le=16)
        strokes_max: int = Field(4, ge=1, le=16)
        width_min: float = Field(0.1, gt=0.0, le=1.0, description="fraction of the image size")
        width_max: float = Field(0.22, gt=0.0, le=1.0, description="fraction of the image size")
        curvature: float = Field(0.5, ge=0.0, le=2.0, description="Bezier control offset, fraction of the size")
        arc_share: float = Field(0.4, ge=0.0, le=1.0, description="probability a stroke is an elliptic arc")
        margin: float = Field(0.15, ge=0.0, lt=0.5, description="end points stay this far inside the frame")
        ink_min: float = Field(0.6, ge=0.0, le=1.0, description="stroke brightness is uniform in ink_min .. 1")
        background_max: float = Field(0.15, ge=0.0, le=1.0, description="background is uniform in 0 .. this")
        segments: int = Field(8, ge=1, le=64, description="polyline segments per stroke")

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        for low, high in (("strokes_min", "strokes_max"), ("width_min", "width_max")):
            if getattr(params, high) < getattr(params, low):
                raise GeneratorError(
                    f"generator '{self.name}': {high} ({getattr(params, high)}) must be >= {low} "
                    f"({getattr(params, low)})"
                )

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        p = self.params
        k, s = p.strokes_max, p.segments
        chunk = max(1, _ELEMENTS_PER_CHUNK // (k * s * image_size * image_size))
        out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        for first in range(0, count, chunk):
            ids = range(start + first, start + min(count, first + chunk))
            n_draws = _DRAWS_PER_IMAGE + k * _DRAWS_PER_STROKE
            draws = np.stack([image_rng(seed, i).random(n_draws) for i in ids]).astype(np.float32)
            grey = self._render(draws, image_size)
            out[first : first + len(ids)] = np.rint(grey * 255.0).astype(np.uint8)[..., None]
        return out

    def _polylines(self, strokes: np.ndarray) -> np.ndarray:
        """Uniform draws (B, K, 10) -> the strokes' polyline vertices (B, K, segments + 1, 2) in [0, 1] units."""
        p = self.params
        t = np.linspace(0.0, 1.0, p.segments + 1, dtype=np.float32)
        span = 1.0 - 2.0 * p.margin
        # quadratic Bezier: end points inside the margin, control point = chord midpoint + offset in a disc
        a = p.margin + span * strokes[..., 1:3]
        b = p.margin + span * strokes[..., 3:5]
        offset_r = p.curvature * np.sqrt(strokes[..., 5])
        offset_angle = 2.0 * np.pi * strokes[..., 6]
        control = 0.5 * (a + b) + offset_r[..., None] * np.stack([np.cos(offset_angle), np.sin(offset_angle)], -1)
        tt = t[:, None]
        bezier = (
            ((1 - tt) ** 2) * a[..., None, :] + (2 * (1 - tt) * tt) * control[..., None, :] + (tt**2) * b[..., None, :]
        )
        # elliptic arc: centre in the middle band, radii 0.15 .. 0.4, rotated, start anywhere, sweep 1/4 .. 1 turn
        centre = 0.3 + 0.4 * strokes[..., 1:3]
        radii = 0.15 + 0.25 * strokes[..., 3:5]
        rotation = np.pi * strokes[..., 5]
        start = 2.0 * np.pi * strokes[..., 6]
        sweep = 2.0 * np.pi * (0.25 + 0.75 * strokes[..., 7])
        phi = start[..., None] + sweep[..., None] * t
        ex, ey = radii[..., 0:1] * np.cos(phi), radii[..., 1:2] * np.sin(phi)
        cos, sin = np.cos(rotation)[..., None], np.sin(rotation)[..., None]
        arc = centre[..., None, :] + np.stack([ex * cos - ey * sin, ex * sin + ey * cos], -1)
        is_arc = (strokes[..., 0] < p.arc_share)[..., None, None]
        return np.where(is_arc, arc, bezier).astype(np.float32)

    def _render(self, draws: np.ndarray, side: int) -> np.ndarray:
        """Uniform draws (B, 2 + 10K) -> grey images (B, side, side) in [0, 1]."""
        p = self.params
        batch, k = len(draws), p.strokes_max
        n_strokes = p.strokes_min + np.floor(draws[:, 0] * (k - p.strokes_min + 1)).astype(np.int64)
        background = p.background_max * draws[:, 1]
        strokes = draws[:, _DRAWS_PER_IMAGE:].reshape(batch, k, _DRAWS_PER_STROKE)
        used = np.arange(k)[None, :] < np.minimum(n_strokes, k)[:, None]
        vertices = self._polylines(strokes) * side  # pixel units; pixel j's centre sits at j + 0.5
        ax, ay = vertices[:, :, :-1, 0, None], vertices[:, :, :-1, 1, None]  # (B, K, S, 1)
        dx, dy = np.diff(vertices[..., 0], axis=2)[..., None], np.diff(vertices[..., 1], axis=2)[..., None]
        length2 = np.maximum(dx * dx + dy * dy, np.float32(1e-12))
        centres = np.arange(side, dtype=np.float32) + 0.5
        rx, ry = centres - ax, centres - ay  # (B, K, S, side): offsets along x and along y
        # the pixel grid is separable: for a pixel (x, y), rel . d and |rel|^2 are sums of an x part and a y part
        along = (ry * dy)[..., :, None] + (rx * dx)[..., None, :]  # (B, K, S, y, x)
        h = np.minimum(np.maximum(along / length2[..., None], np.float32(0.0)), np.float32(1.0))
        rel2 = (ry * ry)[..., :, None] + (rx * rx)[..., None, :]
        # |rel - h d|^2 = |rel|^2 - h (2 rel . d - h |d|^2)
        gap2 = rel2 - h * (2.0 * along - h * length2[..., None])
        dist = np.sqrt(np.maximum(gap2.min(axis=2), np.float32(0.0))).reshape(batch, k, side * side)
        half_width = 0.5 * side * (p.width_min + (p.width_max - p.width_min) * strokes[..., 8])
        coverage = np.clip(half_width[..., None] - dist + 0.5, 0.0, 1.0) * used[..., None]
        ink = p.ink_min + (1.0 - p.ink_min) * strokes[..., 9]
        bg = background[:, None, None]
        grey = np.max(bg + coverage * (ink[..., None] - bg), axis=1, initial=0.0)
        return np.maximum(grey, background[:, None]).reshape(batch, side, side)
