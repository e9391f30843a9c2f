"""A study on your own teacher: `kd-study run` trains or imports a missing teacher; a search needs no labels."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study.cli.app import app
from study.config import SpecError, StudySpec
from study.orchestrate.pipeline import NoProgress, ensure_teacher
from study.orchestrate.validation import study_paths
from study.teacher.checkpoint import load_meta

runner = CliRunner()


class Recorder(NoProgress):
    def __init__(self) -> None:
        self.updates: list[tuple[str, int]] = []

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        self.updates.append((key, completed))


def spec_for(tmp_path: Path, teacher: dict, search: dict | None = None) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "own",
            "teacher": teacher,
            "student": {"arch": "resnet8"},
            "arms": [{"name": "digits_train", "card": "digits_train"}],
            "search": search or {},
            "storage": {"root": str(tmp_path)},
        }
    )


def test_run_trains_a_missing_teacher_only_when_the_spec_says_so(tmp_path: Path) -> None:
    teacher = {"arch": "resnet8", "epochs": 1, "batch_size": 128}
    with pytest.raises(SpecError, match=r"(?s)teacher metadata not found.*set teacher\.train: true"):
        ensure_teacher(spec_for(tmp_path, teacher), study_paths(spec_for(tmp_path, teacher)), NoProgress())

    spec = spec_for(tmp_path, {**teacher, "train": True})
    progress = Recorder()
    meta = ensure_teacher(spec, study_paths(spec), progress)
    assert (meta.arch, meta.dataset, meta.epochs) == ("resnet8", "digits", 1) and meta.test_accuracy is not None
    assert [u for u in progress.updates if u[0] == "teacher"] == [("teacher", 1)]  # the progress bar
    weights = tmp_path / "teacher" / "weights.pt"
    mtime = weights.stat().st_mtime_ns
    ensure_teacher(spec, study_paths(spec), Recorder())
    assert weights.stat().st_mtime_ns == mtime  # an existing teacher is never retrained

    other = spec_for(tmp_path, {**teacher, "arch": "resnet20"})
    with pytest.raises(
        SpecError, match=r"teacher's arch is 'resnet8' \(meta\.json\), the spec's teacher\.arch is 'resnet20'"
    ):
        ensure_teacher(other, study_paths(other), NoProgress())
    just_the_uri = spec_for(tmp_path, {"uri": "teacher"})  # arch and dataset left to the teacher's meta.json
    assert ensure_teacher(just_the_uri, study_paths(just_the_uri), NoProgress()).arch == "resnet8"


def test_teacher_trains_on_an_unsplit_folder_and_is_scored_on_its_held_out_part(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from study.data.eval_splits import eval_split

    for c, label in enumerate(("red", "green", "blue")):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(10):
            pixel = np.zeros((16, 16, 3), np.uint8)
            pixel[..., c] = 120 + 10 * i
            Image.fromarray(pixel).save(tmp_path / "photos" / label / f"{i}.png")
    args = ["teacher", "train", "--dataset", "folder", "--dataset-root", str(tmp_path / "photos"), "--arch", "resnet8"]
    result = runner.invoke(app, [*args, "--epochs", "1", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    meta = load_meta(str(tmp_path / "t"))
    assert meta.dataset == "folder" and meta.dataset_root == str(tmp_path / "photos")
    assert meta.classes == ["blue", "green", "red"]
    images, labels = eval_split(meta, "test")
    assert images.shape == (3, 3, 32, 32) and sorted(labels.tolist()) == [0, 1, 2]  # one of 10 per class is test


@pytest.mark.slow
def test_agreement_study_on_an_imported_teacher_without_labelled_data(
    digits_teacher: Path, tmp_path: Path, ray_session
) -> None:
    trained = load_meta(str(digits_teacher))
    spec = {
        "name": "no-labels",
        "teacher": {
            "uri": "teacher",
            "arch": trained.arch,
            "dataset": "none",
            "weights": str(digits_teacher / "weights.pt"),
            "mean": trained.mean,
            "std": trained.std,
        },
        "student": {"arch": "resnet8"},
        "arms": [
            {"name": "digits_train", "card": "digits_train"},
            {"name": "gaussian_noise", "card": "gaussian_noise", "count": 1024},
        ],
        "train": {"batch_size": 32, "randaugment_ops": 0, "crop_scale_min": 0.8, "mixup": False, "temperature": 4.0},
        "search": {
            "trials_per_arm": 2,
            "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
            "scheduler": {"kind": "none"},
            "agreement_images": 256,
        },
        "budget": {"images": 1024, "report_every": 512},
        "resources": {"cpu": 1, "max_concurrent": 2},
        "storage": {"root": str(tmp_path)},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    refused = runner.invoke(app, ["run", str(path)])  # the default val_acc search needs eval data: stops up front
    assert refused.exit_code == 2 and "search.metric: agreement" in refused.output.replace("\n", " ")
    assert not (tmp_path / "shards").exists()

    spec["search"]["metric"] = "agreement"
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    meta = load_meta(str(tmp_path / "teacher"))
    assert meta.has_eval_data is False and meta.dataset == "none" and meta.imported_from.endswith("weights.pt")

    text = (tmp_path / "report" / "no-labels" / "report.md").read_text()
    assert "Ranked by **held-out agreement** (`agreement`)" in text and "no labelled test split" in text
    results = pd.read_parquet(tmp_path / "report" / "no-labels" / "results.parquet")
    assert len(results) == 4 and results["agreement"].between(0, 1).all() and results["test_acc"].isna().all()
    ranking = json.loads((tmp_path / "report" / "no-labels" / "ranking.json").read_text())
    assert sorted(r["arm"] for r in ranking) == ["digits_train", "gaussian_noise"]
    assert {"agreement", "best_agreement"} <= set(ranking[0]) and "test_acc" not in ranking[0]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    trials = [r for r in runs if r.data.tags.get("kd_study.role") == "trial"]
    assert len(trials) == 4 and all("agreement" in r.data.metrics and "val_acc" not in r.data.metrics for r in trials)
