"""Adversarial boundary perturbation as an arm: the spec, the offline derived surrogate, the online trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from study import storage
from study.config import ArmSpec, CardSpec, PerturbationSpec, RealSource, SpecError, StudySpec, load_study
from study.data import shards
from study.data.build import build_surrogate
from study.data.perturb import CLEAN_KIND, build_perturbed, derived_name
from study.data.shards.reader import read_all
from study.distill.batches import targets_stored_label
from study.distill.trial import KDTrial, TrialPaths
from study.teacher.attack import AttackConfig, AttackResult
from study.teacher.checkpoint import load_meta

# resnet8 on 32 px digits is smooth like test_attack's MLP: a 64/255 ball lets most random targets be reached
ATTACK = PerturbationSpec(mode="offline", epsilon=64 / 255, max_iters=20)
CARD = CardSpec(
    name="digits_tiny",
    kind="real",
    source=RealSource(name="digits"),
    count=48,
    images_per_sample=8,
    samples_per_shard=2,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """48 digits in 6 blocks of 8, 3 shards."""
    return build_surrogate(CARD, str(tmp_path_factory.mktemp("src"))).root


@pytest.fixture(scope="module")
def derived(source_root: str, digits_teacher: Path, tmp_path_factory: pytest.TempPathFactory):
    return build_perturbed(source_root, str(digits_teacher), str(tmp_path_factory.mktemp("adv")), ATTACK, seed=3)


def _shard_hashes(root: str) -> list[str]:
    return [shards.sha256_of(storage.join(root, s.name)) for s in shards.read_manifest(root).shards]


class TestSpec:
    def test_defaults_are_the_attack_configs(self) -> None:
        assert AttackConfig(**PerturbationSpec().attack_fields()) == AttackConfig()
        assert PerturbationSpec().mode == "none"

    def test_unknown_perturbation_key_names_the_field(self, tmp_path: Path) -> None:
        spec = {
            "name": "s",
            "arms": [{"name": "a", "card": "digits_train", "perturbation": {"mode": "online", "epsilonn": 0.1}}],
        }
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=r"arms\.0\.perturbation\.epsilonn: unknown field"):
            load_study(path)

    def test_invalid_values_are_refused_naming_the_field(self) -> None:
        with pytest.raises(ValueError, match="mode"):
            ArmSpec(name="a", card="c", perturbation={"mode": "sometimes"})
        with pytest.raises(ValueError, match=r"'alpha'.*'epsilon'"):
            PerturbationSpec(epsilon=0.01, alpha=0.1)

    def test_attack_parameters_change_the_science_hash(self) -> None:
        base = StudySpec(name="s", arms=[ArmSpec(name="a", card="c", perturbation={"mode": "online"})])
        other = StudySpec(name="s", arms=[ArmSpec(name="a", card="c", perturbation={"mode": "online", "epsilon": 0.2})])
        assert base.science_hash() != other.science_hash()


class TestOffline:
    def test_four_images_per_success_and_manifest_records_rates_and_histograms(self, derived) -> None:
        card = derived.manifest.card
        assert derived.manifest.kind == "derived"
        assert card["attacked"] == CARD.count
        assert 0 < card["successes"] <= card["attacked"]
        assert derived.manifest.count == 4 * card["successes"]
        assert card["success_rate"] == pytest.approx(card["successes"] / card["attacked"])
        assert sum(card["histogram_before"]) == CARD.count
        assert sum(card["histogram_after"]) == derived.manifest.count == sum(derived.manifest.class_histogram)
        assert card["source"] == CARD.name and card["attack"]["epsilon"] == ATTACK.epsilon
        images, _ = read_all(derived.root, derived.manifest)
        assert images.shape[0] == derived.manifest.count and images.dtype == np.uint8

    def test_same_seed_gives_identical_shards(self, derived, source_root, digits_teacher, tmp_path) -> None:
        again = build_perturbed(source_root, str(digits_teacher), str(tmp_path), ATTACK, seed=3)
        assert Path(again.root).name == Path(derived.root).name
        assert _shard_hashes(again.root) == _shard_hashes(derived.root)

    def test_name_depends_on_attack_teacher_and_seed(self, digits_teacher) -> None:
        tid = load_meta(str(digits_teacher)).teacher_id
        name = derived_name("c", ATTACK, tid, 0)
        assert name.startswith("c__adv_")
        assert name != derived_name("c", ATTACK, tid, 1)
        assert name != derived_name("c", ATTACK.model_copy(update={"epsilon": 0.1}), tid, 0)
        assert name != derived_name("c", ATTACK, "other-teacher", 0)

    def test_killed_build_resumes_keeping_finished_shards(self, derived, source_root, digits_teacher, tmp_path):
        out = str(tmp_path)
        first = build_perturbed(source_root, str(digits_teacher), out, ATTACK, seed=3)
        root = Path(first.root)
        (root / shards.MANIFEST).unlink()
        (root / "shard-000001.tar").unlink()
        kept = {n: (root / n).stat().st_mtime_ns for n in ("shard-000000.tar", "shard-000002.tar")}
        resumed = build_perturbed(source_root, str(digits_teacher), out, ATTACK, seed=3)
        assert (resumed.shards_written, resumed.shards_kept) == (1, 2)
        assert {n: (root / n).stat().st_mtime_ns for n in kept} == kept
        assert _shard_hashes(resumed.root) == _shard_hashes(derived.root)
        assert resumed.manifest == derived.manifest.model_copy(update={"shards": resumed.manifest.shards})

    def test_existing_derived_surrogate_is_reused(self, derived, source_root, digits_teacher) -> None:
        again = build_perturbed(source_root, str(digits_teacher), str(Path(derived.root).parent), ATTACK, seed=3)
        assert again.reused and again.manifest == derived.manifest


def _trial(tmp_path: Path, teacher: Path, shards_root: str, perturbation: dict) -> KDTrial:
    (tmp_path / "digits_tiny.yaml").write_text(yaml.safe_dump(CARD.model_dump(mode="json")))
    spec = StudySpec(
        name="p",
        arms=[ArmSpec(name="a", card="digits_tiny.yaml", perturbation=perturbation)],
        student={"arch": "resnet8"},
        train={"batch_size": 16, "temperature": 4.0},
        budget={"images": 64, "report_every": 32},
    )
    return KDTrial(spec, spec.arms[0], TrialPaths(str(teacher), shards_root, str(tmp_path)))


class TestTrial:
    def test_equal_compute_trial_reports_attack_success_in_unit_interval(self, source_root, digits_teacher, tmp_path):
        online = {**ATTACK.model_dump(), "mode": "online", "online_batch": "equal_compute", "fraction": 0.5}
        trial = _trial(tmp_path, digits_teacher, str(Path(source_root).parent), online)
        assert trial.attacked_per_batch == 2
        reports: list[dict[str, float]] = []
        trial.run(lambda metrics, _: reports.append(metrics))
        assert len(reports) == 2
        assert all(0.0 <= r["attack_success"] <= 1.0 for r in reports)
        assert any(r["attack_success"] > 0 for r in reports)

    def test_before_augment_order_perturbs_the_uint8_batch_deterministically(
        self, source_root, digits_teacher, tmp_path
    ) -> None:
        online = {**ATTACK.model_dump(), "mode": "online", "online_order": "before_augment"}
        online["online_batch"] = "equal_compute"
        shards_root = str(Path(source_root).parent)
        first, second = (_trial(tmp_path, digits_teacher, shards_root, online) for _ in range(2))
        x = _uint8_batch(source_root, first)
        out = first.perturb(x)
        assert out.shape == x.shape and out.dtype == torch.uint8
        assert first.attack_counts[1] == 4 and not torch.equal(out[:4], x[:4])
        assert torch.equal(second.perturb(x), out)

    def test_default_order_attacks_the_mixed_batch_in_float_and_distils_on_the_attacked_images(
        self, source_root, digits_teacher, tmp_path
    ) -> None:
        """The authors' order: augmentation, mixup, attack (no uint8 rounding), KD on what the attack returned."""
        online = {**ATTACK.model_dump(), "mode": "online"}
        trial = _SpyTrial.make(tmp_path, digits_teacher, str(Path(source_root).parent), online)
        assert trial.arm.perturbation.online_order == "after_mixup" and trial.augment.config.mixup
        trial.run(lambda metrics, _: None)
        attacked_input, attacked_output = trial.perturbed[0]
        assert attacked_input.dtype == torch.float32  # normalised, augmented and mixed up: not the uint8 batch
        assert torch.equal(trial.losses[0], attacked_output)  # the student and teacher see the attacked batch
        assert attacked_output.shape[1:] == attacked_input.shape[1:]
        assert not torch.equal(attacked_output, attacked_input[: len(attacked_output)])
        # no quantisation: attacked pixels are not on the 1/255 grid
        mean, std = trial.teacher.meta.mean[0], trial.teacher.meta.std[0]
        levels = (attacked_output[:4] * std + mean) * 255
        assert (levels - levels.round()).abs().max() > 1e-3

    def test_a_batch_of_b_with_s_successes_trains_on_4s_images_and_lands_on_the_budget(
        self, source_root, digits_teacher, tmp_path
    ) -> None:
        """The authors' online batch: all B images attacked, the student trains on the 4 images of each success;
        images seen count those exactly (the last batch is cut at the budget) and every report point is reported."""
        online = {**ATTACK.model_dump(), "mode": "online"}
        trial = _SpyTrial.make(tmp_path, digits_teacher, str(Path(source_root).parent), online)
        assert trial.boundary_batches and trial.attacked_per_batch == trial.train.batch_size == 16
        reports: list[dict[str, float]] = []
        trial.run(lambda metrics, _: reports.append(metrics))
        sizes = [len(x) for x in trial.losses]
        successes = [int(r.success.sum()) for r in trial.attacks if r.success.any()]
        assert all(len(r.success) == 16 for r in trial.attacks)
        assert sizes[:-1] == [4 * s for s in successes[:-1]] and sizes[-1] <= 4 * successes[-1]
        assert sum(sizes) == trial.images_seen == trial.budget_images == 64
        assert len(reports) == 2 and reports[-1]["images_seen"] == 64.0

    def test_shader_targets_are_the_teachers_labels_of_the_clean_unmixed_images(
        self, source_root, digits_teacher, tmp_path
    ) -> None:
        shader = CardSpec(name="s", kind="generated", generator="shaders", count=8)
        assert targets_stored_label(shader) and not targets_stored_label(CARD)
        online = {**ATTACK.model_dump(), "mode": "online"}
        trial = _SpyTrial.make(tmp_path, digits_teacher, str(Path(source_root).parent), online)
        assert not trial.stored_label_targets  # digits are no shader: uniform other classes
        trial.stored_label_targets = True  # what a shader card sets; the digits shards stand in for its images
        trial.run(lambda metrics, _: None)
        meta = trial.teacher.meta
        clean = trial.clean[0]  # the first batch, before augmentation and mixup
        with torch.no_grad():
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (meta.mean, meta.std))
            pixels = (clean.float() / 255 - mean) / std
            expected = trial.teacher.model(pixels).argmax(1)
        assert torch.equal(trial.attacks[0].target, expected)

    def test_clean_fraction_is_for_offline_arms(self) -> None:
        with pytest.raises(ValueError, match="clean_fraction"):
            PerturbationSpec(mode="online", clean_fraction=0.5)

    def test_options_that_do_not_apply_are_refused_naming_the_field(self) -> None:
        with pytest.raises(ValueError, match="'fraction' applies to 'online_batch: equal_compute'"):
            PerturbationSpec(mode="online", fraction=0.5)
        with pytest.raises(ValueError, match="'deepen_iters' applies to 'deepen: confident'"):
            PerturbationSpec(mode="online", deepen_iters=3)

    def test_offline_arm_reads_the_derived_surrogate(self, derived, digits_teacher, tmp_path) -> None:
        # the trial names its derived surrogate with the study seed: the fixture built it with seed 3
        spec = StudySpec(name="p", seed=3, arms=[ArmSpec(name="a", card="digits_tiny.yaml", perturbation=ATTACK)])
        (tmp_path / "digits_tiny.yaml").write_text(yaml.safe_dump(CARD.model_dump(mode="json")))
        paths = TrialPaths(str(digits_teacher), str(Path(derived.root).parent), str(tmp_path))
        trial = KDTrial(spec, spec.arms[0], paths)
        assert trial.stream.manifest == derived.manifest
        assert trial.attack is None


