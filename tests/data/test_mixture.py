"""Mixture surrogates: realised proportions, byte-identical rebuilds, the manifest's record, the recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from study.config import CardSpec, SpecError, load_card
from study.data import shards
from study.data.build import build_surrogate
from study.data.mixture import allocate, interleave, manifest_sha256, mixture_recipe, resolve_mixture, uses_teacher
from study.data.shards.reader import iter_blocks, read_all
from study.distill.batches import is_synthetic
from study.resources import resolve_card_path
from study.teacher.checkpoint import load_teacher


def write_cards(folder: Path, weights: tuple[float, float] = (1, 3), count: int = 200, **mix) -> CardSpec:
    """Two cheap generated components (noise, dead leaves) and a mixture of them, as card files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    noise = {"name": "noise_c", "kind": "generated", "generator": "uniform_noise", "count": 256, "seed": 1}
    leaves = {"name": "leaves_c", "kind": "generated", "generator": "dead_leaves", "count": 256, "seed": 2}
    for card in (noise, leaves):
        (folder / f"{card['name']}.yaml").write_text(yaml.safe_dump({**card, "images_per_sample": 64}))
    mixture = {
        "name": "blend",
        "kind": "mixture",
        "components": [{"card": "noise_c.yaml", "weight": weights[0]}, {"card": "leaves_c.yaml", "weight": weights[1]}],
        "count": count,
        "images_per_sample": 32,
        "samples_per_shard": 2,
        "seed": 5,
        **mix,
    }
    path = folder / "blend.yaml"
    path.write_text(yaml.safe_dump(mixture))
    return resolve_mixture(load_card(path), folder)


def stored_components(root: str, manifest: shards.Manifest) -> np.ndarray:
    return np.concatenate([meta["components"] for _, meta in iter_blocks(manifest.shard_uris(root))])


