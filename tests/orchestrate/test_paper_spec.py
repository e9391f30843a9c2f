"""The bundled `tune_spaces/paper_cifar10.yaml` end to end at a tiny scale: the same 16 arms and the authors'
protocol (no search, fixed recipe, the paper's temperature rule, final seeds, the ablations), with every dataset it
reads fabricated in its own on-disk layout under `$KD_STUDY_DATA` (tests/fabricated_datasets.py), its cards copied
with their sizes cut (a 40-image teacher filter, 8 shader programs instead of 1,000), and the rest scaled down from
the command line (`--set`). Real local Ray (the session's), sqlite MLflow, shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from study.cli.app import app
from study.cli.options import load_spec
from study.data.sources.imagenet import imagenet_class_list
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.validation import study_paths
from study.resources import resolve_card_path, resolve_spec_path
from tests.fabricated_datasets import (
    write_aircraft,
    write_cifar10,
    write_cifar100,
    write_eurosat,
    write_food101,
    write_imagenet,
    write_pets,
    write_tiny_imagenet,
)

pytestmark = pytest.mark.slow

TINY = [
    "teacher.train=true", "teacher.arch=resnet8", "teacher.epochs=6", "teacher.batch_size=32",
    "student.arch=resnet8", "budget.images=64", "budget.report_every=64", "budget.eval_batch_size=256",
    "criteria.images=64", "criteria.trained_batches=1", "criteria.trained_source_batches=2", "final.seeds=2",
    "train.batch_size=32", "resources.cpu=1", "resources.gpu=0", "resources.max_concurrent=2",
]  # fmt: skip
BALANCE_CUT = {"total": 40, "candidates": 400}  # 4 per class for the 10-class teacher
SHADERS_CUT = {"programs": 8, "images_per_program": 50}


def fabricate_data(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dataset the spec reads: CIFAR-10 (the teacher's own, 100 train / 40 test), the real surrogates, and
    an ILSVRC-2012 train folder with one image for each of the 1,000 classes."""
    write_cifar10(root / "cifar10", monkeypatch, per_batch=20, test=40)
    write_cifar100(root / "cifar100", monkeypatch)
    write_tiny_imagenet(root / "tiny_imagenet", imagenet_class_list("tiny_imagenet_in_domain")[:4], 3, 2)
    write_aircraft(root / "fgvc_aircraft")
    write_pets(root / "oxford_pets")
    write_food101(root / "food101")
    write_eurosat(root / "eurosat")
    write_imagenet(root / "imagenet", imagenet_class_list("imagenet1k"), "train", per_class=1)


def cut_spec(folder: Path) -> Path:
    """The bundled spec with each card replaced by a copy beside it: real cards without their 50K count (the
    fabricated sets are smaller), generated ones filtering 40 images, shaders from 8 programs."""
    spec = yaml.safe_load(resolve_spec_path("paper_cifar10").read_text())
    for arm in spec["arms"]:
        card = yaml.safe_load(resolve_card_path(arm["card"]).read_text())
        card.pop("count", None)
        if card["kind"] == "generated":
            card["balance"] = {**card["balance"], **BALANCE_CUT}
            if card["generator"] == "composed_shaders":
                card["params"] = SHADERS_CUT
        (folder / f"{arm['card']}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
        arm["card"] = f"{arm['card']}.yaml"
    path = folder / "paper_cifar10.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_paper_spec_runs_its_sixteen_arms_with_the_authors_protocol(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fabricate_data(tmp_path / "data", monkeypatch)
    monkeypatch.setenv("KD_STUDY_DATA", str(tmp_path / "data"))
    (tmp_path / "spec").mkdir()
    spec_path = cut_spec(tmp_path / "spec")
    root = tmp_path / "run"
    sets = [arg for s in TINY for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["run", str(spec_path), "--root", str(root), *sets])
    assert result.exit_code == 0, result.output

    _, spec, _ = load_spec(str(spec_path), None, str(root), None, sets=TINY)
    arms = [a.name for a in spec.arms]
    assert len(arms) == 16
    trials = open_tracker(spec, study_paths(spec, str(root)), str(spec_path.parent)).trial_runs()
    per_arm: dict[str, list] = {a: [] for a in arms}
    for run in trials:
        per_arm[run.data.tags["kd_study.arm"]].append(run)
    # one search trial at the paper's fixed recipe, then it again with each final seed
    assert {a: len(r) for a, r in per_arm.items()} == {a: 3 for a in arms}
    assert all(r.data.tags["kd_study.outcome"] == "completed" for r in trials)

    recipe = {a: runs[0].data.params for a, runs in per_arm.items()}
    generated = {"shaders", "dead_leaves", "gaussian_noise", "shaders_onehot", "shaders_no_aug", "shaders_long_tail"}
    for arm, params in recipe.items():  # the paper's temperature rule: 20 on generated images, 2 on real ones
        assert float(params["recipe.temperature"]) == (20.0 if arm in generated else 2.0), arm
    assert [a for a, p in recipe.items() if p["recipe.perturbation"] != "none"] == ["fgvc_aircraft_attack"]
    assert [a for a, p in recipe.items() if p["recipe.labels"] != "soft"] == ["shaders_onehot"]
    no_aug = recipe["shaders_no_aug"]
    assert (no_aug["recipe.randaugment_ops"], no_aug["recipe.mixup"], no_aug["recipe.flip"]) == ("0", "False", "False")
    assert recipe["shaders"]["recipe.randaugment_ops"] == "4"  # the synthetic recipe where not ablated

    def manifest(name: str) -> dict:
        return json.loads((root / "shards" / name / "manifest.json").read_text())

    # ImageNet in-domain and out-of-domain: the 245 and 755 classes of the shipped lists, one image each here
    assert manifest("imagenet_cifar10_in_domain")["count"] == 245
    assert manifest("imagenet_cifar10_out_of_domain")["count"] == 755
    # long tail vs uniform: the same programs and seed, quotas decaying tenfold from class 0 to class 9
    assert manifest("shaders_paper_long_tail")["selection"]["quotas"] == [4, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert manifest("shaders_paper")["selection"]["quotas"] == [4] * 10

    report = (root / "report" / "paper_cifar10" / "report.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in report or f"| {arm} (" in report, arm