@pytest.mark.slow
def test_ray_tasks_build_the_same_shards_as_in_process(derived, source_root, digits_teacher, ray_session, tmp_path):
    """With a Ray runtime up, blocks are attacked as Ray tasks; the per-block seeds make the bytes identical."""
    on_ray = build_perturbed(source_root, str(digits_teacher), str(tmp_path), ATTACK, seed=3)
    assert not on_ray.reused and on_ray.shards_written == len(derived.manifest.shards)
    assert _shard_hashes(on_ray.root) == _shard_hashes(derived.root)
    assert on_ray.manifest == derived.manifest


def _uint8_batch(source_root: str, trial: KDTrial) -> torch.Tensor:
    x = torch.from_numpy(read_all(source_root, shards.read_manifest(source_root), 16)[0]).permute(0, 3, 1, 2)
    return x.expand(-1, trial.teacher.meta.channels, -1, -1).contiguous()


class _SpyTrial(KDTrial):
    """A KDTrial that records what its attack received and returned and what the KD loss was computed on."""

    perturbed: list[tuple[torch.Tensor, torch.Tensor]]
    losses: list[torch.Tensor]
    attacks: list[AttackResult]
    clean: list[torch.Tensor]

    @classmethod
    def make(cls, tmp_path: Path, teacher: Path, shards_root: str, perturbation: dict) -> _SpyTrial:
        base = _trial(tmp_path, teacher, shards_root, perturbation)
        trial = cls(base.spec, base.arm, base.paths)
        trial.perturbed, trial.losses, trial.attacks, trial.clean = [], [], [], []
        return trial

    def stored_labels(self, clean: torch.Tensor) -> torch.Tensor:
        self.clean.append(clean.clone())
        return super().stored_labels(clean)

    def attack_batch(self, pixels01: torch.Tensor, targets: torch.Tensor | None) -> AttackResult:
        result = super().attack_batch(pixels01, targets)
        self.attacks.append(result)
        return result

    def perturb(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        out = super().perturb(x, targets)
        self.perturbed.append((x.clone(), out.clone()))
        return out

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        self.losses.append(x.clone())
        return super()._loss(x)


class TestCleanFraction:
    def test_offline_set_holds_the_clean_share_of_source_images(self, derived, source_root, digits_teacher, tmp_path):
        half = ATTACK.model_copy(update={"clean_fraction": 0.5})
        built = build_perturbed(source_root, str(digits_teacher), str(tmp_path), half, seed=3)
        assert (
            derived_name("digits_tiny", half, load_meta(str(digits_teacher)).teacher_id, 3) != Path(derived.root).name
        )
        stored, kinds = read_all(built.root, built.manifest, field="kind")
        kinds = np.asarray(kinds)
        clean = (kinds == CLEAN_KIND).sum()
        assert built.manifest.card["clean"] == clean == CARD.count // 2  # half of each source block of 8
        assert (kinds != CLEAN_KIND).sum() == derived.manifest.count  # the same perturbed images as without
        source = read_all(source_root, shards.read_manifest(source_root), CARD.count)[0]
        first_clean = stored[np.flatnonzero(kinds == CLEAN_KIND)[0]]
        assert np.array_equal(first_clean, source[0])  # a clean image is the source image, unperturbed
