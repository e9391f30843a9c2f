"""`kd-study rank` on a study of two teachers: a fixture study written into a real MLflow store under the study's
own experiment (known accuracies and criteria, no training), candidates measured through each real teacher."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric
from typer.testing import CliRunner

from study.cli.app import app
from study.cli.console import console
from study.config import load_study
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.validation import study_paths

# card -> (teacher a's accuracy, teacher b's accuracy, class entropy as teacher a sees it); b sees 2x + 0.5
SURROGATES = {
    "digits_train": (0.95, 0.60, 2.2),
    "photo_crops": (0.40, 0.30, 1.6),
    "shaders": (0.30, 0.20, 1.2),
    "dead_leaves": (0.25, 0.12, 0.9),
    "uniform_noise": (0.15, 0.11, 0.5),
    "gaussian_noise": (0.10, 0.10, 0.2),
}


def test_rank_scores_candidates_for_every_teacher_and_validates_leaving_a_teacher_out(
    digits_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tid in ("a", "b"):  # the same weights twice: the fixture's accuracies, not the teachers, differ
        shutil.copytree(digits_teacher, tmp_path / "teachers" / tid)
    spec_file = tmp_path / "two.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "two",
                "teachers": [{"id": "a", "arch": "resnet8"}, {"id": "b", "arch": "resnet8"}],
                "arms": [{"name": card, "card": card} for card in SURROGATES],
                "search": {"trials_per_arm": 1, "space": {}, "scheduler": {"kind": "none"}},
                "criteria": {"images": 64},
                "storage": {"root": str(tmp_path)},
            }
        )
    )
    spec = load_study(spec_file)
    tracker = open_tracker(spec, study_paths(spec, None), str(tmp_path))
    for arm in spec.arms:
        card, tid = arm.name.split("@")
        acc_a, acc_b, entropy = SURROGATES[card]
        kind = {"kind": "real", "source": "digits"} if card == "digits_train" else {"kind": "generated"}
        run = tracker.arm_run(arm.name, {"surrogate": card, "teacher_dataset": "digits", **kind})
        tracker.log_arm_metrics(run, {"criteria.raw.class_entropy": entropy if tid == "a" else 2 * entropy + 0.5})
        rid = tracker.trial_run(f"{arm.name}_0", arm.name, "search", {"lr": 0.1})
        acc = acc_a if tid == "a" else acc_b
        metrics = [Metric("val_acc", acc, 0, 1000), Metric("test_acc", acc, 0, 1000)]
        tracker.client.log_batch(rid, metrics=metrics)
        tracker.client.set_terminated(rid, "FINISHED")

    argv = ["rank", str(spec_file), "--candidates", "uniform_noise", "--candidates", "spectral_noise"]
    monkeypatch.setattr(console, "width", 160)  # the table's rows unwrapped, to read them back
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    # each candidate scored through each teacher and ranked within it (more classes predicted ranks higher here);
    # the shown accuracy is the relative prediction times that teacher's in-domain accuracy (a's: 95%)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.count("│") == 7]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("a", "1", "spectral_noise"),
        ("a", "2", "uniform_noise"),
        ("b", "1", "spectral_noise"),
        ("b", "2", "uniform_noise"),
    ]
    acc, relative = float(rows[0][3].rstrip("%")) / 100, float(rows[0][4])
    assert acc == pytest.approx(0.95 * relative, abs=0.006) and 0 < acc < 0.95
    assert all(r[3] == "0.0% *" for r in rows if float(r[4]) < 0)  # below the study's range: clipped and marked
    assert "over 6 surrogates x 2 teachers" in out and "Leave-one-teacher-out (fitted on the other teachers" in out
    assert "ρ a +1.00, b +1.00" in out
