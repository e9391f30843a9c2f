"""`kd-study quickstart`: the whole study at small scale on embedded defaults.

Local Ray, a local shard folder, MLflow in a sqlite file and the bundled digits data: a teacher is trained if
missing, then the bundled `tune_spaces/quickstart.yaml` study runs through `run_study`. Everything lands under one
folder, and a rerun with the same folder reuses it all.
"""

from __future__ import annotations

from pathlib import Path

from study import storage
from study.config import StudySpec, load_study
from study.orchestrate.pipeline import NoProgress, ProgressSink, StudyOutcome, run_study
from study.orchestrate.teacher_training import train_teacher
from study.orchestrate.validation import study_paths
from study.resources import bundled_dir
from study.teacher.checkpoint import META

DEFAULT_OUT = "kd-study-quickstart"


def quickstart_spec() -> StudySpec:
    return load_study(bundled_dir("tune_spaces") / "quickstart.yaml")


def quickstart(
    out: str | Path = DEFAULT_OUT, spec: StudySpec | None = None, progress: ProgressSink | None = None
) -> StudyOutcome:
    progress = progress or NoProgress()
    spec = spec or quickstart_spec()
    root = str(Path(out).expanduser().resolve())
    Path(root).mkdir(parents=True, exist_ok=True)
    paths = study_paths(spec, root)
    for tid in spec.teacher_ids:  # every teacher of the study, trained where missing
        teacher, uri = spec.for_teacher(tid).teacher, paths.for_teacher(tid).teacher
        assert teacher is not None
        if not storage.exists(storage.join(uri, META)):
            key = "teacher" if len(spec.teacher_ids) == 1 else f"teacher:{tid}"
            progress.task(key, f"teacher {teacher.arch} on {teacher.dataset}", teacher.epochs)
            train_teacher(teacher, uri, on_epoch=lambda e, n, _loss, k=key: progress.update(k, e, n))
    return run_study(spec, root, progress)
