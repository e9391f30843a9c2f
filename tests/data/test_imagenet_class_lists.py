"""The shipped ImageNet-1k in-/out-of-domain class lists of the paper's teacher datasets (issue 24): each parses,
holds only ImageNet-1k wnids, its in and out lists partition the 1,000, and each card naming one loads and resolves."""

from __future__ import annotations

import pytest

from study.config import load_card
from study.data.sources.imagenet import class_list_dir, imagenet_class_list
from study.resources import bundled_dir

# teacher dataset -> in-domain size; 0: no in-domain list (EuroSAT's overhead tiles show no ImageNet-1k class)
DATASETS = {
    "cifar10": 245,
    "cifar100": 175,
    "tiny_imagenet": 200,
    "fgvc_aircraft": 2,
    "oxford_pets": 123,
    "eurosat": 0,
}


def test_every_shipped_list_parses_and_holds_only_imagenet_1k_wnids() -> None:
    all_1k = imagenet_class_list("imagenet1k")
    assert len(all_1k) == len(set(all_1k)) == 1000
    names = sorted(p.stem for p in class_list_dir().glob("*.txt"))
    expected = {f"{d}_{side}_domain" for d in DATASETS for side in ("in", "out_of") if side == "out_of" or DATASETS[d]}
    assert set(names) == expected | {"imagenet1k"}
    for name in names:
        wnids = imagenet_class_list(name)
        assert set(wnids) <= set(all_1k), (name, sorted(set(wnids) - set(all_1k))[:5])


@pytest.mark.parametrize("dataset", DATASETS)
def test_in_and_out_of_domain_partition_imagenet_1k(dataset: str) -> None:
    all_1k = set(imagenet_class_list("imagenet1k"))
    inside = set(imagenet_class_list(f"{dataset}_in_domain")) if DATASETS[dataset] else set()
    outside = set(imagenet_class_list(f"{dataset}_out_of_domain"))
    assert len(inside) == DATASETS[dataset]
    assert inside.isdisjoint(outside) and inside | outside == all_1k


def test_the_lists_hold_the_classes_they_should() -> None:
    assert imagenet_class_list("tiny_imagenet_in_domain")[:2] == ["n02124075", "n04067472"]  # wnids.txt order
    assert set(imagenet_class_list("fgvc_aircraft_in_domain")) == {"n02690373", "n04552348"}  # airliner, warplane
    pets = set(imagenet_class_list("oxford_pets_in_domain"))
    assert {"n02123394", "n02110958", "n02085620"} <= pets and "n02129165" not in pets  # Persian, pug, Chihuahua; lion
    cifar100 = set(imagenet_class_list("cifar100_in_domain"))
    # skunk, television, table lamp, dining table (NBDT's senses corrected or added), goldfish (aquarium fish)
    assert {"n02445715", "n04404412", "n04380533", "n03201208", "n01443537"} <= cifar100
    assert "n03793489" not in cifar100  # the computer mouse is not CIFAR-100's mouse


@pytest.mark.parametrize(
    "card",
    sorted(p.stem for p in bundled_dir("datasets").glob("imagenet_*_domain.yaml")),
)
def test_every_imagenet_card_loads_and_names_a_shipped_list(card: str) -> None:
    spec = load_card(bundled_dir("datasets") / f"{card}.yaml")
    assert spec.kind == "real" and spec.source is not None and spec.source.name == "imagenet"
    listed = spec.source.params["classes"]
    assert card == f"imagenet_{listed}" and imagenet_class_list(listed)
