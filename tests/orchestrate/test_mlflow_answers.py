"""The MLflow store of a finished study answers its question on its own: each arm's result on its parent run, the
arm's criteria on every trial run (so MLflow's charts plot a criterion against accuracy), each trial's resolved
recipe as params, and the full spec and the report as artifacts of a study-level run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.config import load_study
from study.orchestrate.pipeline import open_tracker, run_study
from study.tracking import ARM, ROLE, STUDY_RUN

pytestmark = pytest.mark.slow


def test_a_finished_study_writes_results_criteria_recipes_and_the_report_to_mlflow(tmp_path: Path, ray_session) -> None:
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "answers",
                # a teacher of its own, trained in seconds: what is checked here is the store, not the accuracy
                "teacher": {"train": True, "arch": "resnet8", "epochs": 2, "batch_size": 128, "image_size": 16},
                "student": {"arch": "resnet8"},
                "arms": [
                    {"name": "digits", "card": "digits_train"},
                    {"name": "noise", "card": "uniform_noise", "count": 512},
                ],
                "train": {"batch_size": 64, "randaugment_ops": 0, "mixup": False},
                "search": {"trials_per_arm": 1, "scheduler": {"kind": "none"}},
                "final": {"top_k": 1, "seeds": 2},
                "budget": {"images": 256, "report_every": 256, "eval_batch_size": 256},
                "criteria": {"images": 64},
                "resources": {"cpu": 1, "max_concurrent": 2},
                "storage": {"root": str(tmp_path / "root")},
            }
        )
    )
    spec = load_study(spec_file)
    outcome = run_study(spec, spec_path=str(spec_file))
    assert outcome.failed == 0
    client = MlflowClient(outcome.paths.tracking_uri)
    tracker = open_tracker(spec, outcome.paths, str(tmp_path))
    runs = client.search_runs([tracker.experiment_id], max_results=1000)
    arms = {r.data.tags[ARM]: r for r in runs if r.data.tags.get(ROLE) == "arm"}
    trials = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    assert sorted(arms) == ["digits", "noise"] and len(trials) == 6

    # each arm's result: the mean of its final seeds with an interval, its rank, outcome counts
    ranking = outcome.report.ranking.set_index("arm")
    for name, run in arms.items():
        m = run.data.metrics
        assert m["result.test_acc"] == pytest.approx(ranking.loc[name, "test_acc"])
        assert m["result.ci_low"] <= m["result.test_acc"] <= m["result.ci_high"]
        assert m["result.n"] == 2
        assert "final seed" in run.data.tags["kd_study.result_basis"]
    assert sorted(arms[a].data.metrics["result.rank"] for a in arms) == [1.0, 2.0]

    # the arm's criteria on each of its trial runs, and the trial's resolved recipe as params
    for run in trials:
        arm_metrics = arms[run.data.tags[ARM]].data.metrics
        criteria = {k: v for k, v in arm_metrics.items() if k.startswith("criteria.")}
        assert criteria and {k: run.data.metrics[k] for k in criteria} == criteria
        params = run.data.params
        assert params["recipe.temperature"] in ("2.0", "20.0")  # the paper's rule, resolved (not None)
        assert params["recipe.randaugment_ops"] == "0" and params["recipe.perturbation"] == "none"
        assert params["recipe.crop_scale_min"] == "0.35" and params["recipe.mixup"] == "False"
    noise_trial = next(r for r in trials if r.data.tags[ARM] == "noise")
    assert noise_trial.data.params["recipe.temperature"] == "20.0"  # generated images: T 20

    # the study run: the full spec and the report folder as artifacts
    study_runs = [r for r in runs if r.data.tags.get(ROLE) == STUDY_RUN]
    assert len(study_runs) == 1
    study_id = study_runs[0].info.run_id
    files = {a.path for a in client.list_artifacts(study_id)} | {
        a.path for a in client.list_artifacts(study_id, "report")
    }
    assert {"spec.json", "report/report.html", "report/report.md", "report/results.parquet"} <= files
    spec_copy = json.loads(Path(client.download_artifacts(study_id, "spec.json", str(tmp_path))).read_text())
    assert spec_copy == json.loads(spec.model_dump_json())
