"""`kd-study trial` and `kd-study data perturb` as a user runs them, on a tiny digits surrogate and the session's
small teacher. (`kd-study quickstart`, `report`, `status` and `rank` run in tests/orchestrate/test_quickstart.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli.app import app
from study.data.shards import read_manifest

runner = CliRunner()

TINY_CARD = (
    "name: digits_tiny\nkind: real\nsource: {name: digits}\ncount: 32\nimages_per_sample: 8\nsamples_per_shard: 2\n"
)


@pytest.fixture
def study_root(tmp_path: Path, digits_teacher: Path) -> Path:
    """A study folder as `kd-study run` would leave it: the teacher, a tiny card beside the spec."""
    (tmp_path / "teacher").symlink_to(digits_teacher, target_is_directory=True)
    (tmp_path / "digits_tiny.yaml").write_text(TINY_CARD)
    return tmp_path


def test_trial_runs_one_trial_of_an_arm_without_tune(study_root: Path) -> None:
    spec = study_root / "study.yaml"
    spec.write_text(
        "name: cli-trial\nstudent: {arch: resnet8}\narms: [{name: tiny, card: digits_tiny.yaml}]\n"
        "train: {batch_size: 32}\nbudget: {images: 128, report_every: 64}\n"
    )
    built = runner.invoke(
        app, ["data", "build", str(study_root / "digits_tiny.yaml"), "--out", str(study_root / "shards")]
    )
    assert built.exit_code == 0, built.output

    result = runner.invoke(app, ["trial", str(spec), "--arm", "tiny", "--root", str(study_root)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps long lines at the console's width
    assert [float(v) for v in re.findall(r"images_seen=(\S+)", printed)] == [64.0, 128.0]
    val = [float(v) for v in re.findall(r"val_acc=(\S+)", printed)]
    assert len(val) == 2
    assert all(0.0 <= v <= 1.0 for v in val)

    unknown = runner.invoke(app, ["trial", str(spec), "--arm", "nope", "--root", str(study_root)])
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_data_perturb_builds_a_verified_derived_surrogate(study_root: Path) -> None:
    out = study_root / "adv"
    args = ["data", "perturb", str(study_root / "digits_tiny.yaml"), "--teacher", str(study_root / "teacher")]
    args += [
        "--out",
        str(out),
        "--epsilon",
        "0.25",
        "--max-iters",
        "20",
        "--deepen",
        "confident",
        "--deepen-iters",
        "3",
    ]
    args += ["--seed", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    derived = [p.parent for p in out.glob("*/manifest.json") if p.parent.name != "digits_tiny"]
    assert len(derived) == 1
    manifest = read_manifest(str(derived[0]))
    assert manifest.card["attack"]["epsilon"] == 0.25 and manifest.card["attack"]["max_iters"] == 20
    assert manifest.count == 4 * manifest.card["successes"] > 0  # four images per success
    printed = " ".join(result.output.split())  # rich wraps long lines at the console's width
    assert f"{manifest.card['successes']}/{manifest.card['attacked']} successes" in printed
    assert runner.invoke(app, ["data", "verify", str(derived[0])]).exit_code == 0

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reused" in " ".join(again.output.split())
    bad = runner.invoke(app, [*args[:7], "--epsilon", "3"])  # source, teacher, out; a ball wider than [0, 1]
    assert bad.exit_code == 2 and "--epsilon" in bad.output
