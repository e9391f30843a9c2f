"""Real sources through torchvision's own dataset classes, ImageNet folders and the shipped ImageNet class lists.

Every torchvision source reads small files written in that dataset's on-disk layout (tests/fabricated_datasets.py)
through the real torchvision class; nothing downloads.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from study.data.sources import imagenet as imagenet_sources
from study.data.sources.imagenet import imagenet_class_list
from study.data.sources.registry import SourceError, list_sources, load_source
from study.data.sources.torchvision_lists import dtd_files, fgvc_aircraft_files, food101_files, oxford_pets_files
from tests.fabricated_datasets import (
    AIRCRAFT_FAMILY,
    DTD_PER_CLASS,
    assert_paired,
    image_ids,
    write_aircraft,
    write_cifar10,
    write_cifar100,
    write_dtd,
    write_eurosat,
    write_food101,
    write_idx,
    write_jpeg,
    write_pets,
    write_stl10,
    write_svhn,
    write_tiny_imagenet,
)

TORCHVISION_SOURCES = (
    "cifar10", "cifar100", "svhn", "stl10", "food101", "dtd", "fgvc_aircraft", "oxford_pets", "eurosat", "mnist",
    "fashion_mnist",
)  # fmt: skip


# ----------------------------------------------------------------------------------------- torchvision
class TestArraySources:
    def test_cifar10_train_reads_every_pickled_batch_with_labels_paired(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_cifar10(tmp_path, monkeypatch)
        data = load_source("cifar10", "train", 32, root=str(tmp_path))
        assert data.images.shape == (50, 32, 32, 3) and sorted(image_ids(data.images)) == list(range(50))
        assert data.classes == [f"class{c}" for c in range(10)]
        assert_paired(data.images, data.labels)

    def test_cifar10_val_and_test_are_disjoint_stratified_halves_of_the_test_batch(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_cifar10(tmp_path, monkeypatch)
        val = load_source("cifar10", "val", 32, root=str(tmp_path))
        test = load_source("cifar10", "test", 32, root=str(tmp_path))
        assert set(image_ids(val.images)).isdisjoint(image_ids(test.images))
        assert sorted(image_ids(val.images) + image_ids(test.images)) == list(range(100, 140))
        assert np.bincount(val.labels).tolist() == [2] * 10 == np.bincount(test.labels).tolist()

    def test_count_draws_a_seeded_class_balanced_subset(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        write_cifar10(tmp_path, monkeypatch)
        a = load_source("cifar10", "train", 16, root=str(tmp_path), count=10, seed=1)
        b = load_source("cifar10", "train", 16, root=str(tmp_path), count=10, seed=1)
        c = load_source("cifar10", "train", 16, root=str(tmp_path), count=10, seed=2)
        assert a.images.shape == (10, 16, 16, 3) and sorted(a.labels.tolist()) == list(range(10))
        assert image_ids(a.images) == image_ids(b.images) != image_ids(c.images)
        assert_paired(a.images, a.labels)

    def test_cifar100_uses_fine_labels_and_names(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        write_cifar100(tmp_path, monkeypatch)
        data = load_source("cifar100", "train", 32, root=str(tmp_path))
        assert data.classes == ["apple", "bear", "cloud", "dolphin"] and len(data) == 12
        assert_paired(data.images, data.labels)
        assert len(load_source("cifar100", "val", 32, root=str(tmp_path))) == 4

    @pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
    def test_idx_files_load_as_one_channel_resized(self, tmp_path: Path, name: str, folder: str) -> None:
        write_idx(tmp_path, folder)
        data = load_source(name, "train", 32, root=str(tmp_path))
        assert data.images.shape == (20, 32, 32, 1) and len(data.classes) == 10
        assert np.array_equal(
            data.images[:, :, :, 0], np.broadcast_to((20 * data.labels + 5)[:, None, None], (20, 32, 32))
        )
        assert len(load_source(name, "val", 32, root=str(tmp_path))) == 10

    def test_svhn_mat_maps_label_ten_to_digit_zero_and_offers_extra(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_svhn(tmp_path, monkeypatch)
        data = load_source("svhn", "train", 32, root=str(tmp_path))
        assert sorted(image_ids(data.images)) == list(range(20)) and 0 in data.labels
        assert_paired(data.images, data.labels)
        assert sorted(image_ids(load_source("svhn", "extra", 32, root=str(tmp_path)).images)) == list(range(90, 95))

    def test_stl10_unlabeled_has_no_labels_and_train_is_shifted_to_zero_based(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_stl10(tmp_path, monkeypatch)
        unlabeled = load_source("stl10", "unlabeled", 32, root=str(tmp_path))
        assert unlabeled.labels is None and unlabeled.images.shape == (6, 32, 32, 3)
        assert sorted(image_ids(unlabeled.images)) == list(range(40, 46))
        train = load_source("stl10", "train", 32, root=str(tmp_path))
        assert train.labels.tolist() == list(range(10)) and train.classes[0] == "stl0"
        assert_paired(train.images, train.labels)


class TestFileSources:
    def test_food101_reads_meta_json_and_decodes_jpegs_to_squares(self, tmp_path: Path) -> None:
        write_food101(tmp_path)
        data = load_source("food101", "train", 16, root=str(tmp_path))
        assert data.images.shape == (12, 16, 16, 3) and data.classes == ["apple_pie", "sushi"]
        assert np.bincount(data.labels).tolist() == [6, 6]
        assert_paired(data.images, data.labels, tol=3)
        assert len(load_source("food101", "val", 16, root=str(tmp_path))) == 4

    @pytest.mark.parametrize("partition", [1, 2])
    def test_dtd_uses_its_own_train_val_test_and_partition(self, tmp_path: Path, partition: int) -> None:
        write_dtd(tmp_path)
        for split, per_class in DTD_PER_CLASS.items():
            data = load_source("dtd", split, 8, root=str(tmp_path), params={"partition": partition})
            assert np.bincount(data.labels).tolist() == [per_class + partition - 1] * 3
            assert data.classes == ["banded", "dotted", "zigzagged"]
            assert_paired(data.images, data.labels, tol=3)

    def test_fgvc_aircraft_reads_variant_annotations(self, tmp_path: Path) -> None:
        write_aircraft(tmp_path)
        data = load_source("fgvc_aircraft", "trainval", 8, root=str(tmp_path), params={"annotation_level": "variant"})
        assert data.classes == list(AIRCRAFT_FAMILY) and np.bincount(data.labels).tolist() == [3, 3, 3]
        assert_paired(data.images, data.labels, tol=3)

    def test_an_argument_torchvision_rejects_is_a_source_error_naming_it(self, tmp_path: Path) -> None:
        write_aircraft(tmp_path)
        with pytest.raises(SourceError, match=r"fgvc_aircraft.*FGVCAircraft rejected.*annotation_level.*model"):
            load_source("fgvc_aircraft", "train", 8, root=str(tmp_path), params={"annotation_level": "model"})

    def test_fgvc_aircraft_defaults_to_the_papers_family_level(self, tmp_path: Path) -> None:
        # a teacher loads its dataset without params: it must classify the 70 families, as the paper's teachers do
        write_aircraft(tmp_path)
        data = load_source("fgvc_aircraft", "train", 8, root=str(tmp_path))
        assert data.classes == ["Boeing 737", "A380"] and np.bincount(data.labels).tolist() == [6, 3]
        variant_label = np.rint((data.images[:, 0, 0, 1].astype(float) - 5) / 20).astype(int)
        assert (data.labels == (variant_label == 2).astype(int)).all()  # both 737 variants are family 0

    def test_oxford_pets_train_is_trainval_and_count_balances_breeds(self, tmp_path: Path) -> None:
        write_pets(tmp_path)
        data = load_source("oxford_pets", "train", 8, root=str(tmp_path), count=4)
        assert data.classes == ["Abyssinian", "Basset Hound"] and np.bincount(data.labels).tolist() == [2, 2]
        assert_paired(data.images, data.labels, tol=3)

    def test_eurosat_splits_are_a_fixed_disjoint_60_20_20_cut(self, tmp_path: Path) -> None:
        write_eurosat(tmp_path)
        sizes = {s: len(load_source("eurosat", s, 8, root=str(tmp_path))) for s in ("train", "val", "test")}
        assert sizes == {"train": 12, "val": 4, "test": 4}
        data = load_source("eurosat", "train", 8, root=str(tmp_path))
        assert data.classes == ["AnnualCrop", "Forest"]
        assert_paired(data.images, data.labels, tol=3)


def _write_aircraft_variants(root: Path) -> None:
    """Aircraft's variant class list alone: its reader reads it before the split file."""
    (root / "fgvc-aircraft-2013b" / "data").mkdir(parents=True)
    (root / "fgvc-aircraft-2013b" / "data" / "variants.txt").write_text("A380\n")


