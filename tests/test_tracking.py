"""MLflow layout on a real sqlite store: experiment per study, parent run per arm, child run per trial."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from study import tracking
from study.config import StudySpec
from study.orchestrate.trial_runs import trial_error_text
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


def test_every_read_pages_through_all_runs(tmp_path: Path, monkeypatch) -> None:
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", spec())
    for arm in ("a", "b"):
        tracker.arm_run(arm, {})
    for i in range(7):
        tracker.trial_run(f"trial_{i}", "a", "search", {"lr": 0.1})
    monkeypatch.setattr(tracking, "PAGE_SIZE", 2)  # 7 trial runs: 4 pages
    page = tracker.client.search_runs([tracker.experiment_id], max_results=tracking.PAGE_SIZE)
    assert len(page) == 2 and page.token  # the store does cut a read at the page size
    assert sorted(r.data.tags["trial_id"] for r in tracker.trial_runs()) == [f"trial_{i}" for i in range(7)]
    assert set(tracker.arm_runs()) == {"a", "b"}
    assert len(tracking.search_all(tracker.client, [tracker.experiment_id])) == 9
    # a trial run found on the last page is reopened, not created a second time
    last = sorted(tracker.trial_runs(), key=lambda r: r.info.start_time)[-1].data.tags["trial_id"]
    tracker.trial_run(last, "a", "search", {"lr": 0.1})
    assert len(tracker.trial_runs()) == 7


def test_artifacts_of_a_sqlite_store_live_beside_the_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db_dir = tmp_path / "study"
    db_dir.mkdir()
    tracker = StudyTracker(f"sqlite:///{db_dir}/mlflow.db", spec())
    run_id = tracker.arm_run("a", {})
    tracker.log_arm_artifacts(run_id, {"x.json": b"{}"})
    assert not (tmp_path / "mlruns").exists()
    assert list((db_dir / "mlartifacts").rglob("x.json"))


class _ErrorRecorder(tune.Callback):
    """What a driver-side callback can read of a trial's error at the moment Tune reports it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.seen.append((trial_error_text(trial), trial.get_error()))


def test_a_trials_error_text_is_read_before_tune_syncs_it_to_storage(ray_session, tmp_path: Path) -> None:
    """Tune writes the error to its driver staging dir and copies it to storage only at its next sync. CI once
    recorded "no error text" for a failed trial that way; a long sync period makes that race certain here."""

    def raises_a_shard_error(config: dict) -> None:  # nested: Ray ships it by value (tests/ is not importable)
        raise OSError("shard-000002.tar: truncated tar header")

    recorder = _ErrorRecorder()
    tuner = tune.Tuner(
        raises_a_shard_error,
        run_config=tune.RunConfig(
            name="errors",
            storage_path=str(tmp_path / "store"),
            sync_config=tune.SyncConfig(sync_period=3600),
            callbacks=[recorder],
            verbose=0,
        ),
    )
    tuner.fit()
    [(text, from_storage)] = recorder.seen
    assert "shard-000002.tar: truncated tar header" in text
    assert from_storage is None  # the race is real: storage had not received the file yet
