"""Small files in each dataset's own on-disk layout, for tests that read them through the real torchvision classes.

Every image is constant per channel: red = its id, green = 20 * label + 5, so a test can follow ids through splits
and subsets and check that pixels stay paired with their labels. Nothing downloads.

CIFAR-10/100, SVHN and STL-10 verify the md5 of every file against the released archive, which a small test file
cannot match. `trust_written` puts the md5 of the files a test wrote into the class's own checksum table, so
torchvision's integrity check still runs (and would still catch a truncated file); nothing else is replaced.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torchvision.datasets as tvd
from PIL import Image


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_written(monkeypatch: pytest.MonkeyPatch, cls: type, attr: str, folder: Path) -> None:
    """Replace the md5s in `cls.<attr>` (a list of [filename, md5]) by those of the files written under `folder`."""
    table = [[name, md5(folder / name)] for name, _ in getattr(cls, attr)]
    monkeypatch.setattr(cls, attr, table)


def constant_images(ids: np.ndarray, labels: np.ndarray, size: int, channels_first: bool = False) -> np.ndarray:
    """(N, size, size, 3) uint8 (or N, 3, size, size): red = id, green = 20 * label + 5, blue = 0."""
    img = np.zeros((len(ids), size, size, 3), np.uint8)
    img[..., 0] = ids[:, None, None]
    img[..., 1] = (20 * labels + 5)[:, None, None]
    return img.transpose(0, 3, 1, 2).copy() if channels_first else img


def image_ids(images: np.ndarray) -> list[int]:
    return images[:, 0, 0, 0].astype(int).tolist()


def assert_paired(images: np.ndarray, labels: np.ndarray, tol: int = 0) -> None:
    """Every pixel's green channel encodes its image's label (within `tol` for JPEG)."""
    expected = (20 * labels + 5)[:, None, None]
    assert np.abs(images[..., 1].astype(int) - expected).max() <= tol


def cycled_labels(n: int, classes: int) -> np.ndarray:
    return np.arange(n) % classes


def write_jpeg(path: Path, label: int, size: tuple[int, int] = (24, 18)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), (40, 20 * label + 5, 90), np.uint8)).save(path, quality=95)


# ----------------------------------------------------------------------------------------- layouts on disk
def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 10, test: int = 40) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{c}" for c in range(10)]
    for b in range(5):
        ids = np.arange(b * per_batch, (b + 1) * per_batch)
        data = constant_images(ids, cycled_labels(len(ids), 10), 32, channels_first=True).reshape(len(ids), -1)
        (folder / f"data_batch_{b + 1}").write_bytes(
            pickle.dumps({"data": data, "labels": cycled_labels(len(ids), 10).tolist()})
        )
    ids = np.arange(100, 100 + test)
    data = constant_images(ids, cycled_labels(test, 10), 32, channels_first=True).reshape(test, -1)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": cycled_labels(test, 10).tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    trust_written(monkeypatch, tvd.CIFAR10, "train_list", folder)
    trust_written(monkeypatch, tvd.CIFAR10, "test_list", folder)
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, ids in (("train", np.arange(0, 12)), ("test", np.arange(50, 58))):
        labels = cycled_labels(len(ids), 4)
        data = constant_images(ids, labels, 32, channels_first=True).reshape(len(ids), -1)
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": labels.tolist()}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bear", "cloud", "dolphin"]}))
    trust_written(monkeypatch, tvd.CIFAR100, "train_list", folder)
    trust_written(monkeypatch, tvd.CIFAR100, "test_list", folder)
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": md5(folder / "meta")})


def write_idx(root: Path, cls_folder: str) -> None:
    raw = root / cls_folder / "raw"
    raw.mkdir(parents=True)
    for prefix, ids in (("train", np.arange(0, 20)), ("t10k", np.arange(100, 120))):
        labels = cycled_labels(len(ids), 10)
        pixels = np.broadcast_to((20 * labels + 5).astype(np.uint8)[:, None, None], (len(ids), 28, 28))
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">iiii", 2051, len(ids), 28, 28) + pixels.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">ii", 2049, len(ids)) + labels.astype(np.uint8).tobytes()
        )


def write_svhn(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(tvd.SVHN.split_list)
    for split, ids in (("train", np.arange(0, 20)), ("test", np.arange(50, 70)), ("extra", np.arange(90, 95))):
        labels = cycled_labels(len(ids), 10)
        images = constant_images(ids, labels, 32).transpose(1, 2, 3, 0)  # (H, W, C, N) as released
        svhn_y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]  # SVHN stores digit 0 as 10
        path = root / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": images, "y": svhn_y})
        table[split] = [table[split][0], path.name, md5(path)]
    monkeypatch.setattr(tvd.SVHN, "split_list", table)


def write_stl10(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for prefix, ids in (("train", np.arange(0, 10)), ("test", np.arange(20, 30)), ("unlabeled", np.arange(40, 46))):
        labels = cycled_labels(len(ids), 10)
        (folder / f"{prefix}_X.bin").write_bytes(constant_images(ids, labels, 96, channels_first=True).tobytes())
        if prefix != "unlabeled":
            (folder / f"{prefix}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())  # 1-based on disk
    (folder / "class_names.txt").write_text("\n".join(f"stl{c}" for c in range(10)) + "\n")
    trust_written(monkeypatch, tvd.STL10, "train_list", folder)
    trust_written(monkeypatch, tvd.STL10, "test_list", folder)


def write_food101(root: Path) -> None:
    """Classes are written out of sorted order (sushi first): their labels must still follow the sorted names."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4)):
        meta: dict[str, list[str]] = {}
        for label, cls in reversed(list(enumerate(("apple_pie", "sushi")))):
            meta[cls] = [f"{cls}/{split}{i}" for i in range(n)]
            for rel in meta[cls]:
                write_jpeg(base / "images" / f"{rel}.jpg", label, (40, 30))
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))


