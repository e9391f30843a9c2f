"""`budget.mode: epochs` end to end: each arm trains its own number of images, its final phase still runs, and the
study counts as complete, so a rerun never re-enters Tune. Real local Ray (the session's), sqlite MLflow, shards.

Also when a study counts as complete (`sweep_complete`), read from a real store: per arm, the final phase the
searcher actually queues, which is none for an arm whose search trials all diverged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric, RunTag

from study.config import StudySpec, load_study
from study.orchestrate.pipeline import open_tracker, run_study, sweep_complete
from study.orchestrate.validation import study_paths
from study.tracking import OUTCOME, StudyTracker


def write_study(folder: Path, teacher: Path) -> Path:
    spec = {
        "name": "epochs",
        "teacher": {"uri": str(teacher)},
        "student": {"arch": "resnet8"},
        # an amount family: 32 and 64 images, so 2 epochs are 64 and 128 images, neither near budget.images
        "arms": [{"name": "digits", "card": "digits_train", "counts": [32, 64]}],
        "train": {"batch_size": 32, "randaugment_ops": 0, "mixup": False, "temperature": 4.0},
        "search": {
            "trials_per_arm": 2,
            "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
            "scheduler": {"kind": "asha", "grace_reports": 1, "reduction_factor": 2},
        },
        "budget": {"mode": "epochs", "epochs": 2, "report_every_epochs": 1, "eval_batch_size": 256},
        "final": {"top_k": 1, "seeds": 2},
        "resources": {"cpu": 1, "max_concurrent": 2},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_an_epochs_study_runs_its_final_phase_and_a_rerun_adds_nothing(
    ray_session, digits_teacher: Path, tmp_path: Path
) -> None:
    path = write_study(tmp_path, digits_teacher)
    spec = load_study(path)
    root = str(tmp_path / "run")
    first = run_study(spec, root, spec_path=str(path))
    assert first.sweep_ran and first.failed == 0

    tracker = open_tracker(spec, study_paths(spec, root), str(tmp_path))
    runs = tracker.trial_runs()
    for arm, images in (("digits_n32", 64), ("digits_n64", 128)):
        mine = [r for r in runs if r.data.tags["kd_study.arm"] == arm]
        final = [r for r in mine if r.data.tags["phase"] == "final"]
        assert len(mine) == 4 and len(final) == 2, f"{arm}: final phase missing"
        assert all(r.data.tags[OUTCOME] == "completed" for r in final)
        assert {max_step(tracker, r.info.run_id) for r in final} == {images}  # the arm's own budget
    assert sweep_complete(spec, tracker)

    again = run_study(spec, root, spec_path=str(path))
    assert not again.sweep_ran  # complete: Tune is not entered
    assert sorted(r.info.run_id for r in tracker.trial_runs()) == sorted(r.info.run_id for r in runs)
    assert again.trial_outcomes == first.trial_outcomes


def max_step(tracker: StudyTracker, run_id: str) -> int:
    """Images seen at a run's last report (the callback logs metrics at step = images seen)."""
    return max(step for step, _ in tracker.metric_history(run_id, "val_acc"))


# ------------------------------------------------------------------------------------------------ completion rule
def store_with(tmp_path: Path, arms: dict[str, list[tuple[str, str]]]) -> tuple[StudySpec, StudyTracker]:
    """A real sqlite store holding, per arm, trial runs with the given (phase, outcome)."""
    spec = StudySpec.model_validate(
        {
            "name": "done",
            "arms": [{"name": a, "card": "digits_train"} for a in arms],
            "search": {"trials_per_arm": 2},
            "final": {"top_k": 2, "seeds": 2},
        }
    )
    tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", spec)
    for arm, trials in arms.items():
        tracker.arm_run(arm, {"surrogate": arm})
        for i, (phase, outcome) in enumerate(trials):
            run_id = tracker.trial_run(f"{arm}_{i}", arm, phase, {"lr": 0.1})
            metrics = [] if outcome == "diverged" else [Metric("val_acc", 0.5, 0, 100)]
            tracker.client.log_batch(run_id, metrics=metrics, tags=[RunTag(OUTCOME, outcome)])
            tracker.client.set_terminated(run_id, "FINISHED")
    return spec, tracker


def test_a_study_is_complete_when_each_arm_ran_the_final_phase_its_search_allows(tmp_path: Path) -> None:
    searched = [("search", "completed"), ("search", "early_stopped")]  # one eligible config: 1 x 2 final seeds
    spec, tracker = store_with(
        tmp_path,
        {
            "good": [*searched, ("final", "completed"), ("final", "completed")],
            "bad": [("search", "diverged"), ("search", "failed")],  # nothing eligible: no final phase queued
        },
    )
    assert sweep_complete(spec, tracker)
    tracker.client.delete_run(tracker.find_trial_run("good_3").info.run_id)  # a final seed is still missing
    assert not sweep_complete(spec, tracker)
