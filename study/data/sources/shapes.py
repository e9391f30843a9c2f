"""`shapes`: a labelled synthetic task, ten classes of filled and outlined geometric shapes, for a second teacher
that needs no download.

A study of several teachers needs teachers on different tasks; offline, the only real labelled data is digits.
Shapes are a task of another kind (colour images, a shape on a coloured background, position, size, small
rotation and colours drawn per image), still small enough to train a teacher on 2 CPU cores in about a minute.
Each split is drawn from its own fixed seed, so every teacher and student agree on which images are test.
"""

from __future__ import annotations

import numpy as np

from study.data.images import LabelledImages, resize_uint8
from study.data.sources.registry import check_split, register_source

CLASSES = (
    "disc",
    "ring",
    "square",
    "square_outline",
    "triangle_up",
    "triangle_down",
    "plus",
    "cross",
    "diamond",
    "two_discs",
)
SIZES = {"train": 3000, "val": 500, "test": 1000}
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
RENDER = 64  # drawn at 64 px and area-averaged down: anti-aliased edges at any image_size up to 64


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Class `label`'s shape in its own frame (u right, v down, the shape within about [-1, 1])."""
    r2 = u * u + v * v
    box = np.maximum(np.abs(u), np.abs(v))
    name = CLASSES[label]
    if name == "disc":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if name == "square":
        return box <= 0.8
    if name == "square_outline":
        return (box <= 0.85) & (box >= 0.55)
    if name in ("triangle_up", "triangle_down"):
        v = v if name == "triangle_up" else -v
        return (v <= 0.7) & (np.abs(u) <= 0.95 * (v + 0.9) / 1.6)
    if name == "plus":
        return ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95))
    if name == "cross":
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return ((np.abs(a) <= 0.28) & (np.abs(b) <= 1.0)) | ((np.abs(b) <= 0.28) & (np.abs(a) <= 1.0))
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    return ((u - 0.5) ** 2 + v * v <= 0.42**2) | ((u + 0.5) ** 2 + v * v <= 0.42**2)  # two_discs


def contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a shape colour at least 0.3 apart in luminance, so the shape is always visible."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        bg, fg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if abs(float((fg - bg) @ weights)) >= 0.3:
            return bg, fg


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One RENDER x RENDER x 3 uint8 image of class `label`: position, size, rotation (+-15 degrees), colours, a
    background gradient and pixel noise drawn from `rng`."""
    axis = (np.arange(RENDER) + 0.5) / RENDER * 2 - 1
    x, y = np.meshgrid(axis, axis)
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    scale, theta = rng.uniform(0.35, 0.6), rng.uniform(-np.pi / 12, np.pi / 12)
    c, s = np.cos(theta), np.sin(theta)
    u = (c * (x - cx) + s * (y - cy)) / scale
    v = (-s * (x - cx) + c * (y - cy)) / scale
    bg, fg = contrasting_colours(rng)
    slope = rng.uniform(-0.15, 0.15, 2)
    image = bg + (slope[0] * x + slope[1] * y)[..., None]
    image = np.where(shape_mask(label, u, v)[..., None], fg, image)
    image = image + rng.normal(0, 0.03, image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


@register_source("shapes")
def load_shapes_split(
    split: str, image_size: int, root: str | None = None, count: int | None = None, seed: int = 0
) -> LabelledImages:
    """Ten shape classes, balanced (label i % 10), each split from its own fixed seed (not the card's)."""
    check_split("shapes", split)
    n = SIZES[split] if count is None else min(count, SIZES[split])
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    images = np.stack([render(int(label), rng) for label in labels])
    return LabelledImages(resize_uint8(images, image_size), labels, list(CLASSES))