DTD_PER_CLASS = {"train": 3, "val": 1, "test": 2}  # partition 1; partition p lists p - 1 more of each class


def write_dtd(root: Path) -> None:
    """Two partitions whose splits all differ in size; lines run from the last class to the first."""
    data = root / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    for partition in (1, 2):
        for split, per_class in DTD_PER_CLASS.items():
            lines = []
            for label, cls in reversed(list(enumerate(("banded", "dotted", "zigzagged")))):
                for i in range(per_class + partition - 1):
                    name = f"{cls}_{split}{partition}_{i}.jpg"
                    write_jpeg(data / "images" / cls / name, label)
                    lines.append(f"{cls}/{name}")
            (data / "labels" / f"{split}{partition}.txt").write_text("\n".join(lines) + "\n")


AIRCRAFT_FAMILY = {"737-300": "Boeing 737", "737-400": "Boeing 737", "A380": "A380"}


def write_aircraft(root: Path) -> None:
    """torchvision's FGVC-Aircraft layout: one image folder, class lists and per-level, per-split label files.
    Images encode their variant's label; two variants share the family 'Boeing 737'."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = list(AIRCRAFT_FAMILY)
    families = list(dict.fromkeys(AIRCRAFT_FAMILY.values()))
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    (data / "families.txt").write_text("\n".join(families) + "\n")
    for split in ("train", "val", "test", "trainval"):
        variant_lines, family_lines = [], []
        for label, variant in enumerate(variants):
            for i in range(3):
                image = f"{split}{label}{i}"
                write_jpeg(data / "images" / f"{image}.jpg", label)
                variant_lines.append(f"{image} {variant}")
                family_lines.append(f"{image} {AIRCRAFT_FAMILY[variant]}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(variant_lines) + "\n")
        (data / f"images_family_{split}.txt").write_text("\n".join(family_lines) + "\n")


def write_pets(root: Path) -> None:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    for split, numbers in (("trainval", range(1, 5)), ("test", range(10, 14))):
        lines = []
        for label, (breed, species) in enumerate((("Abyssinian", 1), ("basset_hound", 2))):
            for k in numbers:
                write_jpeg(base / "images" / f"{breed}_{k}.jpg", label)
                lines.append(f"{breed}_{k} {label + 1} {species} 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_eurosat(root: Path) -> None:
    for label, cls in enumerate(("AnnualCrop", "Forest")):
        for i in range(10):
            write_jpeg(root / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg", label, (64, 64))


def write_tiny_imagenet(root: Path, wnids: list[str], train_per_class: int, val_per_class: int) -> None:
    """tiny-imagenet-200 as unzipped: wnids.txt, train/<wnid>/images/, one val/images folder and its annotations."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for label, wnid in enumerate(wnids):
        for i in range(train_per_class):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label, (64, 64))
        for i in range(val_per_class):
            name = f"val_{label * val_per_class + i}.JPEG"
            write_jpeg(base / "val" / "images" / name, label, (64, 64))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_imagenet(root: Path, wnids: list[str], split: str, per_class: int) -> None:
    """An ILSVRC-2012 folder split (<split>/<wnid>/*.JPEG); label k is the k-th wnid given, encoded modulo 12."""
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            write_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", label % 12, (40, 30))
