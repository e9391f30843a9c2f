"""The KD trial loop outside Tune: resume equals an uninterrupted run, divergence stops loudly, bf16 runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from study.config import StudySpec, load_card
from study.data.build import build_surrogate
from study.distill.trial import KDTrial, TrialDivergedError, TrialPaths
from study.resources import resolve_card_path


@pytest.fixture(scope="module")
def shards_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    build_surrogate(load_card(resolve_card_path("digits_train")), root)
    return root


def tiny_spec(perturbation: dict | None = None, **train: Any) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "trial-test",
            "student": {"arch": "resnet8"},
            "arms": [{"name": "digits", "card": "digits_train", "perturbation": perturbation or {"mode": "none"}}],
            "train": {"batch_size": 32, **train},
            "budget": {"images": 192, "report_every": 64},
        }
    )


class Stop(Exception):
    pass


def test_resumed_trial_matches_an_uninterrupted_run(digits_teacher: Path, shards_root: str, tmp_path: Path) -> None:
    spec = tiny_spec()
    paths = TrialPaths(str(digits_teacher), shards_root)
    whole = KDTrial(spec, spec.arm("digits"), paths)
    whole_metrics: list[dict] = []
    whole.run(lambda m, _: whole_metrics.append(m))

    first = KDTrial(spec, spec.arm("digits"), paths)

    def stop_after_first(metrics: dict, ctx: dict) -> None:
        ctx["trial"].save(tmp_path)
        raise Stop

    with pytest.raises(Stop):
        first.run(stop_after_first)
    resumed = KDTrial(spec, spec.arm("digits"), paths)
    resumed.restore(tmp_path)
    resumed_metrics: list[dict] = []
    resumed.run(lambda m, _: resumed_metrics.append(m))

    assert len(whole_metrics) == 3 and len(resumed_metrics) == 2
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed_metrics[-1]["val_acc"] == whole_metrics[-1]["val_acc"]


def test_a_resumed_boundary_only_trial_matches_an_uninterrupted_run(
    digits_teacher: Path, shards_root: str, tmp_path: Path
) -> None:
    """An online batch of 4 x successes images: a batch whose attacks all fail is drawn but never a step, so the
    stream replays the batches drawn, and the cosine schedule resumes from the images seen."""
    spec = tiny_spec({"mode": "online", "epsilon": 64 / 255, "max_iters": 20})
    paths = TrialPaths(str(digits_teacher), shards_root)
    whole = KDTrial(spec, spec.arm("digits"), paths)
    whole.run(lambda m, _: None)

    def stop_after_first(metrics: dict, ctx: dict) -> None:
        ctx["trial"].save(tmp_path)
        raise Stop

    with pytest.raises(Stop):
        KDTrial(spec, spec.arm("digits"), paths).run(stop_after_first)
    resumed = KDTrial(spec, spec.arm("digits"), paths)
    resumed.restore(tmp_path)
    resumed.run(lambda m, _: None)

    assert whole.images_seen == resumed.images_seen == 192 and whole.batches == resumed.batches
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_diverging_loss_stops_the_trial_with_a_clear_error(digits_teacher: Path, shards_root: str) -> None:
    spec = tiny_spec(lr=1e12, momentum=0.0)
    trial = KDTrial(spec, spec.arm("digits"), TrialPaths(str(digits_teacher), shards_root))
    with pytest.raises(TrialDivergedError, match="arm 'digits': KD loss is"):
        trial.run(lambda m, _: None)


def test_bf16_autocast_path_trains_on_cpu(digits_teacher: Path, shards_root: str) -> None:
    spec = StudySpec.model_validate({**tiny_spec().model_dump(), "resources": {"precision": "bf16"}})
    trial = KDTrial(spec, spec.arm("digits"), TrialPaths(str(digits_teacher), shards_root))
    assert trial.amp_dtype == torch.bfloat16
    # the dtype of the student's first conv output in training steps: bf16 only when autocast is really on
    conv = next(m for m in trial.student.modules() if isinstance(m, torch.nn.Conv2d))
    train_dtypes: list[torch.dtype] = []
    conv.register_forward_hook(lambda mod, _i, out: train_dtypes.append(out.dtype) if mod.training else None)
    metrics = trial.run(lambda m, _: None)
    assert len(train_dtypes) == trial.total_steps and set(train_dtypes) == {torch.bfloat16}
    assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["train_loss"] == metrics["train_loss"]


def test_reports_come_at_fixed_intervals_of_images_seen(digits_teacher: Path, shards_root: str) -> None:
    spec = tiny_spec()
    seen: list[float] = []
    KDTrial(spec, spec.arm("digits"), TrialPaths(str(digits_teacher), shards_root)).run(
        lambda m, _: seen.append(m["images_seen"])
    )
    assert seen == [64.0, 128.0, 192.0]


def test_kd_targets_are_the_teachers_outputs_on_the_mixed_images(digits_teacher: Path, shards_root: str) -> None:
    from study.distill.loss import kd_loss

    spec = tiny_spec(mixup=True)
    trial = KDTrial(spec, spec.arm("digits"), TrialPaths(str(digits_teacher), shards_root))
    assert trial.temperature == 2.0  # the paper's T for a real surrogate when the spec leaves it unset
    batch = next(iter(trial.stream)).permute(0, 3, 1, 2).contiguous()
    mixed = trial.augment(batch, torch.Generator().manual_seed(0))
    plain = trial.augment.apply(batch, trial.augment.draw(len(batch), 32, 32, torch.Generator().manual_seed(0)))
    assert torch.equal(mixed, plain)  # same draws -> same mixed batch
    with torch.no_grad():
        expected = kd_loss(trial.student(mixed), trial.teacher.model(mixed), 2.0)
        unmixed = trial.augment.apply(batch, _without_mixup(trial, batch))
        other = kd_loss(trial.student(mixed), trial.teacher.model(unmixed), 2.0)
        assert torch.allclose(trial._loss(mixed), expected)
        assert not torch.allclose(trial._loss(mixed), other)


def _without_mixup(trial: KDTrial, batch: torch.Tensor):
    params = trial.augment.draw(len(batch), 32, 32, torch.Generator().manual_seed(0))
    params.lam = torch.empty(0)
    return params


def test_student_flips_follow_the_digits_teacher_and_the_temperature_rule_is_exposed(
    digits_teacher: Path, shards_root: str
) -> None:
    from study.distill.temperature import arm_recipe

    spec = tiny_spec()
    trial = KDTrial(spec, spec.arm("digits"), TrialPaths(str(digits_teacher), shards_root))
    assert trial.teacher.meta.flip is False and trial.augment.config.flip is False  # a mirrored digit is no digit
    assert arm_recipe(trial.train, trial.card, trial.teacher.meta, spec.teacher) == {
        "temperature": 2.0,
        "temperature_rule": "real",
        "flip": False,
    }
    flipped = tiny_spec(flip=True)
    assert KDTrial(flipped, flipped.arm("digits"), TrialPaths(str(digits_teacher), shards_root)).augment.config.flip
