"""End to end: `kd-study quickstart` runs the bundled spec unmodified (final phase included) through the real CLI,
Ray Tune, Optuna, MLflow and WebDataset shards; then the README's `report`, `status` and `rank` on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study.cli.app import app
from study.config import StudySpec
from study.data.shards import read_manifest
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.quickstart import quickstart_spec
from study.orchestrate.validation import study_paths
from study.resources import bundled_dir
from study.teacher.checkpoint import load_meta

pytestmark = pytest.mark.slow


def all_runs(spec: StudySpec, root: Path) -> list:
    paths = study_paths(spec, str(root))
    client = MlflowClient(paths.tracking_uri)
    exp = client.get_experiment_by_name(open_tracker(spec, paths).name)
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.timeout(1800)  # ~311 s alone on 2 quiet cores; a shared CI runner can take 3x that
def test_quickstart_command_runs_the_bundled_spec_and_a_rerun_adds_nothing(tmp_path: Path, ray_session) -> None:
    """The shipped `tune_spaces/quickstart.yaml`, as a user runs it (measured ~311 s on 2 quiet cores)."""
    spec = quickstart_spec()
    assert spec.final is not None and spec.final.seeds >= 2  # the path this test exists to cover
    arms = [a.name for a in spec.arms]
    per_arm = spec.search.trials_per_arm + spec.final.top_k * spec.final.seeds

    result = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report_dir = tmp_path / "report" / spec.name
    assert str(report_dir) in result.output.replace("\n", "")  # the printed report path is where it was written
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db" in result.output.replace("\n", "")

    # the teacher and every surrogate's shards, counts as the manifests say
    assert load_meta(str(tmp_path / "teacher")).test_accuracy >= 0.90
    short = set()  # arms whose teacher-filtered selection left a class short
    for arm in spec.arms:
        manifest = read_manifest(str(tmp_path / "shards" / arm.card))
        assert manifest.count == sum(s.count for s in manifest.shards) > 0
        if (sel := manifest.selection) is not None:
            assert manifest.class_histogram == (sel.quotas if sel.complete else sel.achieved)
            if not sel.complete:
                short.add(arm.name)
    # the digits teacher never predicts some classes for Gaussian noise or dead leaves (filtered, marked); the
    # balanced card, random strokes, fills every class (its rarest class ~1 in 55 candidates, the ceiling 200x)
    assert short == {a.name for a in spec.arms if a.card.endswith("_filtered")}, short
    assert any(a.card.endswith("_balanced") for a in spec.arms)

    # MLflow: a parent run per arm, each with its search and final-phase child runs, all finished
    runs = all_runs(spec, tmp_path)
    parents = [r for r in runs if r.data.tags.get("kd_study.role") == "arm"]
    children = [r for r in runs if r.data.tags.get("kd_study.role") == "trial"]
    assert sorted(r.data.tags["kd_study.arm"] for r in parents) == sorted(arms)
    assert len(children) == per_arm * len(arms)
    assert sum(c.data.tags["phase"] == "final" for c in children) == spec.final.seeds * len(arms)
    assert all(c.info.status == "FINISHED" for c in children)
    # the raw pool keeps the teacher's skew that balanced selection removes from the built set
    gaps = [
        p.data.metrics["criteria.built.class_entropy"] - p.data.metrics["criteria.raw.class_entropy"] for p in parents
    ]
    assert max(gaps) >= 0.15

    # the report: every file, every arm ranked on its final seeds
    for name in ("report.html", "report.md", "results.parquet", "ranking.json"):
        assert (report_dir / name).is_file(), name
    assert list(report_dir.glob("*.png"))
    ranking = {row["arm"]: row for row in json.loads((report_dir / "ranking.json").read_text())}
    assert sorted(ranking) == sorted(arms)
    assert all(str(row["basis"]).startswith("mean") for row in ranking.values())
    text = (report_dir / "report.md").read_text()
    assert all(f"| {arm} |" in text for arm in arms)
    ranking_md = text.split("## Ranking")[1].split("\n## ")[0]
    marked = {line.split(" | ")[1] for line in ranking_md.splitlines() if "| not balanced (" in line}
    assert marked == short, marked  # every arm left short, and only those, is marked not balanced
    results = pd.read_parquet(report_dir / "results.parquet")
    assert len(results) == per_arm * len(arms) and set(results["phase"]) == {"search", "final"}
    # the in-domain student beats the noise baseline by far (measured 96.1% against 13.1%)
    assert ranking["digits_train"]["test_acc"] >= ranking["gaussian_noise"]["test_acc"] + 0.40

    # the README's commands on the finished study: report, status, rank (candidates get teacher passes only)
    spec_file, root = str(bundled_dir("tune_spaces") / "quickstart.yaml"), ["--root", str(tmp_path)]
    report = CliRunner().invoke(app, ["report", spec_file, *root])
    assert report.exit_code == 0 and str(report_dir) in report.output.replace("\n", ""), report.output
    status = CliRunner().invoke(app, ["status", spec_file, *root])
    assert status.exit_code == 0 and "digits_train" in status.output and "final" in status.output, status.output
    candidates = ["--candidates", "uniform_noise", "--candidates", "shaders"]
    ranked = CliRunner().invoke(app, ["rank", spec_file, *root, *candidates])
    assert ranked.exit_code == 0 and "uniform_noise" in ranked.output and "shaders" in ranked.output, ranked.output

    # rerun with the same folder: reuses everything, runs no trial, adds no MLflow runs
    again = CliRunner().invoke(app, ["quickstart", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert len(all_runs(spec, tmp_path)) == len(runs)