def _case(write: Callable, cls: type, read: Callable, **kwargs: object) -> object:
    return pytest.param(write, cls, read, kwargs, id="-".join([cls.__name__, *map(str, kwargs.values())]))


# each case: the layout writer, the torchvision class, our reader of its split files, and the kwargs both are given
SPLIT_FILE_CASES = [
    *[_case(write_food101, tvd.Food101, food101_files, split=s) for s in ("train", "test")],
    *[_case(write_dtd, tvd.DTD, dtd_files, split=s, partition=p) for s in DTD_PER_CLASS for p in (1, 2)],
    *[
        _case(write_aircraft, tvd.FGVCAircraft, fgvc_aircraft_files, split=s, annotation_level=level)
        for s in ("train", "val", "test", "trainval")
        for level in ("variant", "family")
    ],
    *[_case(write_pets, tvd.OxfordIIITPet, oxford_pets_files, split=s) for s in ("trainval", "test")],
]


class TestSplitFileReaders:
    @pytest.mark.parametrize(("write", "cls", "read", "kwargs"), SPLIT_FILE_CASES)
    def test_reader_yields_torchvisions_own_items(
        self, tmp_path: Path, write: Callable, cls: type, read: Callable, kwargs: dict[str, object]
    ) -> None:
        """Same classes, same labels as `dataset[i][1]`, and each listed file decodes to `dataset[i][0]`."""
        write(tmp_path)
        dataset = cls(str(tmp_path), **kwargs)
        listed = read(str(tmp_path), **kwargs)
        items = [dataset[i] for i in range(len(dataset))]
        assert listed.classes == dataset.classes
        assert listed.labels == [label for _, label in items] and len(set(listed.labels)) > 1
        for path, (image, _) in zip(listed.paths, items, strict=True):
            with Image.open(path) as decoded:
                assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))

    @pytest.mark.parametrize(
        ("read", "kwargs", "missing"),
        [
            (food101_files, {"split": "test"}, "food-101/meta/test.json"),
            (dtd_files, {"split": "val", "partition": 3}, "dtd/dtd/labels/val3.txt"),
            (fgvc_aircraft_files, {"annotation_level": "family"}, "fgvc-aircraft-2013b/data/families.txt"),
            (fgvc_aircraft_files, {"split": "val"}, "fgvc-aircraft-2013b/data/images_variant_val.txt"),
            (oxford_pets_files, {"split": "test"}, "oxford-iiit-pet/annotations/test.txt"),
        ],
        ids=["food101", "dtd", "aircraft-classes", "aircraft-split", "pets"],
    )
    def test_missing_split_file_is_named(self, tmp_path: Path, read: Callable, kwargs: dict, missing: str) -> None:
        _write_aircraft_variants(tmp_path)
        with pytest.raises(SourceError, match=re.escape(f"{tmp_path / missing}: cannot read")):
            read(tmp_path, **kwargs)

    @pytest.mark.parametrize(
        ("read", "split_file", "text", "where"),
        [
            (food101_files, "food-101/meta/train.json", "{", "train.json: not JSON"),
            (food101_files, "food-101/meta/train.json", '{"sushi": "sushi/1"}', "train.json: expected a JSON object"),
            (dtd_files, "dtd/dtd/labels/train1.txt", "banded/a.jpg\nbanded\n", "train1.txt:2: expected 'class/"),
            (
                fgvc_aircraft_files,
                "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                "0001 A380\n0002 A390\n",
                "images_variant_trainval.txt:2: expected 'image-id class' with a class in variants.txt",
            ),
            (oxford_pets_files, "oxford-iiit-pet/annotations/trainval.txt", "cat_1 one 1 1\n", "trainval.txt:1:"),
            (
                oxford_pets_files,
                "oxford-iiit-pet/annotations/trainval.txt",
                "cat_1 1 1 1\ndog_1 1 2 1\n",
                "trainval.txt:2: class id 1 is 'dog' here, 'cat' before",
            ),
        ],
    )
    def test_malformed_split_file_is_named_with_its_line(
        self, tmp_path: Path, read: Callable, split_file: str, text: str, where: str
    ) -> None:
        _write_aircraft_variants(tmp_path)
        (tmp_path / split_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / split_file).write_text(text)
        with pytest.raises(SourceError, match=re.escape(where)):
            read(tmp_path)

    def test_the_readers_module_imports_on_its_own(self) -> None:
        # the readers module and the sources registry must each import on their own, in either order
        code = (
            "import study.data.sources.torchvision_lists as m; from study.data.sources.registry import load_source; "
            "print(m.dtd_files)"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])

    def test_a_reader_that_disagrees_with_torchvision_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # stands for a torchvision release that reads its split files differently from torchvision_lists
        write_food101(tmp_path)
        monkeypatch.setattr(tvd.Food101, "__len__", lambda self: 1)
        with pytest.raises(SourceError, match=r"train\.json: read as 12 images .* no longer matches"):
            load_source("food101", "train", 8, root=str(tmp_path))


