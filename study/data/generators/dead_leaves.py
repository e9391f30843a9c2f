"""Dead leaves: random shapes dropped on top of each other, with power-law sizes.

The dead-leaves model of Lee, Mumford & Huang, "Occlusion Models for Natural Images: A Statistical Study of a
Scale-Invariant Dead Leaves Model" (IJCV 2001): opaque shapes fall on the image plane, later ones occluding
earlier ones. Radii follow p(r) ∝ r^-a on [r_min, r_max]; a = 3 makes the model scale invariant, which gives
the 1/f^2 power spectrum of natural images. Baradad et al., "Learning to See by Looking at Noise" (NeurIPS
2021) use it (circles, squares, triangles; uniform random colours) as a pre-training surrogate; kd-study
follows them.

Coverage (the default, ``n_shapes: null``): canonical dead leaves cover the whole image, so shapes are added
until no background remains. It is rendered front to back, the exact ("perfect") simulation of Kendall &
Thönnes (1999) that G. Peyré's `imageDeadLeaves` (Toolbox Image) and Mahncke et al.'s `dead_leaves` package
also use: the first shape drawn is the topmost, each later one only fills pixels no earlier shape covers, and
drawing stops when none is left uncovered (or at ``max_shapes``; a pixel still uncovered then shows the
image's background colour, which is drawn first). Shapes are drawn in rounds of 32, 64, 128, ... from the
image's own random stream; since the stream is consumed in order, the picture does not depend on the rounds.
Each round tests (pixel, shape) pairs inside the shapes' bounding boxes, or, once few pixels are left, each
uncovered pixel against the round's shapes (about 500-700 shapes cover a 32 px image at the default sizes).
A fixed ``n_shapes`` draws that many shapes back to front over a uniform background colour instead (version
1's model, which leaves ~40% of a 32 px image as background at 64 shapes).

Every shape: centre uniform in the image, radius by inverse CDF of the power law (``radius_min`` .. ``radius_max``
as fractions of the image size, exponent 3: Lee, Mumford & Huang's scale-invariant choice), uniform rotation,
kind uniform over ``shapes`` (circles, squares and triangles of equal area, as Baradad et al.), colour uniform in
RGB; each image from its own random stream, so images are block independent. Rendering is vectorised numpy.
``supersample`` renders k x k samples per pixel and averages them (anti-aliased edges).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from study.data.generators.registry import Generator, GeneratorError, ReferenceStats, image_rng, register_generator

Shape = Literal["circle", "square", "triangle"]
_SQUARE_HALF_SIDE = np.sqrt(np.pi) / 2.0  # a square of the same area as the circle of radius 1
_TRIANGLE_INRADIUS = 0.5 * np.sqrt(np.pi / (3.0 * np.sqrt(3.0) / 4.0))  # same area, inradius = circumradius / 2
_ELEMENTS_PER_CHUNK = 1 << 22  # pixels x shapes x images evaluated at once (~16 MB of float32)
_SHAPE_CODES = {"circle": 0, "square": 1, "triangle": 2}
# radius multiple that bounds each shape (circle 1, square half-diagonal, triangle circumradius = 2 x inradius)
_REACH = np.array([1.0, _SQUARE_HALF_SIDE * np.sqrt(2.0), 2.0 * _TRIANGLE_INRADIUS], dtype=np.float32) * 1.001
_FIRST_ROUND = 32
_COVERAGE_CHUNK_COST = 16  # coverage mode: images per chunk = _ELEMENTS_PER_CHUNK / (pixels x this)


@register_generator
class DeadLeaves(Generator):
    name: ClassVar[str] = "dead_leaves"
    version: ClassVar[str] = "2"

    class Params(Generator.Params):
        shapes: list[Shape] = Field(default_factory=lambda: ["circle", "square", "triangle"], min_length=1)
        n_shapes: int | None = Field(None, ge=1, le=4096, description="None: add shapes until fully covered")
        max_shapes: int = Field(20_000, ge=1, description="coverage mode's cap on shapes per image")
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
        self.kind_codes = np.array([_SHAPE_CODES[k] for k in self.shape_kinds], dtype=np.float32)

    def _leaves(self, raw: np.ndarray) -> np.ndarray:
        """Uniform draws (n, 8) -> leaves as rows (cx, cy, r, angle, kind, r, g, b)."""
        p = self.params
        leaves = np.empty_like(raw)
        leaves[:, :2] = raw[:, :2]
        leaves[:, 2] = power_law_radii(raw[:, 2], p.radius_min, p.radius_max, p.radius_exponent)
        leaves[:, 3] = raw[:, 3] * 2.0 * np.pi
        leaves[:, 4] = np.minimum(np.floor(raw[:, 4] * len(self.shape_kinds)), len(self.shape_kinds) - 1)
        leaves[:, 5:] = raw[:, 5:]
        return leaves

    def _draw(self, seed: int, index: int, n: int) -> np.ndarray:
        """One image's ``n`` leaves (version 1's fixed count); the background is the last row."""
        rng = image_rng(seed, index)
        raw = rng.random((n, 8))
        background = rng.random(3)
        leaves = np.zeros((n + 1, 8))
        leaves[:n] = self._leaves(raw)
        leaves[n, 5:] = background
        return leaves

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        self._check_request(seed, start, count, image_size)
        ss = self.params.supersample
        side = image_size * ss
        n = self.params.n_shapes
        chunk = max(1, _ELEMENTS_PER_CHUNK // (side * side * (n or _COVERAGE_CHUNK_COST)))
        out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        for first in range(0, count, chunk):
            ids = range(start + first, start + min(count, first + chunk))
            if n is None:
                canvas = self._render_covered(seed, ids, side)
            else:
                canvas = self._render(np.stack([self._draw(seed, i, n) for i in ids]), side)
            if ss > 1:
                canvas = canvas.reshape(len(canvas), image_size, ss, image_size, ss, 3).mean(axis=(2, 4))
            out[first : first + chunk] = np.rint(canvas * 255.0).astype(np.uint8)
        return out

    def _render_covered(self, seed: int, ids: range, side: int) -> np.ndarray:
        """Front to back until every pixel is covered: (B, side, side, 3) float colours in [0, 1].

        Rounds of 32, 64, ... leaves per image (each image from its own stream, so an image's leaves never
        depend on the block); a leaf fills only the pixels no earlier leaf covers.
        """
        rngs = [image_rng(seed, i) for i in ids]
        area = side * side
        canvas = np.empty((len(rngs), area, 3), dtype=np.float32)
        for b, rng in enumerate(rngs):
            canvas[b] = rng.random(3)  # background: shows only where max_shapes runs out
        canvas = canvas.reshape(-1, 3)
        uncovered = np.ones(len(rngs) * area, dtype=bool)
        active = np.arange(len(rngs))
        drawn, size = 0, _FIRST_ROUND
        while active.size and drawn < self.params.max_shapes:
            size = min(size, self.params.max_shapes - drawn)
            leaves = np.concatenate([self._leaves(rngs[b].random((size, 8))) for b in active]).astype(np.float32)
            leaves[:, 4] = self.kind_codes[leaves[:, 4].astype(np.int64)]
            x0, x1, y0, y1 = _boxes(leaves, side)
            open_px = np.flatnonzero(uncovered)
            if open_px.size * size < int(((x1 - x0) * (y1 - y0)).sum()):
                # few pixels left: test each against its image's leaves (pixel-major, leaves in drawing order)
                leaf = np.searchsorted(active, open_px // area)[:, None] * size + np.arange(size)
                px, py = (open_px % side)[:, None], (open_px // side % side)[:, None]
                q, j = np.nonzero((x0[leaf] <= px) & (px < x1[leaf]) & (y0[leaf] <= py) & (py < y1[leaf]))
                k, pixel = leaf[q, j], open_px[q]
            else:
                # many pixels left: enumerate each leaf's bounding box (leaf-major, leaves in drawing order)
                k, pixel = _box_pairs(x0, x1, y0, y1, side)
                pixel = pixel + active[k // size] * area
                keep = uncovered[pixel]
                k, pixel = k[keep], pixel[keep]
            x = ((pixel % side).astype(np.float32) + 0.5) / side
            y = ((pixel // side % side).astype(np.float32) + 0.5) / side
            inside = _inside_pairs(leaves[k], x, y)
            k, pixel = k[inside], pixel[inside]
            # the topmost leaf of a pixel is the earliest drawn: its first pair in leaf-major order
            pixel, first = np.unique(pixel, return_index=True)
            canvas[pixel] = leaves[k[first], 5:]
            uncovered[pixel] = False
            active = active[uncovered.reshape(len(rngs), area)[active].any(axis=1)]
            drawn += size
            size *= 2
        return canvas.reshape(len(rngs), side, side, 3)

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


def _boxes(leaves: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel ranges [x0, x1) x [y0, y1) whose centres lie in each leaf's bounding square."""
    reach = leaves[:, 2] * _REACH[leaves[:, 4].astype(np.int64)] * side
    cx, cy = leaves[:, 0] * side - 0.5, leaves[:, 1] * side - 0.5  # pixel j's centre sits at j + 0.5
    x0 = np.clip(np.ceil(cx - reach), 0, side).astype(np.int64)
    x1 = np.clip(np.floor(cx + reach) + 1, 0, side).astype(np.int64)
    y0 = np.clip(np.ceil(cy - reach), 0, side).astype(np.int64)
    y1 = np.clip(np.floor(cy + reach) + 1, 0, side).astype(np.int64)
    return x0, np.maximum(x1, x0), y0, np.maximum(y1, y0)


def _box_pairs(
    x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every (leaf index, pixel index) pair inside the leaves' boxes, leaf-major."""
    w = x1 - x0
    n = w * (y1 - y0)
    k = np.repeat(np.arange(len(x0)), n)
    offset = np.arange(k.size) - np.repeat(np.cumsum(n) - n, n)
    width = np.maximum(w[k], 1)
    return k, (y0[k] + offset // width) * side + x0[k] + offset % width


def _inside_pairs(leaves: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M,) bool: whether point (x[m], y[m]) lies in leaf ``leaves[m]`` (kind column = code in ``_SHAPE_CODES``)."""
    cx, cy, r, angle, kind = (leaves[:, k] for k in range(5))
    dx, dy = x - cx, y - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    circle = u * u + v * v < r * r
    half = r * np.float32(_SQUARE_HALF_SIDE)
    square = (np.abs(u) < half) & (np.abs(v) < half)
    inradius = r * np.float32(_TRIANGLE_INRADIUS)
    c, s = np.float32(np.sqrt(3.0) / 2.0), np.float32(0.5)
    triangle = (v < inradius) & (-c * u - s * v < inradius) & (c * u - s * v < inradius)
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))
