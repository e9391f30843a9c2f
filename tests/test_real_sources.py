"""Real sources: the bundled digits and photos, and folders of images through torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.data.images import class_interleaved_order
from study.data.real import SourceError, load_source


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
