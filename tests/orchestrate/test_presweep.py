"""Pre-sweep work (study/orchestrate/presweep.py): local studies keep today's path and manifests, `built_on` never
makes a surrogate stale, and a failing pre-sweep task names its surrogate and node. The cluster path itself runs in
tests/orchestrate/test_cluster_e2e.py (builds side by side on a worker node, criteria measured there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from study import storage
from study.config import CardSpec, StudySpec, load_card
from study.data import shards
from study.data.build import build_surrogate, reusable_build
from study.data.mixture import manifest_sha256, resolve_mixture
from study.distill.trial import surrogate_name
from study.orchestrate.presweep import (
    PresweepError,
    build_on_cluster,
    built_by,
    cluster_address,
    node_tags,
    offline_surrogates,
)
from study.orchestrate.progress import NoProgress
from study.teacher.checkpoint import TeacherMeta, load_meta

META = TeacherMeta(arch="resnet8", num_classes=10, classes=list("0123456789"), image_size=8, channels=3,
                   mean=[0.5] * 3, std=[0.25] * 3, dataset="none", weights_sha256="0" * 64)  # fmt: skip
NOISE = CardSpec(name="noise", kind="generated", generator="uniform_noise", count=64, seed=1, image_size=8)


def spec(**resources) -> StudySpec:
    return StudySpec.model_validate(
        {"name": "p", "arms": [{"name": "a", "card": "digits_train"}], "resources": resources}
    )


class TestLocalStudy:
    def test_without_a_ray_address_the_presweep_work_stays_in_this_process(self, monkeypatch) -> None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        assert cluster_address(spec()) is None
        assert cluster_address(spec(ray_address="ray://head:10001")) == "ray://head:10001"
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a Ray job's driver
        assert cluster_address(spec()) == "10.0.0.1:6379"

    def test_a_local_build_writes_the_manifest_it_wrote_before_built_on_existed(self, tmp_path: Path) -> None:
        built = build_surrogate(NOISE, str(tmp_path))
        text = storage.read_text(storage.join(built.root, shards.MANIFEST))
        assert "built_on" not in text and built.manifest.built_on is None
        assert node_tags(built_by(built.manifest), None) == {}  # no node tags for a local build

    def test_a_manifest_without_built_on_loads(self, tmp_path: Path) -> None:
        built = build_surrogate(NOISE, str(tmp_path))
        record = json.loads(storage.read_text(storage.join(built.root, shards.MANIFEST)))
        record.pop("built_on", None)
        assert shards.Manifest.model_validate(record).built_on is None


class TestBuiltOn:
    def test_where_a_surrogate_was_built_never_makes_it_stale(self, tmp_path: Path) -> None:
        built = build_surrogate(NOISE, str(tmp_path))
        sha = manifest_sha256(built.root)
        where = shards.WorkRecord(nodes=["n1"], hosts=["h1"], started=1.0, ended=2.0)
        shards.write_manifest(built.root, built.manifest.model_copy(update={"built_on": {"build": where}}))
        assert shards.read_manifest(built.root).built_on == {"build": where}
        assert manifest_sha256(built.root) == sha  # a mixture of it stays reusable too
        assert reusable_build(NOISE, str(tmp_path), reference_stats=None, teacher_id=None) is not None
        again = build_surrogate(NOISE, str(tmp_path))
        assert again.reused and again.manifest.built_on == {"build": where}
        assert node_tags(built_by(again.manifest), where) == {
            "kd_study.node.build": "n1",
            "kd_study.host.build": "h1",
            "kd_study.node.criteria": "n1",
            "kd_study.host.criteria": "h1",
        }

    def test_a_ray_task_build_records_its_node_and_pieces(self, ray_session, tmp_path: Path) -> None:
        card = NOISE.model_copy(update={"samples_per_shard": 1, "images_per_sample": 16})  # 4 shards, fanned out
        built = build_surrogate(card, str(tmp_path), ray_address="auto", record_work=True)
        node = ray_session.get_runtime_context().get_node_id()
        assert set(built.manifest.built_on) == {"build", "shards"}  # no teacher: no selection
        assert built.manifest.built_on["shards"].nodes == built.manifest.built_on["build"].nodes == [node]

    def test_a_ray_task_build_of_a_mixture_records_its_node_and_its_components(self, ray_session, tmp_path) -> None:
        for name, generator in (("noise_m", "uniform_noise"), ("leaves_m", "dead_leaves")):
            card = {"name": name, "kind": "generated", "generator": generator, "count": 32, "image_size": 8}
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(card))
        parts = [{"card": "noise_m.yaml", "weight": 1}, {"card": "leaves_m.yaml", "weight": 1}]
        mixture = {"name": "blend_m", "kind": "mixture", "count": 32, "image_size": 8, "components": parts}
        (tmp_path / "blend_m.yaml").write_text(yaml.safe_dump(mixture))
        card = resolve_mixture(load_card(tmp_path / "blend_m.yaml"), tmp_path)
        built = build_surrogate(card, str(tmp_path / "shards"), ray_address="auto", record_work=True)
        node = ray_session.get_runtime_context().get_node_id()
        assert built.manifest.built_on is not None and built.manifest.built_on["build"].nodes == [node]
        for name in ("noise_m", "leaves_m"):
            component = shards.read_manifest(str(tmp_path / "shards" / name)).built_on
            assert component is not None and component["build"].nodes == [node]
        assert node_tags(built_by(built.manifest), None)["kd_study.node.build"] == node


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_build_task_given_a_gpu_without_cuda_fails_naming_the_surrogate_and_node() -> None:
    from study.orchestrate.presweep import build_task

    with pytest.raises(PresweepError, match=r"surrogate 'noise' build failed on node .*GPU\(s\) requested"):
        build_task(NOISE.model_dump_json(), "/nowhere", META, "/no-teacher", 1.0)


def test_a_failed_build_task_names_its_surrogate_and_node(ray_session, tmp_path: Path) -> None:
    balanced = CardSpec(name="picky", kind="generated", generator="uniform_noise", balance={"per_class": 2})
    node = ray_session.get_runtime_context().get_node_id()
    with pytest.raises(PresweepError, match=rf"surrogate 'picky' build failed on node {node} \(.+\): TeacherError"):
        build_on_cluster(spec(), {"a": balanced}, str(tmp_path), str(tmp_path / "no-teacher"), META, NoProgress())


@pytest.mark.slow
def test_an_offline_arm_is_perturbed_by_tasks_once_its_source_is_built(ray_session, digits_teacher, tmp_path) -> None:
    card = CardSpec(name="digits_tiny", kind="real", source={"name": "digits"}, count=48, images_per_sample=8,
                    samples_per_shard=2)  # fmt: skip
    attack = {"mode": "offline", "epsilon": 64 / 255, "max_iters": 20, "deepen": "confident", "deepen_iters": 3}
    study = StudySpec.model_validate({"name": "p", "arms": [{"name": "adv", "card": "x", "perturbation": attack}]})
    meta = load_meta(str(digits_teacher))
    built = build_on_cluster(study, {"adv": card}, str(tmp_path), str(digits_teacher), meta, NoProgress())
    derived = built[surrogate_name(study, study.arms[0], card, meta.teacher_id)]
    node = ray_session.get_runtime_context().get_node_id()
    source, pieces = built["digits_tiny"].manifest.built_on, derived.manifest.built_on
    assert source is not None and pieces is not None and set(pieces) == {"perturbation", "attack"}
    assert pieces["perturbation"].nodes == pieces["attack"].nodes == source["build"].nodes == [node]
    assert pieces["perturbation"].started >= source["build"].ended  # after its source, as Ray resolved it


def test_arms_sharing_a_card_and_an_attack_share_one_derived_surrogate() -> None:
    card = CardSpec(name="digits_tiny", kind="real", source={"name": "digits"}, count=48)
    attack, other = {"mode": "offline"}, {"mode": "offline", "epsilon": 4 / 255}
    arms = [{"name": "clean", "card": "x"}, {"name": "adv", "card": "x", "perturbation": attack},
            {"name": "adv_lr", "card": "x", "perturbation": attack, "train": {"lr": 0.05}},
            {"name": "adv_small", "card": "x", "perturbation": other}]  # fmt: skip
    study = StudySpec.model_validate({"name": "p", "arms": arms})
    derived = offline_surrogates(study, dict.fromkeys(["clean", "adv", "adv_lr", "adv_small"], card), "t")
    assert [arm.name for arm, _ in derived.values()] == ["adv", "adv_small"]  # once per attack, first arm named
    assert all(name.startswith("digits_tiny") and name != "digits_tiny" for name in derived)
