"""Criteria on the raw candidate pool vs. the built set: a balanced build of a class-skewed generator."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from study.config import BalanceSpec, CardSpec, StudySpec
from study.criteria.populations import raw_pool
from study.data.balance import scan_order
from study.data.build import build_surrogate
from study.data.generators.registry import Generator, image_rng, register_generator, unregister_generator
from study.data.sources.registry import load_source
from study.orchestrate.pipeline import NoProgress, record_arms
from study.teacher.checkpoint import load_teacher
from study.tracking import StudyTracker

SKEW = 0.6  # class c is drawn with probability proportional to SKEW**c


class SkewedDigits(Generator):
    """Digits-train images whose class is drawn with geometrically decaying probability: a teacher sees a skewed
    pool, and balanced selection has to dig for the rare classes."""

    name: ClassVar[str] = "skewed_digits_test"
    version: ClassVar[str] = "1"

    def __init__(self, params: Generator.Params, reference_stats: object = None) -> None:
        super().__init__(params, reference_stats)
        self.data = load_source("digits", "train", 32)

    def generate(self, seed: int, start: int, count: int, image_size: int) -> np.ndarray:
        data = self.data
        by_class = [np.flatnonzero(data.labels == c) for c in range(10)]
        p = SKEW ** np.arange(10)
        p /= p.sum()
        out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
        for k in range(count):
            rng = image_rng(seed, start + k)
            members = by_class[rng.choice(10, p=p)]
            out[k] = np.repeat(data.images[members[rng.integers(len(members))]], 3, axis=-1)
        return out


@pytest.fixture
def skewed_generator():
    """Registered for this test only, so the contract tests of the shipped generators never see it."""
    register_generator(SkewedDigits)
    yield SkewedDigits
    unregister_generator(SkewedDigits.name)


def test_raw_pool_is_skewed_while_the_balanced_build_is_flat(
    digits_teacher: Path, tmp_path: Path, skewed_generator: type
) -> None:
    card = CardSpec(
        name="skewed",
        kind="generated",
        generator="skewed_digits_test",
        seed=5,
        images_per_sample=50,
        balance=BalanceSpec(per_class=10, candidates=6000),
    )
    build = build_surrogate(card, str(tmp_path / "shards"), teacher=str(digits_teacher))
    assert build.manifest.selection is not None and build.manifest.selection.complete
    spec = StudySpec.model_validate(
        {"name": "pop", "arms": [{"name": "skewed", "card": "skewed"}], "criteria": {"images": 512}}
    )
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", spec)
    teacher = load_teacher(str(digits_teacher))
    record_arms(spec, {"skewed": card}, {"skewed": build}, teacher, tracker, NoProgress())

    run_id = tracker.arm_runs()["skewed"]
    metrics, params = tracker.run_data(run_id)
    assert metrics["criteria.raw.class_entropy"] < 0.85  # the skew the paper's criterion should see
    assert metrics["criteria.built.class_entropy"] > 0.99  # flat by construction after balanced selection
    assert metrics["criteria.class_entropy"] == metrics["criteria.raw.class_entropy"]
    selection = build.manifest.selection
    assert metrics["criteria.raw.acceptance_rate"] == pytest.approx(selection.kept / selection.candidates_scanned)
    assert metrics["criteria.raw.frechet_val"] >= 0 and params["surrogate_point"] == "True"
    for name in ("confidence_t", "prediction_entropy", "margin_mean", "feature_effective_rank", "feature_vendi",
                 "feature_class_spread", "spectrum_slope", "edge_density"):  # fmt: skip
        assert np.isfinite(metrics[f"criteria.raw.{name}"]) and np.isfinite(metrics[f"criteria.built.{name}"])
    listed = {f.path for f in tracker.client.list_artifacts(run_id)}
    assert {"class_histogram.json", "samples.png", "manifest.json"} <= listed

    # the raw pool is the first candidates of the balanced scan's seeded order
    pool = raw_pool(card, 30, (teacher.meta.mean, teacher.meta.std), 10)
    everything = SkewedDigits(SkewedDigits.Params()).generate(5, 0, 6000, 32)
    assert np.array_equal(pool, everything[scan_order(card, 6000)[:30]])

    # measured once: a rerun logs nothing new
    record_arms(spec, {"skewed": card}, {"skewed": build}, teacher, tracker, NoProgress())
    assert len(tracker.client.get_metric_history(run_id, "criteria.raw.class_entropy")) == 1