class TestMixtureBuild:
    def test_realised_proportions_match_the_weights_at_every_amount(self, tmp_path: Path) -> None:
        card = write_cards(tmp_path / "cards")
        result = build_surrogate(card, str(tmp_path / "shards"))
        m = result.manifest
        assert m.count == 200 and [c.weight for c in m.components] == [0.25, 0.75]
        assert m.realised == {"noise_c": 0.25, "leaves_c": 0.75}
        which = stored_components(result.root, m)
        # every prefix (every amount an arm may read) holds each component within one image of its share
        prefix_share = np.cumsum(which == 1) / np.arange(1, len(which) + 1)
        assert np.all(np.abs(prefix_share * np.arange(1, len(which) + 1) - 0.75 * np.arange(1, len(which) + 1)) <= 1)

    def test_rebuild_is_byte_identical_and_a_second_build_reuses_it(self, tmp_path: Path) -> None:
        card = write_cards(tmp_path / "cards")
        a = build_surrogate(card, str(tmp_path / "a"))
        b = build_surrogate(card, str(tmp_path / "b"))
        for sa, sb in zip(a.manifest.shards, b.manifest.shards, strict=True):
            assert (Path(a.root) / sa.name).read_bytes() == (Path(b.root) / sb.name).read_bytes()
        assert a.manifest == b.manifest and len(a.manifest.shards) == 4
        assert build_surrogate(card, str(tmp_path / "a")).reused

    def test_manifest_names_each_components_count_and_manifest_sha256(self, tmp_path: Path) -> None:
        card = write_cards(tmp_path / "cards")
        result = build_surrogate(card, str(tmp_path / "shards"))
        records = {c.name: c for c in result.manifest.components}
        for name in ("noise_c", "leaves_c"):
            assert records[name].manifest_sha256 == manifest_sha256(str(tmp_path / "shards" / name))
            assert records[name].built == 256
        assert records["noise_c"].count == 50 and records["leaves_c"].count == 150
        # the stored images are the components' first images, in their own order
        images, _ = read_all(result.root, result.manifest)
        leaves, _ = read_all(
            str(tmp_path / "shards" / "leaves_c"), shards.read_manifest(str(tmp_path / "shards" / "leaves_c"))
        )
        which = stored_components(result.root, result.manifest)
        np.testing.assert_array_equal(images[which == 1], leaves[:150])

    def test_a_component_smaller_than_its_share_is_an_error_naming_it(self, tmp_path: Path) -> None:
        card = write_cards(tmp_path / "cards", count=400)
        with pytest.raises(shards.ShardError, match=r"components.1 \('leaves_c'\) holds 256 images"):
            build_surrogate(card, str(tmp_path / "shards"))

    def test_missing_component_card_is_an_error_naming_the_field(self, tmp_path: Path) -> None:
        (tmp_path / "m.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "m",
                    "kind": "mixture",
                    "count": 10,
                    "components": [{"card": "dead_leaves", "weight": 1}, {"card": "nope.yaml", "weight": 1}],
                }
            )
        )
        with pytest.raises(SpecError, match=r"card 'm': components.1.card: .*nope.yaml: file not found"):
            resolve_mixture(load_card(tmp_path / "m.yaml"), tmp_path)

    def test_weights_must_be_positive_and_are_normalised(self) -> None:
        with pytest.raises(ValueError, match="greater than 0"):
            CardSpec(
                name="m", kind="mixture", count=4, components=[{"card": "a", "weight": 0}, {"card": "b", "weight": 1}]
            )
        card = CardSpec(
            name="m", kind="mixture", count=4, components=[{"card": "a", "weight": 2}, {"card": "b", "weight": 6}]
        )
        assert [c.weight for c in card.components] == [0.25, 0.75]

    def test_allocation_and_interleave_are_exact(self) -> None:
        assert allocate(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
        assert interleave([3, 1]).tolist() == [0, 0, 1, 0]


class TestRecipe:
    def test_synthetic_by_default_when_a_component_is_generated_and_the_card_can_override(self, tmp_path: Path) -> None:
        card = write_cards(tmp_path / "cards")
        assert mixture_recipe(card) == "synthetic" and is_synthetic(card)
        real = write_cards(tmp_path / "cards2", recipe="real")
        assert mixture_recipe(real) == "real" and not is_synthetic(real)

    def test_real_components_only_give_the_real_recipe(self) -> None:
        path = resolve_card_path("imagenet_cifar10_out_of_domain")
        card = CardSpec(name="m", kind="mixture", count=8, components=[
            {"card": "photo_crops", "weight": 1}, {"card": "digits_train", "weight": 1}])  # fmt: skip
        assert path.exists() and mixture_recipe(resolve_mixture(card, None)) == "real"


def test_bundled_mixture_card_needs_no_teacher_and_takes_the_synthetic_recipe() -> None:
    """Its build is what `kd-study data build` runs on tune_spaces/amount_and_mixture.yaml (README); building
    without a teacher is pinned above on generated components."""
    path = resolve_card_path("photo_dead_leaves")
    card = resolve_mixture(load_card(path), path.parent)
    assert not uses_teacher(card) and is_synthetic(card)
    assert [c.resolved.name for c in card.components] == ["photo_crops", "dead_leaves"]


def test_balanced_mixture_is_class_balanced_and_split_by_weight(digits_teacher: Path, tmp_path: Path) -> None:
    """Teacher-filtered over the union: every class gets `per_class`, each component its weighted share of it."""
    teacher = load_teacher(str(digits_teacher))
    leaves = {"name": "few_leaves", "kind": "generated", "generator": "dead_leaves", "count": 300, "seed": 4}
    (tmp_path / "few_leaves.yaml").write_text(yaml.safe_dump(leaves))
    card = CardSpec(
        name="bal_blend",
        kind="mixture",
        count=80,
        components=[{"card": "digits_train", "weight": 3}, {"card": "few_leaves.yaml", "weight": 1}],
        balance={"per_class": 8},
        images_per_sample=16,
    )
    card = resolve_mixture(card, tmp_path)
    result = build_surrogate(card, str(tmp_path), teacher=teacher)
    m = result.manifest
    assert m.teacher == teacher.meta.teacher_id and m.selection is not None
    blocks = list(iter_blocks(m.shard_uris(result.root)))
    preds = np.concatenate([meta["teacher_predictions"] for _, meta in blocks])
    which = np.concatenate([meta["components"] for _, meta in blocks])
    # quotas 6 (digits) + 2 (dead leaves) per class; dead leaves may not reach every class of a digits teacher
    per_class_digits = np.bincount(preds[which == 0], minlength=10)
    assert per_class_digits.tolist() == [6] * 10
    assert np.bincount(preds[which == 1], minlength=10).max() <= 2
    assert np.bincount(preds, minlength=10).tolist() == m.class_histogram == m.selection.achieved
