"""The bundled `tune_spaces/multi_teacher.yaml` through the README's `run` and `rank`, at a tiny budget set from the
command line (the README's run takes ~14 minutes; `report` rebuilds what `run` publishes, and runs in the quickstart
test): both teachers trained by the study (digits and the generated shapes task), each teacher's own data as
`{dataset}_train`, the report's cross-teacher and leave-one-teacher-out sections, and `rank`, given the run's
`--set`, scoring a candidate through both teachers. Real local Ray (the
session's), sqlite MLflow, shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli.app import app
from study.cli.console import console

pytestmark = pytest.mark.slow

TINY = [
    "budget.images=64", "budget.report_every=64", "budget.eval_batch_size=256", "criteria.images=64",
    "final.seeds=1", "train.batch_size=32", "train.randaugment_ops=0", "train.mixup=false",
    "teachers.0.epochs=1", "teachers.1.epochs=1", "teachers.0.arch=resnet8",
    *(f"arms.{i}.count=128" for i in range(6)),
]  # fmt: skip


def test_the_bundled_multi_teacher_spec_runs_reports_and_ranks(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sets = [arg for s in TINY for arg in ("--set", s)]
    runner = CliRunner()
    result = runner.invoke(app, ["run", "multi_teacher", "--root", str(tmp_path), *sets])
    assert result.exit_code == 0, result.output
    for teacher, dataset in (("digits", "digits"), ("shapes", "shapes")):
        meta = json.loads((tmp_path / "teachers" / teacher / "meta.json").read_text())
        assert meta["dataset"] == dataset
    built = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert "digits_train" in built and "shapes_train" in built and "gaussian_noise@shapes" in built
    assert "shaders" in built and "shaders@digits" not in built  # shared: built once

    text = (tmp_path / "report" / "multi_teacher" / "report.md").read_text()
    across = text.split("## Across teachers")[1].split("\n## ")[0]
    assert "| own data |" in across and "Kendall's W" in across  # each teacher's own data is one surrogate
    assert "## Predicting before distilling (leave-one-surrogate-out, leave-one-teacher-out)" in text

    monkeypatch.setattr(console, "width", 160)
    result = runner.invoke(
        app, ["rank", "multi_teacher", "--root", str(tmp_path), "--candidates", "uniform_noise", *sets]
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "uniform_noise" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["digits", "shapes"]
    assert "Leave-one-teacher-out" in result.output
