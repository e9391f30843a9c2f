"""ImageNet and Tiny ImageNet folders as real sources, and the shipped ImageNet class lists.

The paper (Frank & Davis, CVPR 2025) distils CIFAR teachers on ImageNet images of classes in the teacher's domain
and, separately, of classes outside it. The class lists ship as `datasets/imagenet_classes/<name>.txt`, one WordNet
id per line, `#` comments naming the CIFAR class of each group and where the mapping comes from.

A 1.3M-image folder is never decoded whole: the file names are listed per class (no decoding), a seeded,
class-balanced subset of `count` is chosen, and only those files are decoded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from study.data.images import LabelledImages
from study.data.sources.registry import SourceError, check_split, register_source
from study.data.sources.subsets import choose_subset, decode_image_files, default_root, held_out_part
from study.resources import bundled_dir

WNID = re.compile(r"^n\d{8}$")
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def class_list_dir() -> Path:
    """Where the shipped class lists live: `datasets/imagenet_classes/` in a checkout or an installed wheel."""
    return bundled_dir("datasets") / "imagenet_classes"


def imagenet_class_list(name: str) -> list[str]:
    """The wnids of shipped list `name` (e.g. `cifar10_in_domain`), in file order.

    Raises SourceError naming the file and line when the list is missing, empty, malformed or repeats a wnid.
    """
    path = class_list_dir() / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in class_list_dir().glob("*.txt"))
        raise SourceError(f"no shipped ImageNet class list '{name}' ({path}); known: {known}")
    wnids: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not WNID.match(entry):
            raise SourceError(f"{path}:{number}: '{entry}' is not a WordNet id (n + 8 digits)")
        if entry in seen:
            raise SourceError(f"{path}:{number}: {entry} repeats line {seen[entry]}")
        seen[entry] = number
        wnids.append(entry)
    if not wnids:
        raise SourceError(f"{path}: lists no classes")
    return wnids


def _resolve_classes(source: str, classes: str | list[str] | None, present: list[str]) -> list[str]:
    """The wnids to read: all present folders, a shipped list by name, or an explicit list; sorted like
    torchvision's ImageFolder so that label values do not depend on how the list was written."""
    if classes is None:
        return sorted(present)
    wanted = imagenet_class_list(classes) if isinstance(classes, str) else [str(c) for c in classes]
    bad = [c for c in wanted if not WNID.match(c)]
    if bad:
        raise SourceError(f"real source '{source}': classes {bad[:5]} are not WordNet ids (n + 8 digits)")
    absent = sorted(set(wanted) - set(present))
    if absent:
        raise SourceError(f"real source '{source}': {len(absent)} requested classes have no folder, e.g. {absent[:5]}")
    return sorted(set(wanted))


def _entries(folder: Path, dirs: bool) -> list[str]:
    """Sorted names of the sub-folders (`dirs`) or image files of `folder`; listing decodes nothing."""
    with os.scandir(folder) as it:
        if dirs:
            return sorted(e.name for e in it if e.is_dir())
        return sorted(e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in _IMAGE_SUFFIXES)


def _list_images(folder: Path) -> list[str]:
    return [str(folder / n) for n in _entries(folder, dirs=False)]


def _take(
    paths: list[str], labels: np.ndarray, wnids: list[str], image_size: int, count: int | None, seed: int
) -> LabelledImages:
    chosen = choose_subset(labels, len(paths), count, seed)
    images = decode_image_files([paths[i] for i in chosen], image_size)
    return LabelledImages(images, labels[chosen].astype(np.int64), wnids)


@register_source("imagenet")
def load_imagenet(
    split: str,
    image_size: int,
    root: str | None = None,
    count: int | None = None,
    seed: int = 0,
    classes: str | list[str] | None = None,
) -> LabelledImages:
    """ImageNet (ILSVRC-2012) in ImageFolder layout: `root/train/<wnid>/*.JPEG`, `root/val/<wnid>/*`.

    `classes` is a list of wnids or the name of a shipped list (`cifar10_in_domain`, ...). Labels index the
    selected wnids in sorted order; `classes` of the result are the wnids. ImageNet cannot be downloaded
    automatically: its licence needs an account at image-net.org.
    """
    check_split("imagenet", split, ("train", "val"))
    base = default_root("imagenet", root)
    folder = base / split
    if not folder.is_dir():
        raise SourceError(
            f"real source 'imagenet': {folder} does not exist. Place ILSVRC-2012 under {base} as "
            f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (set the card's `source.root`), after downloading it from "
            f"https://image-net.org (it needs an account; there is no automatic download)"
        )
    present = _entries(folder, dirs=True)
    wnids = _resolve_classes("imagenet", classes, present)
    paths: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        files = _list_images(folder / wnid)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise SourceError(f"real source 'imagenet': no images under {folder} for the {len(wnids)} chosen classes")
    return _take(paths, np.asarray(labels, dtype=np.int64), wnids, image_size, count, seed)


@register_source("tiny_imagenet")
def load_tiny_imagenet(
    split: str,
    image_size: int,
    root: str | None = None,
    count: int | None = None,
    seed: int = 0,
    classes: str | list[str] | None = None,
) -> LabelledImages:
    """Tiny ImageNet (200 classes, 64 px) in its released layout, `root` being `tiny-imagenet-200/` or its parent:
    `wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with `val/val_annotations.txt`.

    Its test images are unlabelled, so `val` and `test` are two fixed, stratified halves of the released val set.
    """
    check_split("tiny_imagenet", split, ("train", "val", "test"))
    base = default_root("tiny_imagenet", root)
    if (base / "tiny-imagenet-200").is_dir():
        base = base / "tiny-imagenet-200"
    if not (base / "wnids.txt").is_file():
        raise SourceError(
            f"real source 'tiny_imagenet': {base / 'wnids.txt'} does not exist. Unzip tiny-imagenet-200.zip "
            f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) under {base.parent if base.name else base} "
            f"or set the card's `source.root`"
        )
    present = [w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()]
    wnids = _resolve_classes("tiny_imagenet", classes, present)
    label_of = {w: i for i, w in enumerate(wnids)}
    paths: list[str] = []
    labels: list[int] = []
    if split == "train":
        for wnid in wnids:
            files = _list_images(base / "train" / wnid / "images")
            paths += files
            labels += [label_of[wnid]] * len(files)
        all_labels = np.asarray(labels, dtype=np.int64)
        return _take(paths, all_labels, wnids, image_size, count, seed)
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise SourceError(f"real source 'tiny_imagenet': {annotations} does not exist")
    # halves are cut over every released class, so a class filter never moves an image between val and test
    index_of = {w: i for i, w in enumerate(present)}
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index_of:
            paths.append(str(base / "val" / "images" / fields[0]))
            labels.append(index_of[fields[1]])
    part = held_out_part(np.asarray(labels, dtype=np.int64), *((0.0, 0.5) if split == "val" else (0.5, 1.0)))
    kept = [i for i in part if present[labels[i]] in label_of]
    kept_labels = np.asarray([label_of[present[labels[i]]] for i in kept], dtype=np.int64)
    return _take([paths[i] for i in kept], kept_labels, wnids, image_size, count, seed)
