"""The `trained` criteria population (study/criteria/trained.py): the teacher's view of the batches the student
trains on, drawn by the trial's own pipeline (`TrainingBatches.make_batch`), locally and in the presweep's Ray task."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from study.config import CardSpec, RealSource, StudySpec
from study.criteria.populations import measure_arm
from study.criteria.trained import arm_batches, measure_trained
from study.data.build import build_surrogate
from study.distill.batches import TrainingBatches
from study.orchestrate.pipeline import NoProgress, record_arms
from study.teacher.attack import AttackResult
from study.teacher.checkpoint import load_teacher
from study.tracking import StudyTracker

CARD = CardSpec(name="digits_tiny", kind="real", source=RealSource(name="digits"), count=48, images_per_sample=8,
                samples_per_shard=2)  # fmt: skip
# resnet8 on 32 px digits: a 64/255 ball lets most random targets be reached (tests/data/test_perturb.py)
ONLINE = {"mode": "online", "epsilon": 64 / 255, "max_iters": 20}
NEVER = {"mode": "online", "epsilon": 1e-6, "alpha": 1e-6, "max_iters": 1}  # no crossing fits in this ball


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):
    return build_surrogate(CARD, str(tmp_path_factory.mktemp("shards")))


def study(perturbation: dict, **criteria: int) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "trained",
            "arms": [{"name": "a", "card": "digits_tiny", "perturbation": perturbation}],
            "train": {"batch_size": 16},
            "criteria": {"images": 64, "trained_batches": 3, **criteria},
        }
    )


class _Spy(TrainingBatches):
    """Records each attack's result, so a batch's size can be checked against its successes."""

    results: list[AttackResult]

    def attack_batch(self, pixels01: torch.Tensor, targets: torch.Tensor | None) -> AttackResult:
        result = super().attack_batch(pixels01, targets)
        self.results.append(result)
        return result


def test_trained_criteria_are_the_teachers_statistics_on_the_seeded_training_batches(build, digits_teacher) -> None:
    """On an online arm the trained batches (augmented, mixed up, attacked: 4 images per success) differ from the
    built set, and their criteria are the teacher's outputs on exactly the batches `make_batch` makes."""
    spec = study(ONLINE)
    arm, teacher = spec.arms[0], load_teacher(str(digits_teacher))
    found = measure_arm(spec, arm, CARD, build, teacher, None)
    assert found.trained is not None
    trained, built = found.trained.values, found.built.values
    # the built set of an online arm is its attacked clean images; the trained batches are augmented and mixed up
    # before the attack, so the teacher sees other images (and other image statistics)
    moved = [k for k in built if not math.isclose(trained[k], built[k], rel_tol=0.01, abs_tol=1e-3)]
    assert len(moved) >= len(built) // 2, (trained, built)
    assert found.trained.predicted_histogram != found.built.predicted_histogram

    # the same batches, made again by the trial's pipeline with the study's seed, through the teacher directly
    again = arm_batches(spec, arm, CARD, build, teacher)
    source, made = again.source_batches(), []
    while len(made) < spec.criteria.trained_batches:
        x = again.make_batch(next(source))
        if len(x):
            made.append(x)
    with torch.no_grad():
        probs = teacher.model(torch.cat(made)).softmax(1)
    histogram = torch.bincount(probs.argmax(1), minlength=10).tolist()
    assert found.trained.predicted_histogram == histogram
    assert trained["confidence"] == pytest.approx(probs.max(1).values.mean().item(), abs=1e-6)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(10)
    assert trained["prediction_entropy"] == pytest.approx(entropy.mean().item(), abs=1e-6)
    logged = found.logged_metrics()
    assert logged["criteria.trained.confidence"] == trained["confidence"]
    assert found.tags["kd_study.criteria.trained.images"] == str(sum(len(x) for x in made))


