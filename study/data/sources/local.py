"""Real image sources: the bundled offline datasets, folders of images, and torchvision datasets.

The bundled default is scikit-learn's handwritten digits (1,797 grey 8x8 images, 10 classes), upsampled so that
crops and augmentation mean something; it installs with a dependency and needs no download, so the quickstart and
the tests run offline. Its out-of-domain partner, `photo_crops`, takes random crops of the ~20 photographs that
scikit-image bundles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.data.images import LabelledImages, resize_uint8
from study.data.sources.registry import SPLITS, SourceError, check_split, register_source
from study.data.sources.subsets import choose_subset, decode_image_files


@register_source("digits")
def load_digits_split(
    split: str, image_size: int, root: str | None = None, count: int | None = None, seed: int = 0
) -> LabelledImages:
    """scikit-learn digits, split 70/10/20 into train/val/test, stratified with a fixed seed.

    The split seed is fixed (not the card's) so that every teacher and student agree on which images are test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_split("digits", split)
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    trainval, test = train_test_split(index, test_size=0.2, stratify=labels, random_state=0)
    train, val = train_test_split(trainval, test_size=0.125, stratify=labels[trainval], random_state=0)
    chosen = {"train": train, "val": val, "test": test}[split]
    chosen = np.sort(chosen)[:count]
    return LabelledImages(resize_uint8(images[chosen], image_size), labels[chosen], [str(d) for d in range(10)])


_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "colorwheel",
)


def _bundled_photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in _PHOTOS:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos


@register_source("photo_crops")
def load_photo_crops(
    split: str,
    image_size: int,
    root: str | None = None,
    count: int | None = None,
    seed: int = 0,
    min_scale: float = 0.05,
    max_scale: float = 0.5,
) -> LabelledImages:
    """Random square crops of scikit-image's bundled photographs: natural, out-of-domain, unlabelled images.

    Crop side is a fraction (log-uniform in [min_scale, max_scale]) of the photo's shorter side.
    """
    check_split("photo_crops", split, ("train",))
    if count is None:
        raise SourceError("source 'photo_crops' needs a 'count' (it can make any number of crops)")
    if not 0 < min_scale <= max_scale <= 1:
        raise SourceError("photo_crops: need 0 < min_scale <= max_scale <= 1")
    photos = _bundled_photos()
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=count)
    scales = np.exp(rng.uniform(np.log(min_scale), np.log(max_scale), size=count))
    out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for i, (p, s) in enumerate(zip(which, scales, strict=True)):
        photo = photos[p]
        side = max(4, int(s * min(photo.shape[:2])))
        y = int(rng.integers(photo.shape[0] - side + 1))
        x = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = resize_uint8(crop[None], image_size)[0]
    return LabelledImages(out, None, [])


FOLDER_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""train/val/test shares of an unsplit folder used as a teacher's dataset (the `split_fractions` param)."""


@register_source("folder")
def load_folder(
    split: str,
    image_size: int,
    root: str | None = None,
    count: int | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] | list[float] = FOLDER_SPLIT_FRACTIONS,
    split_seed: int = 0,
    classes: list[str] | None = None,
) -> LabelledImages:
    """A folder of labelled images: `root/<split>/<class>/*` when it has split folders, else `root/<class>/*`.

    A folder without split folders is cut into disjoint train/val/test parts, stratified per class, by a seeded
    permutation (`split_seed`) in `split_fractions`, so a teacher trained there is never selected or scored on its
    own training images. `split: all` reads every image (all split folders, or the whole unsplit folder): what a
    surrogate card over a user's folder wants. `classes` gives the label order (an imported teacher's), instead of
    the sub-folders' A-Z order. Images are centre-cropped square and resized (`decode_image`).
    """
    from torchvision.datasets import ImageFolder

    if root is None:
        raise SourceError("source 'folder' needs 'root' (a folder of class sub-folders)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise SourceError(f"source 'folder': {base} does not exist")
    check_split("folder", split, (*SPLITS, "all"))
    present = [s for s in SPLITS if (base / s).is_dir()]
    if present:
        wanted = present if split == "all" else [split]
        if split != "all" and split not in present:
            raise SourceError(f"source 'folder': {base} has split folders {present} but no '{split}/'")
        parts = [ImageFolder(str(base / s)) for s in wanted]
        found = list(parts[0].classes)
        for name, part in zip(wanted, parts, strict=True):
            if list(part.classes) != found:
                raise SourceError(f"source 'folder': {base / name} has classes {part.classes}, {wanted[0]} has {found}")
        samples = [sample for part in parts for sample in part.samples]
    else:
        dataset = ImageFolder(str(base))
        found, samples = list(dataset.classes), list(dataset.samples)
        if split != "all":
            labels = np.asarray([label for _, label in samples], dtype=np.int64)
            chosen = folder_split(labels, split, split_fractions, split_seed, where=str(base))
            samples = [samples[i] for i in chosen]
    if classes is not None:
        if sorted(classes) != sorted(found):
            raise SourceError(f"source 'folder': {base} has class folders {found}, 'classes' lists {list(classes)}")
        samples = [(path, list(classes).index(found[label])) for path, label in samples]
        found = list(classes)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    chosen = choose_subset(labels, len(samples), count, seed)
    images = decode_image_files([samples[i][0] for i in chosen], image_size)
    return LabelledImages(images, labels[chosen], found)


def folder_split(
    labels: np.ndarray, split: str, fractions: tuple[float, float, float] | list[float], seed: int, where: str = ""
) -> np.ndarray:
    """Sorted indices of `split` in a stratified, seeded train/val/test cut; the three parts are disjoint.

    Each class is permuted by its own generator (`[seed, class]`); val and test take `round(fraction * n)` images
    of it (at least one when their fraction is positive) and train the rest.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise SourceError(
            f"source 'folder': split_fractions must be 3 shares (train > 0, val, test) summing to 1, "
            f"got {list(fractions)}"
        )
    out = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
        n = len(members)
        n_val, n_test = (max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:])
        if n - n_val - n_test < 1:
            raise SourceError(
                f"source 'folder' {where}: class {int(c)} has {n} images, too few to split {list(fractions)}"
            )
        bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
        lo, hi = bounds[split]
        out.append(members[lo:hi])
    return np.sort(np.concatenate(out)) if out else np.arange(0)