class TestMissingData:
    def test_every_torchvision_source_is_registered(self) -> None:
        assert set(TORCHVISION_SOURCES) | {"imagenet", "tiny_imagenet"} <= set(list_sources())

    @pytest.mark.parametrize("name", TORCHVISION_SOURCES)
    def test_absent_data_without_download_says_where_and_how(self, tmp_path: Path, name: str) -> None:
        where = tmp_path / "nothing-here"
        with pytest.raises(SourceError, match=r"download: true") as err:
            load_source(name, "train", 32, root=str(where))
        assert str(where) in str(err.value)

    def test_default_root_comes_from_the_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KD_STUDY_DATA", str(tmp_path))
        with pytest.raises(SourceError, match=re.escape(str(tmp_path / "cifar10"))):
            load_source("cifar10", "train", 32)

    def test_unknown_param_and_split_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"unknown params \['colour'\]"):
            load_source("cifar10", "train", 32, root=str(tmp_path), params={"colour": 1})
        with pytest.raises(SourceError, match="no split 'extra'"):
            load_source("cifar10", "extra", 32, root=str(tmp_path))


# ----------------------------------------------------------------------------------------- ImageNet
class TestImageNetFolder:
    def test_shipped_class_filter_and_count_read_only_those_classes(self, tmp_path: Path) -> None:
        in_domain = imagenet_class_list("cifar10_in_domain")
        outside = imagenet_class_list("cifar10_out_of_domain")[:3]
        for k, wnid in enumerate(in_domain + outside):
            write_jpeg(tmp_path / "train" / wnid / f"{wnid}_{k}.JPEG", 0, (50, 40))
        data = load_source("imagenet", "train", 16, root=str(tmp_path), count=30, seed=0,
                           params={"classes": "cifar10_in_domain"})  # fmt: skip
        assert data.classes == sorted(in_domain) and data.images.shape == (30, 16, 16, 3)
        assert len(set(data.labels.tolist())) == 30  # one image per class, so 30 distinct classes

    def test_explicit_wnid_list_labels_by_sorted_wnid(self, tmp_path: Path) -> None:
        for label, wnid in enumerate(("n01440764", "n01443537", "n01484850")):
            for i in range(4):
                write_jpeg(tmp_path / "val" / wnid / f"{i}.JPEG", label)
        data = load_source("imagenet", "val", 8, root=str(tmp_path), params={"classes": ["n01484850", "n01440764"]})
        assert data.classes == ["n01440764", "n01484850"] and np.bincount(data.labels).tolist() == [4, 4]
        assert np.abs(data.images[..., 1].astype(int) - np.where(data.labels == 0, 5, 45)[:, None, None]).max() <= 3

    def test_missing_folder_or_class_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"image-net\.org"):
            load_source("imagenet", "train", 16, root=str(tmp_path))
        write_jpeg(tmp_path / "train" / "n01440764" / "0.JPEG", 0)
        with pytest.raises(SourceError, match=re.escape("no folder, e.g. ['n09999999']")):
            load_source("imagenet", "train", 16, root=str(tmp_path), params={"classes": ["n09999999"]})

    def test_tiny_imagenet_train_and_val_test_halves(self, tmp_path: Path) -> None:
        wnids = ["n01443537", "n01629819", "n01641577"]
        write_tiny_imagenet(tmp_path, wnids, train_per_class=3, val_per_class=4)
        train = load_source("tiny_imagenet", "train", 32, root=str(tmp_path))
        assert len(train) == 9 and train.classes == wnids
        assert_paired(train.images, train.labels, tol=3)
        val = load_source("tiny_imagenet", "val", 32, root=str(tmp_path))
        test = load_source("tiny_imagenet", "test", 32, root=str(tmp_path))
        assert np.bincount(val.labels).tolist() == [2, 2, 2] == np.bincount(test.labels).tolist()
        only = load_source("tiny_imagenet", "train", 32, root=str(tmp_path), params={"classes": wnids[1:]})
        assert only.classes == wnids[1:] and len(only) == 6


