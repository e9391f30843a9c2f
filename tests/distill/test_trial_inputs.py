"""What a trial gets from the driver and what it holds: resolved cards checked against the shards, evaluation
splits kept uint8 on the host and evaluated in `eval_batch_size` batches, small surrogates that wrap around,
and a study identity that covers the teacher's weights and the cards' contents."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from study.config import CardSpec, StudySpec, load_card
from study.data.build import build_surrogate
from study.data.eval_splits import eval_split
from study.data.shards import ShardError, read_manifest
from study.data.shards.reader import ShardStream
from study.distill.trial import KDTrial, TrialPaths
from study.models import create_model
from study.orchestrate.pipeline import study_content
from study.orchestrate.validation import load_cards, study_paths
from study.teacher.checkpoint import TeacherMeta
from study.teacher.inference import predict_classes
from study.tracking import experiment_name

NOISE = {"name": "noise", "kind": "generated", "generator": "uniform_noise", "count": 64, "image_size": 28}


def write_mnist_like(root: Path, train: int, test: int) -> None:
    """MNIST's idx files (torchvision's raw layout) with `test` test images: val and test are its halves."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        pixels = np.broadcast_to((20 * labels + 5)[:, None, None], (n, 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + pixels.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def write_teacher(out: Path, dataset: str, image_size: int, channels: int, root: str | None = None) -> TeacherMeta:
    """An untrained resnet8 saved as a teacher checkpoint (these tests need its inputs, not its accuracy)."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=channels)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out.mkdir(parents=True)
    (out / "weights.pt").write_bytes(buf.getvalue())
    meta = TeacherMeta(
        arch="resnet8",
        num_classes=10,
        classes=[str(i) for i in range(10)],
        image_size=image_size,
        channels=channels,
        mean=[0.5] * channels,
        std=[0.25] * channels,
        dataset=dataset,
        dataset_root=root,
        weights_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
    )
    (out / "meta.json").write_text(meta.model_dump_json())
    return meta


def spec_for(card: str, **kw) -> StudySpec:
    data = {
        "name": "inputs",
        "student": {"arch": "resnet8"},
        "arms": [{"name": "a", "card": card, **kw.pop("arm", {})}],
        "train": {"batch_size": 32, "randaugment_ops": 0, "mixup": False},
        "budget": {"images": 256, "report_every": 128, "eval_batch_size": 512},
        **kw,
    }
    return StudySpec.model_validate(data)


class TestEvaluation:
    def test_a_10k_image_eval_split_stays_uint8_on_the_host_and_is_evaluated_in_batches(self, tmp_path: Path) -> None:
        write_mnist_like(tmp_path / "data", train=10, test=20_000)
        meta = write_teacher(tmp_path / "teacher", "mnist", 28, 1, root=str(tmp_path / "data"))
        images, labels = eval_split(meta, meta.test_split)
        assert images.shape == (10_000, 1, 28, 28)
        assert images.dtype == torch.uint8 and images.device.type == "cpu" and labels.device.type == "cpu"
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        batches: list[tuple[int, torch.dtype]] = []
        model.register_forward_hook(lambda module, args, out: batches.append((args[0].shape[0], args[0].dtype)))
        predicted = predict_classes(model, images, meta.mean, meta.std, torch.device("cpu"), batch_size=512)
        assert predicted.shape == (10_000,) and predicted.device.type == "cpu"
        assert max(n for n, _ in batches) == 512 and sum(n for n, _ in batches) == 10_000
        assert {dtype for _, dtype in batches} == {torch.float32}  # normalised one batch at a time
        assert images.dtype == torch.uint8  # the held split itself never became float


class TestSmallSurrogates:
    def test_ten_images_fill_a_batch_of_64_by_wrapping_around(self, tmp_path: Path) -> None:
        card = CardSpec.model_validate({**NOISE, "count": 300})
        built = build_surrogate(card, str(tmp_path))
        stream = iter(ShardStream(built.root, built.manifest, batch_size=64, seed=0, limit=10))
        batch = next(stream)
        first_ten = {bytes(img) for img in read_all_images(built.root)[:10]}
        assert batch.shape[0] == 64 and {bytes(img) for img in batch.numpy()} == first_ten

    def test_a_10_image_arm_with_batch_64_finishes_and_counts_real_images(self, tmp_path: Path) -> None:
        teacher = tmp_path / "teacher"
        write_teacher(teacher, "digits", 32, 1)
        card = CardSpec.model_validate({**NOISE, "image_size": 32})
        build_surrogate(card, str(tmp_path / "shards"))
        spec = spec_for("noise", arm={"count": 10, "train": {"batch_size": 64}})
        trial = KDTrial(spec, spec.arm("a"), TrialPaths(str(teacher), str(tmp_path / "shards"), cards={"a": card}))
        assert trial.val[0].dtype == trial.test[0].dtype == torch.uint8 and trial.test[0].device.type == "cpu"
        seen: list[float] = []
        trial.run(lambda metrics, _: seen.append(metrics["images_seen"]))
        assert seen == [128.0, 256.0] and trial.images_seen == 4 * 64


def read_all_images(root: str) -> np.ndarray:
    from study.data.shards.reader import read_all

    return read_all(root, read_manifest(root))[0]


class TestResolvedCards:
    def test_a_trial_refuses_shards_built_from_another_card_naming_both(self, tmp_path: Path) -> None:
        teacher = tmp_path / "teacher"
        write_teacher(teacher, "digits", 32, 1)
        built_from = CardSpec.model_validate({**NOISE, "image_size": 32})
        build_surrogate(built_from, str(tmp_path / "shards"))
        resolved = CardSpec.model_validate({**NOISE, "image_size": 32, "seed": 5})
        spec = spec_for("noise")
        with pytest.raises(ShardError, match=r"manifest\.json.*\"seed\": 0.*\"seed\": 5"):
            KDTrial(spec, spec.arm("a"), TrialPaths(str(teacher), str(tmp_path / "shards"), cards={"a": resolved}))

    def test_card_paths_resolve_against_the_spec_folder_not_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "spec" / "cards").mkdir(parents=True)
        (tmp_path / "spec" / "cards" / "mine.yaml").write_text(yaml.safe_dump(NOISE))
        monkeypatch.chdir(tmp_path)
        cards = load_cards(spec_for("cards/mine.yaml"), str(tmp_path / "spec"))
        assert cards["a"] == load_card(tmp_path / "spec" / "cards" / "mine.yaml")


class TestIdentity:
    def meta(self, sha: str) -> TeacherMeta:
        return TeacherMeta(
            arch="resnet8",
            num_classes=10,
            classes=list("0123456789"),
            image_size=32,
            channels=1,
            mean=[0.5],
            std=[0.25],
            dataset="digits",
            weights_sha256=sha,
        )

    def name(self, tmp_path: Path, params: dict, sha: str = "a" * 64, **spec_kw) -> str:
        folder = tmp_path / "spec"
        folder.mkdir(exist_ok=True)
        (folder / "noise.yaml").write_text(yaml.safe_dump({**NOISE, "params": params}))
        spec = spec_for("noise.yaml", **spec_kw)
        return experiment_name(spec, study_content(load_cards(spec, str(folder)), self.meta(sha)))

    def test_editing_a_card_or_retraining_the_teacher_changes_the_experiment_and_storage_does_not(
        self, tmp_path: Path
    ) -> None:
        base = self.name(tmp_path, {"low": [0.0]})
        assert self.name(tmp_path, {"low": [0.1]}) != base
        assert self.name(tmp_path, {"low": [0.0]}, sha="b" * 64) != base
        moved = self.name(tmp_path, {"low": [0.0]}, storage={"root": "/elsewhere"}, tracking={"uri": "http://x:5000"})
        assert moved == base
        spec = spec_for("noise.yaml")
        assert study_paths(spec, "/a").root != study_paths(spec, "/b").root

    def test_matched_noise_is_rebuilt_for_another_teachers_statistics(self, tmp_path: Path) -> None:
        card = CardSpec.model_validate({**NOISE, "generator": "gaussian_noise"})
        first = build_surrogate(card, str(tmp_path), reference_stats=([0.2], [0.1]))
        with pytest.raises(ShardError, match="reference"):
            build_surrogate(card, str(tmp_path), reference_stats=([0.7], [0.1]))
        again = build_surrogate(card, str(tmp_path), reference_stats=([0.7], [0.1]), replace_stale=True)
        assert not again.reused and again.manifest.reference_stats == [[0.7], [0.1]]
        assert again.manifest.shards[0].sha256 != first.manifest.shards[0].sha256
        assert build_surrogate(card, str(tmp_path), reference_stats=([0.7], [0.1])).reused
