"""Choosing and decoding a deterministic subset of a large real dataset.

Real sources (torchvision datasets, ImageNet folders) know every label before decoding a single image, so the
subset a card asks for (`count`, `seed`) is chosen from the labels first and only the chosen images are decoded.
Held-out splits that a dataset does not ship (a `val` beside an official `test`) are cut from a fixed, stratified
permutation (seed 0, not the card's), so every teacher and student agree on which images are val and which test.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from study.data.images import class_interleaved_order, resize_uint8

DATA_ENV = "KD_STUDY_DATA"
_SPLIT_SEED = 0
_RESIZE_CHUNK = 2048


def default_root(name: str, root: str | None) -> Path:
    """The card's `source.root`, else `$KD_STUDY_DATA/<name>`, else `~/.cache/kd-study/<name>`."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "kd-study") / name


def choose_subset(labels: np.ndarray | None, n: int, count: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `count` of `n` items: a seeded draw, class-balanced when labels are known.

    The draw shuffles with `seed` and then visits classes round-robin (`class_interleaved_order`), so a smaller
    `count` keeps the class mix as even as the data allows. Sorting keeps file reads sequential.
    """
    if count is None or count >= n:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    if labels is not None:
        perm = perm[class_interleaved_order(np.asarray(labels)[perm])]
    return np.sort(perm[:count])


def held_out_part(labels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sorted indices of the fraction [lo, hi) of each class, in a fixed per-class permutation.

    Parts with adjacent bounds are disjoint and together cover the data, e.g. (0, .5) and (.5, 1) are the `val`
    and `test` halves of an official test set.
    """
    labels = np.asarray(labels)
    out = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        # one generator per class, so a class's split does not depend on which other classes are present
        members = members[np.random.default_rng([_SPLIT_SEED, int(c)]).permutation(len(members))]
        out.append(members[int(lo * len(members)) : int(hi * len(members))])
    return np.sort(np.concatenate(out)) if out else np.arange(0)


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """`resize_uint8` in chunks, so a 100k-image array never becomes one float tensor."""
    if images.shape[1] == size and images.shape[2] == size:
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        out[start : start + _RESIZE_CHUNK] = resize_uint8(images[start : start + _RESIZE_CHUNK], size)
    return out


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as (size, size, 3) uint8: centre square crop, then an antialiased bilinear resize.

    Resize-and-centre-crop is the evaluation preprocessing of the paper's code (Frank & Davis, CVPR 2025).
    JPEG `draft` lets libjpeg decode at a reduced scale no smaller than the target, which is most of the speed.
    """
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        rgb = img.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_image_files(paths: Sequence[str | Path], size: int, workers: int | None = None) -> np.ndarray:
    """Decode `paths` in order to (N, size, size, 3) uint8; PIL releases the GIL while decoding, so threads help."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 64:
        for i, p in enumerate(paths):
            out[i] = decode_image(p, size)
        return out
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(pool.map(lambda p: decode_image(p, size), paths)):
            out[i] = arr
    return out
