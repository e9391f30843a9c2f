"""A PNG grid of a surrogate's first images, to see what a teacher is distilled on.

The first images of a surrogate are a class-fair subset (stored class-interleaved), so the grid shows the mix a
student sees. Images are upscaled by pixel repetition (no smoothing: noise should look like noise) and, where the
block json stores the teacher's predictions, each tile carries its predicted class in a corner.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from study.data.shards import read_manifest
from study.data.shards.reader import read_all

PAD = 2


def first_images(root: str, count: int) -> tuple[np.ndarray, list[int] | None, list[str]]:
    """The first `count` images in stored order, their teacher predictions (if stored) and the class names."""
    manifest = read_manifest(root)
    images, preds = read_all(root, manifest, count, field="teacher_predictions")
    return images, (None if preds is None else preds.tolist()), manifest.classes


def preview_grid(images: np.ndarray, labels: list[str] | None = None, scale: int = 4) -> Image.Image:
    """uint8 (N, H, W, C) images as one RGB grid image, square-ish, each tile upscaled `scale` times."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    tiles = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = tiles.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y, x = PAD + (i // cols) * (h + PAD), PAD + (i % cols) * (w + PAD)
        grid[y : y + h, x : x + w] = tile
    canvas = Image.fromarray(grid)
    if labels is not None:
        draw = ImageDraw.Draw(canvas)
        for i, text in enumerate(labels):
            y, x = PAD + (i // cols) * (h + PAD), PAD + (i % cols) * (w + PAD)
            box = draw.textbbox((x + 1, y + 1), text)
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
            draw.text((x + 1, y + 1), text, fill=(255, 255, 0))
    return canvas


def write_preview(root: str, out_dir: str | Path, count: int = 64, scale: int = 4) -> Path:
    """Write `<out_dir>/<surrogate>.png` for the surrogate at `root`; returns its path."""
    images, preds, classes = first_images(root, count)
    labels = None
    if preds is not None:
        labels = [classes[c] if c < len(classes) else str(c) for c in preds]
    path = Path(out_dir) / f"{read_manifest(root).name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(images, labels, scale).save(path, format="png")
    return path
