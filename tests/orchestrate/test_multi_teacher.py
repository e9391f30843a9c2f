"""Several teachers in one study (`teachers:`): arms crossed with teachers, each pair with its own runs; builds that
depend on the teacher made per teacher, the rest shared; one identity over every teacher. Real local Ray (the
session's), sqlite MLflow, shards, two real digits teachers (the session's, and one the study trains itself)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from study.config import SpecError, StudySpec, load_study
from study.data.mixture import manifest_sha256
from study.orchestrate.pipeline import arm_teachers, open_tracker, run_study, study_content
from study.orchestrate.validation import load_cards, study_paths
from study.teacher.checkpoint import load_meta
from study.tracking import experiment_name

pytestmark = pytest.mark.slow


def write_study(folder: Path, teacher: Path) -> Path:
    (folder / "strokes_bal.yaml").write_text(  # teacher-filtered: one build per teacher
        "name: strokes_bal\nkind: generated\ngenerator: random_strokes\nimage_size: 32\nseed: 3\n"
        "balance: {per_class: 4, candidates: 2000}\n"
    )
    (folder / "blend.yaml").write_text(  # a mixture with one teacher-dependent component: built per teacher
        "name: blend\nkind: mixture\ncount: 32\nimage_size: 32\n"
        "components: [{card: strokes_bal.yaml, weight: 1}, {card: digits_train, weight: 1}]\n"
    )
    spec = {
        "name": "two_teachers",
        "teachers": [
            {"id": "a", "uri": str(teacher)},  # the session's digits teacher (resnet8, 32 px)
            {"id": "b", "arch": "resnet8", "image_size": 16, "epochs": 2, "batch_size": 64, "train": True},
        ],
        "student": {"arch": "resnet8"},
        "arms": [
            {"name": "digits", "card": "digits_train", "count": 256},  # the same images for both: built once
            {"name": "strokes", "card": "strokes_bal.yaml"},
            {"name": "noise", "card": "gaussian_noise", "count": 256},  # matched to each teacher's statistics
            {"name": "blend", "card": "blend.yaml"},  # strokes_bal per teacher, digits_train shared
        ],
        "train": {"batch_size": 32, "randaugment_ops": 0, "mixup": False, "temperature": 4.0},
        "search": {"trials_per_arm": 1, "space": {}, "scheduler": {"kind": "none"}},
        "budget": {"images": 64, "report_every": 64, "eval_batch_size": 256},
        "criteria": {"images": 64},
        "resources": {"cpu": 1, "max_concurrent": 2},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_arms_are_crossed_with_teachers_and_only_teacher_dependent_builds_are_made_per_teacher(
    ray_session, digits_teacher: Path, tmp_path: Path
) -> None:
    path = write_study(tmp_path, digits_teacher)
    spec = load_study(path)
    pairs = [f"{arm}@{t}" for arm in ("digits", "strokes", "noise", "blend") for t in ("a", "b")]
    assert [a.name for a in spec.arms] == pairs
    root = tmp_path / "run"
    outcome = run_study(spec, str(root), spec_path=str(path))
    assert outcome.sweep_ran and outcome.failed == 0 and set(outcome.teachers) == {"a", "b"}

    # one build of the shared card, one per teacher of each card that depends on the teacher
    built = sorted(p.name for p in (root / "shards").iterdir())
    assert built == [
        "blend@a", "blend@b", "digits_train", "gaussian_noise@a", "gaussian_noise@b", "strokes_bal@a", "strokes_bal@b"
    ], built  # fmt: skip
    for t in ("a", "b"):  # each filtered build holds its own teacher's selection
        manifest = json.loads((root / "shards" / f"strokes_bal@{t}" / "manifest.json").read_text())
        assert manifest["teacher"] == outcome.teachers[t].teacher_id
        # each teacher's mixture draws on that teacher's selection and on the one shared digits build
        blend = json.loads((root / "shards" / f"blend@{t}" / "manifest.json").read_text())
        parts = [(c["name"], c["manifest_sha256"]) for c in blend["components"]]
        assert parts == [
            (f"strokes_bal@{t}", manifest_sha256(str(root / "shards" / f"strokes_bal@{t}"))),
            ("digits_train", manifest_sha256(str(root / "shards" / "digits_train"))),
        ]
    assert outcome.teachers["a"].teacher_id != outcome.teachers["b"].teacher_id
    assert (root / "teachers" / "b" / "meta.json").is_file()  # trained by the study where it was missing

    # six parent runs and six trials, each tagged with its teacher and measured against that teacher
    paths = study_paths(spec, str(root))
    tracker = open_tracker(spec, paths, str(tmp_path))
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`kd_study.role` = 'arm'")
    assert sorted(r.data.tags["kd_study.arm"] for r in parents) == sorted(pairs)
    for run in parents:
        teacher = run.data.tags["kd_study.teacher"]
        assert run.data.tags["kd_study.arm"].endswith(f"@{teacher}")
        assert run.data.params["teacher"] == outcome.teachers[teacher].teacher_id
        assert "criteria.raw.class_entropy" in run.data.metrics
    trials = tracker.trial_runs()
    assert sorted(r.data.tags["kd_study.arm"] for r in trials) == sorted(pairs)
    assert all(r.data.tags["kd_study.arm"].endswith("@" + r.data.tags["kd_study.teacher"]) for r in trials)
    assert all(r.data.tags["kd_study.outcome"] == "completed" for r in trials)

    # the report ranks each teacher's surrogates side by side and pools the criteria across teachers, with the
    # teachers' own data (digits) as the in-domain reference of each
    text = (root / "report" / "two_teachers" / "report.md").read_text()
    across = text.split("## Across teachers")[1].split("\n## ")[0]
    assert "a: " in across and "b: " in across and "Kendall's W" in across and "No in-domain arm" not in across
    assert "strokes_bal@" not in across  # one surrogate, built per teacher

    # a rerun finds everything: no build, no trial, no run added
    shard_times = {p: p.stat().st_mtime for p in (root / "shards").rglob("*.tar")}
    again = run_study(spec, str(root), spec_path=str(path))
    assert not again.sweep_ran and len(tracker.trial_runs()) == len(trials)
    assert {p: p.stat().st_mtime for p in (root / "shards").rglob("*.tar")} == shard_times

    # the study's identity covers every teacher: either teacher's weights changing makes another experiment
    cards = load_cards(spec, str(tmp_path))
    metas = {t: load_meta(paths.for_teacher(t).teacher) for t in ("a", "b")}
    names = {experiment_name(spec, study_content(cards, metas, arm_teachers(spec)))}
    for t in ("a", "b"):
        changed = {**metas, t: metas[t].model_copy(update={"weights_sha256": "0" * 64})}
        names.add(experiment_name(spec, study_content(cards, changed, arm_teachers(spec))))
    assert len(names) == 3 and tracker.name in names


def test_teacher_lists_are_checked_when_the_spec_loads() -> None:
    base = {"name": "x", "arms": [{"name": "d", "card": "digits_train"}]}
    with pytest.raises(ValueError, match="ids must be unique"):
        StudySpec.model_validate({**base, "teachers": [{"id": "a"}, {"id": "a", "uri": "other"}]})
    with pytest.raises(ValueError, match="not both"):
        StudySpec.model_validate({**base, "teacher": {}, "teachers": [{"id": "a"}]})
    with pytest.raises(ValueError, match=r"arms.0.teachers: unknown teacher id 'c' \(did you mean"):
        arms = [{**base["arms"][0], "teachers": ["c"]}]
        StudySpec.model_validate({**base, "teachers": [{"id": "a"}, {"id": "cc"}], "arms": arms})
    one = StudySpec.model_validate({**base, "teachers": [{"id": "a"}, {"id": "b"}]})
    assert [a.name for a in one.arms] == ["d@a", "d@b"] and one.teachers[0].uri == "teachers/a"
    # a crossed spec, dumped and read again (as a trial reads it), is itself: arms are not crossed twice
    assert StudySpec.model_validate_json(one.model_dump_json()) == one
    per_teacher = StudySpec.model_validate(
        {**base, "teachers": [{"id": "c10", "dataset": "cifar10"}, {"id": "c100", "dataset": "cifar100"}],
         "arms": [{"name": "own", "card": "{dataset}"}, {"name": "id", "card": "imagenet_{dataset}_in_domain"}]}
    )  # fmt: skip
    assert [(a.name, a.card) for a in per_teacher.arms] == [
        ("own@c10", "cifar10"), ("own@c100", "cifar100"),
        ("id@c10", "imagenet_cifar10_in_domain"), ("id@c100", "imagenet_cifar100_in_domain"),
    ]  # fmt: skip
    view = one.for_teacher("b")
    assert view.teacher is not None and view.teacher.uri == "teachers/b" and [a.name for a in view.arms] == ["d@b"]
    with pytest.raises(SpecError, match="unknown teacher id 'z'"):
        one.for_teacher("z")
    # a one-teacher study is unchanged: same arm names, same identity as before `teachers:` existed
    single = StudySpec.model_validate(base)
    assert [a.name for a in single.arms] == ["d"] and single.for_teacher("teacher") is single
    assert single.science_hash() == "ad2310423f3f"  # measured before `teachers:` existed: studies keep their names