def test_a_boundary_only_batch_with_s_successes_holds_4s_images(build, digits_teacher) -> None:
    spec = study(ONLINE)
    arm, teacher = spec.arms[0], load_teacher(str(digits_teacher))
    spy = _Spy(spec, arm, spec.train_for(arm), CARD, teacher, build.root, build.manifest, 0, torch.device("cpu"))
    spy.results = []
    source = spy.source_batches()
    sizes = [len(spy.make_batch(next(source))) for _ in range(3)]
    successes = [int(r.success.sum()) for r in spy.results]
    assert all(len(r.success) == 16 for r in spy.results)  # every image of the batch of B is attacked
    assert sizes == [4 * s for s in successes] and sum(successes) > 0


def test_an_attack_that_never_succeeds_stops_at_the_source_batch_cap(build, digits_teacher, caplog) -> None:
    spec = study(NEVER, trained_source_batches=4)
    arm, teacher = spec.arms[0], load_teacher(str(digits_teacher))
    with caplog.at_level(logging.WARNING, logger="study.criteria.trained"):
        sample = measure_trained(arm_batches(spec, arm, CARD, build, teacher), 3, 4)
    assert sample.criteria is None and (sample.batches, sample.images, sample.source_batches) == (0, 0, 4)
    assert "stopped at criteria.trained_source_batches = 4" in caplog.text
    found = measure_arm(spec, arm, CARD, build, teacher, None)
    assert found.trained is None and not any(k.startswith("criteria.trained.") for k in found.logged_metrics())
    assert found.tags["kd_study.criteria.trained.source_batches"] == "4"
    assert "0 of 3 batches" in found.tags["kd_study.criteria.trained.sample"]
    with pytest.raises(ValueError, match="trained_source_batches"):
        study(ONLINE, trained_source_batches=2)  # fewer source batches than the sample needs


def test_a_shard_the_stream_cannot_read_drops_the_sample_loudly_instead_of_ending_the_study(
    build, digits_teacher, tmp_path, caplog
) -> None:
    """The arm's trials fail on the bad shard and name it (tests/orchestrate/test_study_reliability.py); the
    criteria pass runs first, in the driver, and must not end the study before they do."""
    import shutil

    from study.data import shards

    broken = tmp_path / "digits_tiny"
    shutil.copytree(build.root, broken)
    for info in build.manifest.shards:  # every shard zeroed, same size: the first batch already fails to read
        (broken / info.name).write_bytes(bytes((broken / info.name).stat().st_size))
    damaged = type(build)(str(broken), shards.read_manifest(str(broken)), 0, len(build.manifest.shards), reused=True)
    spec = study({"mode": "none"})
    arm, teacher = spec.arms[0], load_teacher(str(digits_teacher))
    with caplog.at_level(logging.WARNING, logger="study.criteria.trained"):
        sample = measure_trained(arm_batches(spec, arm, CARD, damaged, teacher), 3, 8)
    assert sample.criteria is None and sample.error is not None and "shard-00000" in sample.error
    assert sample.params()["kd_study.criteria.trained.sample"].startswith("not measured: ")
    assert "trained criteria not measured" in caplog.text and "truncated or corrupt" in caplog.text


@pytest.mark.slow
def test_the_presweep_ray_task_logs_the_same_trained_criteria_as_the_local_pass(
    build, digits_teacher, ray_session, tmp_path: Path
) -> None:
    """The cluster path (`presweep.measure_on_cluster`) measures the trained population inside its criteria task."""
    spec = study(ONLINE)
    teacher = load_teacher(str(digits_teacher))
    logged = {}
    for where, uri in (("local", None), ("cluster", str(digits_teacher))):
        tracker = StudyTracker(f"sqlite:///{tmp_path / where}.db", spec)
        record_arms(spec, {"a": CARD}, {"digits_tiny": build}, teacher, tracker, NoProgress(), teacher_uri=uri)
        run_id = tracker.arm_runs()["a"]
        metrics, _ = tracker.run_data(run_id)
        tags = tracker.client.get_run(run_id).data.tags
        logged[where] = {k: v for k, v in metrics.items() if k.startswith("criteria.trained.")}
        assert tags["kd_study.criteria.trained.batches"] == "3"
    assert "kd_study.node.criteria" in tags  # measured in a Ray task
    assert logged["cluster"].keys() == logged["local"].keys() and "criteria.trained.confidence" in logged["local"]
    assert np.allclose([logged["cluster"][k] for k in logged["local"]], list(logged["local"].values()), rtol=1e-4)
