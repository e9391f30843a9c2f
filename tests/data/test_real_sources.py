"""Real sources: the bundled digits and photos, the generated shapes task, and folders of images through
torchvision's ImageFolder."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.data.images import class_interleaved_order
from study.data.sources.registry import SourceError, load_source
from study.data.sources.shapes import CLASSES, shape_mask


class TestDigits:
    def test_splits_are_disjoint_and_cover_the_data(self) -> None:
        sizes = {s: len(load_source("digits", s, 32)) for s in ("train", "val", "test")}
        assert sizes == {"train": 1257, "val": 180, "test": 360}

    def test_images_are_upsampled_grey_uint8(self) -> None:
        data = load_source("digits", "test", 32)
        assert data.images.shape[1:] == (32, 32, 1) and data.images.dtype == np.uint8
        assert data.images.max() > 200 and set(np.unique(data.labels)) == set(range(10))

    def test_unknown_split_names_the_choices(self) -> None:
        with pytest.raises(SourceError, match="no split 'holdout'"):
            load_source("digits", "holdout", 32)


class TestPhotoCrops:
    def test_same_seed_same_crops_and_other_seed_differs(self) -> None:
        a = load_source("photo_crops", "train", 32, count=20, seed=3).images
        b = load_source("photo_crops", "train", 32, count=20, seed=3).images
        c = load_source("photo_crops", "train", 32, count=20, seed=4).images
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        assert a.shape == (20, 32, 32, 3) and a.std() > 10


class TestShapes:
    def test_balanced_deterministic_splits_of_distinct_images(self) -> None:
        a = load_source("shapes", "test", 16, count=40)
        assert a.images.shape == (40, 16, 16, 3) and a.images.dtype == np.uint8 and len(a.classes) == 10
        assert np.bincount(a.labels).tolist() == [4] * 10
        assert np.array_equal(a.images, load_source("shapes", "test", 16, count=40).images)  # fixed per split
        assert not np.array_equal(a.images, load_source("shapes", "val", 16, count=40).images)
        assert len({img.tobytes() for img in a.images}) == 40

    def test_every_class_is_its_own_shape(self) -> None:
        # in one frame the ten masks differ pairwise (intersection over union below 0.8), and each covers some area
        axis = np.linspace(-1.2, 1.2, 96)
        u, v = np.meshgrid(axis, axis)
        masks = [shape_mask(k, u, v) for k in range(len(CLASSES))]
        assert all(m.mean() > 0.05 for m in masks)
        for i, j in itertools.combinations(range(len(masks)), 2):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.8, (CLASSES[i], CLASSES[j], iou)


class TestFolder:
    def test_folder_of_class_subfolders_loads_with_labels(self, tmp_path: Path) -> None:
        for label, colour in (("cat", 40), ("dog", 200)):
            (tmp_path / "train" / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 24, 3), colour + i, np.uint8)).save(
                    tmp_path / "train" / label / f"{i}.png"
                )
        data = load_source("folder", "train", 16, root=str(tmp_path))
        assert data.classes == ["cat", "dog"] and data.images.shape == (6, 16, 16, 3)
        assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]

    def test_missing_folder_names_the_path(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match="does not exist"):
            load_source("folder", "train", 16, root=str(tmp_path / "absent"))


def test_class_interleaved_order_visits_classes_round_robin() -> None:
    labels = np.array([2, 2, 0, 1, 0, 2, 1])
    order = class_interleaved_order(labels)
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 2, 2]
    assert sorted(order.tolist()) == list(range(7))


class TestUnsplitFolder:
    """A folder of class folders without train/val/test: split for a teacher, read whole for a surrogate."""

    @staticmethod
    def folder(root: Path, per_class: dict[str, int]) -> Path:
        """One file per grey level, so an image's value names its file."""
        value = 0
        for label, n in per_class.items():
            (root / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(root / label / f"{i}.png")
                value += 1
        return root

    @staticmethod
    def files(data) -> set[int]:
        return {int(v) for v in data.images[:, 0, 0, 0]}

    def test_splits_are_disjoint_by_file_stratified_and_cover_the_folder(self, tmp_path: Path) -> None:
        root = str(self.folder(tmp_path, {"ant": 20, "bee": 30}))
        parts = {s: load_source("folder", s, 8, root=root) for s in ("train", "val", "test")}
        files = {s: self.files(p) for s, p in parts.items()}
        assert files["train"].isdisjoint(files["val"]) and files["train"].isdisjoint(files["test"])
        assert files["val"].isdisjoint(files["test"])
        assert files["train"] | files["val"] | files["test"] == set(range(50))
        assert [np.bincount(parts[s].labels).tolist() for s in ("train", "val", "test")] == [[16, 24], [2, 3], [2, 3]]
        again = load_source("folder", "val", 8, root=root)
        assert self.files(again) == files["val"]  # deterministic

    def test_fractions_and_seed_are_settable(self, tmp_path: Path) -> None:
        root = str(self.folder(tmp_path, {"ant": 20, "bee": 20}))
        half = load_source("folder", "test", 8, root=root, params={"split_fractions": [0.5, 0.0, 0.5]})
        assert (
            len(half) == 20
            and len(load_source("folder", "val", 8, root=root, params={"split_fractions": [0.5, 0, 0.5]})) == 0
        )
        other = load_source(
            "folder", "test", 8, root=root, params={"split_fractions": [0.5, 0.0, 0.5], "split_seed": 1}
        )
        assert self.files(other) != self.files(half)
        with pytest.raises(SourceError, match="split_fractions must be 3 shares"):
            load_source("folder", "train", 8, root=root, params={"split_fractions": [0.9, 0.2, 0.1]})

    def test_a_surrogate_card_over_a_folder_reads_all_of_it_by_default(self, tmp_path: Path) -> None:
        from study.config import RealSource

        root = str(self.folder(tmp_path, {"ant": 5, "bee": 5}))
        source = RealSource(name="folder", root=root)
        assert source.split == "all" and RealSource(name="digits").split == "train"
        data = load_source("folder", source.split, 8, root=root)
        assert self.files(data) == set(range(10))

    def test_teacher_class_order_relabels_the_folder(self, tmp_path: Path) -> None:
        root = str(self.folder(tmp_path, {"ant": 5, "bee": 5}))
        data = load_source("folder", "all", 8, root=root, params={"classes": ["bee", "ant"]})
        assert data.classes == ["bee", "ant"]
        assert all(label == (1 if v < 5 else 0) for v, label in zip(data.images[:, 0, 0, 0], data.labels, strict=True))
        with pytest.raises(SourceError, match="has class folders"):
            load_source("folder", "all", 8, root=root, params={"classes": ["bee", "wasp"]})