class TestClassLists:
    def test_in_and_out_of_domain_partition_imagenet_1k(self) -> None:
        all_1k = imagenet_class_list("imagenet1k")
        inside = imagenet_class_list("cifar10_in_domain")
        outside = imagenet_class_list("cifar10_out_of_domain")
        assert len(all_1k) == 1000 and all_1k[0] == "n01440764"
        assert inside and outside and set(inside).isdisjoint(outside)
        assert set(inside) | set(outside) == set(all_1k)

    def test_in_domain_holds_the_cifar10_classes_it_should(self) -> None:
        inside = set(imagenet_class_list("cifar10_in_domain"))
        # airliner, sports car, robin, tabby, golden retriever, tree frog, sorrel, speedboat, liner, fire engine
        for wnid in ("n02690373", "n04285008", "n01558993", "n02123045", "n02099601", "n01644373", "n02389026",
                     "n04273569", "n03673027", "n03345487"):  # fmt: skip
            assert wnid in inside
        assert "n01440764" not in inside  # tench

    def test_malformed_or_repeated_lines_are_named(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(imagenet_sources, "class_list_dir", lambda: tmp_path)
        (tmp_path / "bad.txt").write_text("# a comment\nn01440764\nn0144076\n")
        with pytest.raises(SourceError, match=r"bad\.txt:3: 'n0144076' is not a WordNet id"):
            imagenet_class_list("bad")
        (tmp_path / "twice.txt").write_text("n01440764\nn01440764  # again\n")
        with pytest.raises(SourceError, match=re.escape("twice.txt:2: n01440764 repeats line 1")):
            imagenet_class_list("twice")
        with pytest.raises(SourceError, match=re.escape("known: ['bad', 'twice']")):
            imagenet_class_list("absent")
