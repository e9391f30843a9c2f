"""Teacher-filtered surrogates (balanced and long-tail), resumable and Ray-task builds, and the preview grid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from study.config import BalanceSpec, CardSpec, StudySpec
from study.data import shards
from study.data.balance import selection_uri, teacher_predictions
from study.data.build import build_surrogate
from study.data.preview import write_preview
from study.data.shards.reader import iter_blocks, read_all
from study.orchestrate.pipeline import NoProgress, record_arms
from study.report.study_report import write_report
from study.teacher.checkpoint import load_teacher
from study.tracking import StudyTracker

REPO = Path(__file__).resolve().parents[2]


def digits_card(balance: dict, **kw) -> CardSpec:
    fields = dict(name="digits_bal", kind="real", source={"name": "digits", "split": "train"}, images_per_sample=32)
    return CardSpec(**{**fields, "samples_per_shard": 2, **kw}, balance=balance)


def leaves_card(balance: dict | None = None, **kw) -> CardSpec:
    fields = dict(name="leaves", kind="generated", generator="dead_leaves", seed=3, images_per_sample=16)
    return CardSpec(**{**fields, **kw}, balance=balance)


@pytest.fixture(scope="module")
def teacher(digits_teacher: Path):
    return load_teacher(str(digits_teacher))


@pytest.fixture(scope="module")
def balanced(teacher, tmp_path_factory: pytest.TempPathFactory):
    return build_surrogate(digits_card({"per_class": 20}), str(tmp_path_factory.mktemp("bal")), teacher=teacher)


def sha256s(manifest: shards.Manifest) -> list[str]:
    return [s.sha256 for s in manifest.shards]


class TestSelection:
    def test_balanced_selection_keeps_equal_counts_per_teacher_class(self, balanced, teacher) -> None:
        m, sel = balanced.manifest, balanced.manifest.selection
        assert m.count == 200 and m.class_histogram == [20] * 10
        assert sel.complete and sel.achieved == [20] * 10 and sel.quotas == [20] * 10
        assert m.teacher == teacher.meta.teacher_id
        # the raw pool is every scanned candidate; scanning stops at the one that fills the last quota
        assert sum(sel.raw_histogram) == sel.candidates_scanned and sel.candidates_scanned < sel.candidates_budget
        assert all(r >= 20 for r in sel.raw_histogram)
        assert sel.acceptance_rate == pytest.approx(sel.candidates_scanned / 200) and sel.acceptance_rate >= 1.0
        shards.verify(balanced.root)

    def test_kept_images_are_class_interleaved_with_their_predictions_and_candidates(self, balanced, teacher) -> None:
        blocks = list(iter_blocks(balanced.manifest.shard_uris(balanced.root)))
        preds = [p for _, meta in blocks for p in meta["teacher_predictions"]]
        candidates = [c for _, meta in blocks for c in meta["candidates"]]
        assert preds[:30] == list(range(10)) * 3
        assert len(set(candidates)) == 200
        images, _ = read_all(balanced.root, balanced.manifest)
        assert teacher_predictions(teacher, images).tolist() == preds  # stored predictions belong to the images

    def test_a_small_candidate_budget_stops_early_and_the_manifest_says_so(self, teacher, tmp_path: Path) -> None:
        result = build_surrogate(digits_card({"per_class": 20, "candidates": 100}), str(tmp_path), teacher=teacher)
        sel = result.manifest.selection
        assert sel.candidates_budget == 100 and sel.candidates_scanned == 100 and not sel.complete
        assert sum(sel.raw_histogram) == 100
        assert sum(sel.achieved) == result.manifest.count < 200
        assert any(a < q for a, q in zip(sel.achieved, sel.quotas, strict=True))
        assert sel.acceptance_rate == pytest.approx(100 / sel.kept)

    def test_an_unfillable_quota_warns_naming_the_empty_classes_and_the_report_marks_the_arm(
        self, teacher, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # the teacher maps (almost) every Gaussian-noise image to one class: 9 of 10 quotas cannot fill in 512
        card = CardSpec(
            name="noise", kind="generated", generator="gaussian_noise", seed=1, images_per_sample=16,
            balance={"per_class": 5, "candidates": 512},
        )  # fmt: skip
        with caplog.at_level("WARNING", logger="study.data.balance"):
            build = build_surrogate(card, str(tmp_path / "shards"), teacher=teacher)
        sel, m = build.manifest.selection, build.manifest
        filled = sum(a == 5 for a in sel.achieved)
        empty = [c for c, a in enumerate(sel.achieved) if a == 0]
        assert not sel.complete and sel.candidates_scanned == 512 and 1 <= filled < 10 and empty
        assert sel.label() == f"not balanced ({filled} of 10 classes filled)"
        assert m.class_histogram == sel.achieved and m.count == sum(sel.achieved)  # the arm carries what it got
        warning = next(r.getMessage() for r in caplog.records if "candidate ceiling" in r.getMessage())
        assert f"card 'noise': not balanced ({filled} of 10 classes filled)" in warning
        assert f"class {', '.join(map(str, empty))} empty" in warning

        spec = StudySpec.model_validate(
            {"name": "short", "arms": [{"name": "noise", "card": "noise"}], "criteria": {"images": 64}}
        )
        tracker = StudyTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", spec)
        record_arms(spec, {"noise": card}, {"noise": build}, teacher, tracker, NoProgress())
        _, params = tracker.run_data(tracker.arm_runs()["noise"])
        assert params["selection"] == sel.label() and params["selection_achieved"] == str(sel.achieved)
        report = write_report(tracker, tmp_path / "report", teacher=teacher.meta)
        for text in (report.markdown.read_text(), report.html.read_text()):
            assert f"not balanced ({filled} of 10 classes filled)" in text

    def test_the_default_candidate_ceiling_scales_with_the_quotas(self) -> None:
        per_image = BalanceSpec.DEFAULT_CANDIDATES_PER_IMAGE
        assert BalanceSpec(per_class=205).candidate_ceiling(10) == per_image * 2050
        assert BalanceSpec(per_class=5).candidate_ceiling(3) == per_image * 15
        assert BalanceSpec(per_class=5, candidates=100).candidate_ceiling(3) == 100

    def test_long_tail_quotas_decay_geometrically(self) -> None:
        spec = BalanceSpec(per_class=100, mode="long_tail", imbalance=10)
        assert spec.quotas(10) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
        assert BalanceSpec(per_class=7).quotas(3) == [7, 7, 7]

    def test_long_tail_build_meets_its_quotas(self, teacher, tmp_path: Path) -> None:
        balance = {"per_class": 24, "mode": "long_tail", "imbalance": 4}
        result = build_surrogate(digits_card(balance), str(tmp_path), teacher=teacher)
        expected = BalanceSpec(**balance).quotas(10)
        assert expected[0] == 24 and expected[-1] == 6
        assert result.manifest.selection.achieved == expected == result.manifest.class_histogram

    def test_balance_without_a_teacher_is_refused_naming_the_card(self, tmp_path: Path) -> None:
        with pytest.raises(shards.ShardError, match=r"card 'digits_bal'.*--teacher"):
            build_surrogate(digits_card({"per_class": 5}), str(tmp_path))

    def test_a_total_is_split_evenly_over_any_teachers_classes(self) -> None:
        paper = BalanceSpec(total=50_000)  # the paper's 50K images, whatever the teacher
        assert paper.quotas(10) == [5000] * 10 and paper.quotas(100) == [500] * 100 and paper.quotas(37)[0] == 1351
        assert BalanceSpec(total=5).quotas(200) == [1] * 200  # never an empty quota
        assert BalanceSpec(total=1000, mode="long_tail", imbalance=10).quotas(10)[0] == 100  # the head's quota
        for both_or_neither in ({"per_class": 5, "total": 50}, {}):
            with pytest.raises(ValueError, match="exactly one of 'per_class'"):
                BalanceSpec(**both_or_neither)

    def test_total_build_meets_its_quotas(self, teacher, tmp_path: Path) -> None:
        result = build_surrogate(digits_card({"total": 40}), str(tmp_path), teacher=teacher)
        assert result.manifest.selection.achieved == [4] * 10 == result.manifest.class_histogram

    def test_imbalance_belongs_to_long_tail_only(self) -> None:
        with pytest.raises(ValueError, match="long_tail"):
            BalanceSpec(per_class=5, imbalance=3)


class TestDeterminismAndResume:
    def test_same_seed_and_teacher_give_identical_shards(self, teacher, tmp_path: Path) -> None:
        card = leaves_card({"per_class": 4, "candidates": 600})
        a = build_surrogate(card, str(tmp_path / "a"), teacher=teacher)
        b = build_surrogate(card, str(tmp_path / "b"), teacher=teacher)
        assert a.manifest.count > 0 and sha256s(a.manifest) == sha256s(b.manifest)
        assert a.manifest.selection == b.manifest.selection

    def test_rerun_reuses_the_selection_and_rewrites_only_the_missing_shard(self, balanced, teacher) -> None:
        root = Path(balanced.root)
        selection_mtime = Path(selection_uri(balanced.root)).stat().st_mtime_ns
        (root / shards.MANIFEST).unlink()
        (root / "shard-000001.tar").unlink()
        again = build_surrogate(digits_card({"per_class": 20}), str(root.parent), teacher=teacher)
        assert (
            again.selection_reused and again.shards_written == 1 and again.shards_kept == len(again.manifest.shards) - 1
        )
        assert Path(selection_uri(balanced.root)).stat().st_mtime_ns == selection_mtime
        assert again.manifest == balanced.manifest

    def test_a_different_teacher_cannot_reuse_a_finished_balanced_build(self, balanced, teacher) -> None:
        other = type(teacher)(teacher.model, teacher.meta.model_copy(update={"weights_sha256": "f" * 64}))
        with pytest.raises(shards.ShardError, match="teacher"):
            build_surrogate(digits_card({"per_class": 20}), str(Path(balanced.root).parent), teacher=other)

    def test_sigkilled_cli_build_resumes_without_rewriting_finished_shards(
        self, digits_teacher: Path, teacher, tmp_path: Path
    ) -> None:
        # one image per shard: the shard phase lasts long enough to be killed part-way
        fields = {"balance": {"per_class": 60, "candidates": 1500}, "images_per_sample": 1, "samples_per_shard": 1}
        card = leaves_card(**fields)
        card_path = tmp_path / "leaves.yaml"
        card_path.write_text(yaml.safe_dump(card.model_dump(mode="json")))
        out = tmp_path / "out"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-c", "from study.cli.app import app; app()", "data", "build", str(card_path),
               "--out", str(out), "--teacher", str(digits_teacher)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        root = out / "leaves"
        deadline = time.monotonic() + 60
        while len(list(root.glob("shard-*.tar"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        assert not (root / shards.MANIFEST).exists(), "the build finished before it could be killed"
        finished = {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*.tar")}
        assert len(finished) >= 3

        resumed = build_surrogate(card, str(out), teacher=teacher)
        assert resumed.selection_reused and resumed.shards_kept == len(finished)
        assert resumed.shards_written == len(resumed.manifest.shards) - len(finished) > 0
        assert {p.name: p.stat().st_mtime_ns for p in root.glob("shard-*.tar") if p.name in finished} == finished
        shards.verify(resumed.root)
        clean = build_surrogate(card, str(tmp_path / "clean"), teacher=teacher)
        assert sha256s(resumed.manifest) == sha256s(clean.manifest)


def test_ray_task_build_is_byte_identical_to_a_local_build(ray_session, teacher, tmp_path: Path) -> None:
    generated = leaves_card(count=96, samples_per_shard=2)  # 3 shards
    real = digits_card({"per_class": 6}, samples_per_shard=1)  # 2 shards, data shared through the object store
    for card in (generated, real):
        local = build_surrogate(card, str(tmp_path / "local"), teacher=teacher)
        remote = build_surrogate(card, str(tmp_path / "ray"), teacher=teacher, ray_address="auto")
        assert remote.shards_written == len(remote.manifest.shards) > 1
        assert sha256s(remote.manifest) == sha256s(local.manifest)
        shards.verify(remote.root)


def test_preview_writes_a_labelled_grid_of_the_first_images(balanced, tmp_path: Path) -> None:
    path = write_preview(balanced.root, tmp_path / "preview", count=64, scale=4)
    img = np.asarray(Image.open(path).convert("RGB"))
    # 8 x 8 tiles of 32 px upscaled 4x, with 2 px gaps
    assert img.shape == (8 * 130 + 2, 8 * 130 + 2, 3)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 16
    # the teacher-class label (yellow text) sits in the corner of a tile
    corner = img[2:18, 2:18].astype(int)
    assert ((corner[..., 0] > 150) & (corner[..., 1] > 150) & (corner[..., 2] < 60)).any()


def test_cli_preview_writes_one_png_per_surrogate(balanced, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from study.cli.app import app

    result = CliRunner().invoke(app, ["data", "preview", balanced.root, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "digits_bal.png").stat().st_size > 10_000
