"""MLflow layout on a real sqlite store: experiment per study, parent run per arm, child run per trial."""

from __future__ import annotations

from pathlib import Path

from study.config import StudySpec
from study.tracking import StudyTracker, experiment_name


def spec(**kw) -> StudySpec:
    return StudySpec.model_validate(
        {"name": "t", "arms": [{"name": "a", "card": "c"}, {"name": "b", "card": "c"}], **kw}
    )


def test_experiment_name_carries_the_science_hash() -> None:
    assert experiment_name(spec()) != experiment_name(spec(train={"lr": 0.01}))
    assert experiment_name(spec()) == experiment_name(spec(storage={"root": "/x"}))


def test_arm_and_trial_runs_are_reused_not_duplicated(tmp_path: Path) -> None:
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", spec())
    parent = tracker.arm_run("a", {"surrogate": "c", "card_params": {"x": 1}})
    assert tracker.arm_run("a", {"surrogate": "c"}) == parent
    child = tracker.trial_run("trial_1", "a", "search", {"lr": 0.1})
    tracker.client.set_terminated(child, "FAILED")
    # a resumed trial reopens its run
    assert tracker.trial_run("trial_1", "a", "search", {"lr": 0.1}) == child
    run = tracker.client.get_run(child)
    assert run.info.status == "RUNNING"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["phase"] == "search"
    assert len(tracker.trial_runs()) == 1 and set(tracker.arm_runs()) == {"a"}
    # a fresh tracker (another process) finds the same experiment
    again = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", spec())
    assert again.experiment_id == tracker.experiment_id and len(again.trial_runs()) == 1


def test_artifacts_of_a_sqlite_store_live_beside_the_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db_dir = tmp_path / "study"
    db_dir.mkdir()
    tracker = StudyTracker(f"sqlite:///{db_dir}/mlflow.db", spec())
    run_id = tracker.arm_run("a", {})
    tracker.log_arm_artifacts(run_id, {"x.json": b"{}"})
    assert not (tmp_path / "mlruns").exists()
    assert list((db_dir / "mlartifacts").rglob("x.json"))
