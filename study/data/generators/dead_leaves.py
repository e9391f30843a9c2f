"""Dead leaves: random shapes dropped on top of each other, with power-law sizes.

The dead-leaves model of Lee, Mumford & Huang, "Occlusion Models for Natural Images: A Statistical Study of a
Scale-Invariant Dead Leaves Model" (IJCV 2001): opaque shapes fall on the image plane, later ones occluding
earlier ones. Radii follow p(r) ∝ r^-a on [r_min, r_max]; a = 3 makes the model scale invariant, which gives
the 1/f^2 power spectrum of natural images. Baradad et al., "Learning to See by Looking at Noise" (NeurIPS
2021) use it (circles, squares, triangles; uniform random colours) as a pre-training surrogate; kd-study
follows them.

Each image draws ``n_shapes`` shapes (centre uniform in the image, radius by inverse CDF of the power law,
uniform rotation, shape uniform over ``shapes``, colour uniform in RGB) and a uniform background colour from
its own random stream, so images are block independent. Rendering is vectorised numpy over images and shapes:
membership of every pixel in every shape, then the last (topmost) shape covering each pixel gives its colour.
``supersample`` renders k x k samples per pixel and averages them (anti-aliased edges).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from study.data.generators import Generator, GeneratorError, ReferenceStats, image_rng, register_generator

Shape = Literal["circle", "square", "triangle"]
_SQUARE_HALF_SIDE = np.sqrt(np.pi) / 2.0  # a square of the same area as the circle of radius 1
_TRIANGLE_INRADIUS = 0.5 * np.sqrt(np.pi / (3.0 * np.sqrt(3.0) / 4.0))  # same area, inradius = circumradius / 2
_ELEMENTS_PER_CHUNK = 1 << 22  # pixels x shapes x images evaluated at once (~16 MB of float32)


@register_generator
class DeadLeaves(Generator):
    name: ClassVar[str] = "dead_leaves"
    version: ClassVar[str] = "1"

    class Params(Generator.Params):
        shapes: list[Shape] = Field(default_factory=lambda: ["circle", "square", "triangle"], min_length=1)
        n_shapes: int = Field(64, ge=1, le=4096)
        radius_min: float = Field(0.03, gt=0.0, description="fraction of the image size")
        radius_max: float = Field(0.4, gt=0.0, description="fraction of the image size")
        radius_exponent: float = Field(3.0, ge=0.0, description="p(r) ∝ r^-radius_exponent")
        supersample: int = Field(1, ge=1, le=8)

    def __init__(self, params: Params, reference_stats: ReferenceStats | None = None) -> None:
        super().__init__(params, reference_stats)
        if params.radius_max < params.radius_min:
            raise GeneratorError(
                f"generator '{self.name}': radius_max ({params.radius_max}) must be >= radius_min ({params.radius_min})"
            )
        self.shape_kinds = list(dict.fromkeys(params.shapes))

    def _draw(self, seed: int, index: int) -> np.ndarray:
        """One image's leaves as rows (cx, cy, r, angle, kind, r, g, b); the background is the last row."""
        rng = image_rng(seed, index)
        n = self.params.n_shapes
        raw = rng.random((n, 8))
        background = rng.random(3)
        leaves = np.empty((n + 1, 8))
        leaves[:n, :2] = raw[:, :2]
        p = self.params
        leaves[:n, 2] = power_law_radii(raw[:, 2], p.radius_min, p.radius_max, p.radius_exponent)
        leaves[:n, 3] = raw[:, 3] * 2.0 * np.pi
        leaves[:n, 4] = np.minimum(np.floor(raw[:, 4] * len(self.shape_kinds)), len(self.shape_kinds) - 1)
        leaves[:n, 5:] = raw[:, 5:]
        leaves[n] = 0.0
        leaves[n, 5:] = background
        return leaves

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        ss = self.params.supersample
        side = image_size * ss
        leaves = np.stack([self._draw(seed, start + k) for k in range(count)]) if count else np.zeros((0, 1, 8))
        chunk = max(1, _ELEMENTS_PER_CHUNK // (side * side * self.params.n_shapes))
        out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        for first in range(0, count, chunk):
            canvas = self._render(leaves[first : first + chunk], side)
            if ss > 1:
                canvas = canvas.reshape(len(canvas), image_size, ss, image_size, ss, 3).mean(axis=(2, 4))
            out[first : first + chunk] = np.rint(canvas * 255.0).astype(np.uint8)
        return out

    def _render(self, leaves: np.ndarray, side: int) -> np.ndarray:
        """(B, n+1, 8) leaves -> (B, side, side, 3) float colours in [0, 1]."""
        batch, n = leaves.shape[0], leaves.shape[1] - 1
        shapes = leaves[:, :n].reshape(batch * n, 8).astype(np.float32)
        centres = (np.arange(side, dtype=np.float32) + 0.5) / side
        inside = np.empty((batch * n, side, side), dtype=bool)
        for kind_index, kind in enumerate(self.shape_kinds):
            rows = np.flatnonzero(shapes[:, 4] == kind_index)
            if rows.size:
                inside[rows] = _inside(kind, shapes[rows], centres)
        inside = inside.reshape(batch, n, side, side)
        # the topmost leaf is the last one drawn: argmax over the reversed stack finds the last True
        covered = inside.any(axis=1)
        top = np.where(covered, n - 1 - np.argmax(inside[:, ::-1], axis=1), n)
        colours = leaves[:, :, 5:].astype(np.float32)
        return np.take_along_axis(colours[:, :, None, :], top.reshape(batch, -1, 1, 1), axis=1).reshape(
            batch, side, side, 3
        )


def power_law_radii(u: np.ndarray, r_min: float, r_max: float, exponent: float) -> np.ndarray:
    """Inverse CDF of p(r) ∝ r^-exponent on [r_min, r_max], applied to uniform ``u`` in [0, 1)."""
    if abs(exponent - 1.0) < 1e-9:
        return r_min * (r_max / r_min) ** u
    e = 1.0 - exponent
    return (r_min**e + u * (r_max**e - r_min**e)) ** (1.0 / e)


def _inside(kind: str, shapes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Which pixel centres (y down, x right, [0, 1] units) each shape covers: (M, side, side) bool."""
    cx, cy, r, angle = (shapes[:, k, None, None] for k in range(4))
    dx = centres[None, None, :] - cx
    dy = centres[None, :, None] - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    if kind == "circle":
        return u * u + v * v < r * r
    if kind == "square":
        half = r * np.float32(_SQUARE_HALF_SIDE)
        return (np.abs(u) < half) & (np.abs(v) < half)
    inradius = r * np.float32(_TRIANGLE_INRADIUS)
    # an equilateral triangle: three half-planes whose normals are 120 degrees apart
    c, s = np.float32(np.sqrt(3.0) / 2.0), np.float32(0.5)
    return (v < inradius) & (-c * u - s * v < inradius) & (c * u - s * v < inradius)
