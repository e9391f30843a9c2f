"""Amounts and mixtures through a real study: local Ray, sqlite MLflow, real shards, then the report section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from study.config import load_study
from study.orchestrate.pipeline import open_tracker, run_study
from study.orchestrate.validation import study_paths

pytestmark = pytest.mark.slow


def write_study(folder: Path, teacher: Path) -> Path:
    for name, generator in (("small_leaves", "dead_leaves"), ("small_noise", "uniform_noise")):
        card = {"name": name, "kind": "generated", "generator": generator, "count": 128, "images_per_sample": 64}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(card))
    blend = {
        "name": "small_blend",
        "kind": "mixture",
        "components": [{"card": "small_leaves.yaml", "weight": 1}, {"card": "small_noise.yaml", "weight": 1}],
        "count": 128,
        "images_per_sample": 64,
    }
    (folder / "small_blend.yaml").write_text(yaml.safe_dump(blend))
    spec = {
        "name": "amounts",
        "teacher": {"uri": str(teacher)},
        "arms": [
            {"name": "leaves", "card": "small_leaves.yaml", "counts": [32, 128]},
            {"name": "noise", "card": "small_noise.yaml"},
            {"name": "blend", "card": "small_blend.yaml"},
        ],
        "train": {"batch_size": 32, "randaugment_ops": 0, "mixup": False, "temperature": 4.0},
        "search": {"trials_per_arm": 1, "scheduler": {"kind": "none"}},
        "budget": {"images": 64, "report_every": 64, "eval_batch_size": 128},
        "resources": {"cpu": 1, "max_concurrent": 2},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_amounts_and_a_mixture_round_trip_through_mlflow_and_the_report(
    ray_session, digits_teacher: Path, tmp_path: Path
) -> None:
    path = write_study(tmp_path, digits_teacher)
    spec = load_study(path)
    outcome = run_study(spec, str(tmp_path / "run"), spec_path=str(path))
    assert outcome.failed == 0 and outcome.trial_outcomes.get("completed") == 4

    tracker = open_tracker(spec, study_paths(spec, str(tmp_path / "run")), str(tmp_path))
    params = {arm: tracker.run_data(run_id)[1] for arm, run_id in tracker.arm_runs().items()}
    assert params["leaves_n32"]["amount_of"] == "leaves" and params["leaves_n32"]["count"] == "32"
    assert params["blend"]["kind"] == "mixture"
    assert json.loads(params["blend"]["components.small_leaves"]) == 0.5

    report_dir = Path(outcome.paths.report_dir)
    text = (report_dir / "report.md").read_text()
    assert "## Amounts and mixtures" in text and (report_dir / "accuracy_vs_amount.png").stat().st_size > 10_000
    section = outcome.report.amounts
    assert section is not None
    assert section.points.set_index("arm").loc[["leaves_n32", "leaves_n128"], "count"].tolist() == [32, 128]
    row = section.mixtures.iloc[0]
    expected = 0.5 * section.points.set_index("arm").loc["leaves_n128", "test_acc"]
    expected += 0.5 * section.points.set_index("arm").loc["noise", "test_acc"]
    assert row["mixture"] == "blend" and row["blend predicts"] == pytest.approx(expected)
