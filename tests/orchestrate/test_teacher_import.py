"""Importing a teacher trained elsewhere: each file format round-trips to the same logits; bad files fail clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from study.cli.app import app
from study.models import create_model
from study.orchestrate.teacher_import import ImportOptions, import_teacher
from study.teacher.checkpoint import META, TeacherError, load_meta, load_teacher

runner = CliRunner()
NO_DATA = {"mean": [0.5], "std": [0.25]}


def save_state_dict(model: torch.nn.Module, path: Path, prefix: str = "") -> Path:
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    return path


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random but non-trivial BN statistics, so a lost buffer would change the logits."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def assert_same_logits(original: torch.nn.Module, out: Path, size: int, channels: int = 3) -> None:
    teacher = load_teacher(str(out))
    x = torch.randn(4, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), original.eval()(x), atol=1e-5)


class TestRoundTrips:
    def test_zoo_state_dict_with_dataparallel_prefix(self, tmp_path: Path) -> None:
        model = trained_like(create_model("resnet8", num_classes=10, in_channels=1))
        path = save_state_dict(model, tmp_path / "r8.pt", prefix="module.")
        meta = import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet8", **NO_DATA)).meta
        assert (meta.format, meta.num_classes, meta.channels, meta.image_size) == ("state_dict", 10, 1, 32)
        assert meta.has_eval_data is False and meta.dataset == "none"
        assert_same_logits(model, tmp_path / "t", 32, channels=1)

    def test_wrapped_checkpoint_with_a_renamed_head(self, tmp_path: Path) -> None:
        model = trained_like(create_model("resnet8", num_classes=6, in_channels=3))
        state = {k.replace("fc.", "linear."): v for k, v in model.state_dict().items()}
        torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt")
        meta = import_teacher(
            str(tmp_path / "ckpt.pt"), str(tmp_path / "t"), ImportOptions(arch="resnet8", **NO_DATA)
        ).meta
        assert meta.num_classes == 6
        assert_same_logits(model, tmp_path / "t", 32)

    def test_torchvision_resnet18_with_another_head_keeps_torchvisions_stem(self, tmp_path: Path) -> None:
        model = trained_like(torchvision.models.resnet18(num_classes=7))
        path = save_state_dict(model, tmp_path / "r18.pt")
        options = ImportOptions(arch="resnet18", image_size=64, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        meta = import_teacher(str(path), str(tmp_path / "t"), options).meta
        assert meta.num_classes == 7 and meta.classes == [str(i) for i in range(7)]
        assert meta.mean == [0.485, 0.456, 0.406]
        assert_same_logits(model, tmp_path / "t", 64)

    def test_torchscript(self, tmp_path: Path) -> None:
        model = trained_like(create_model("resnet8", num_classes=5, in_channels=3))
        path = tmp_path / "m.ts"
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), str(path))
        meta = import_teacher(str(path), str(tmp_path / "t"), ImportOptions(image_size=32, **NO_DATA)).meta
        assert (meta.format, meta.num_classes, meta.channels, meta.mean) == ("torchscript", 5, 3, [0.5] * 3)
        assert_same_logits(model, tmp_path / "t", 32)

    def test_torch_export_program_takes_its_input_size_from_the_program(self, tmp_path: Path) -> None:
        model = trained_like(create_model("resnet8", num_classes=4, in_channels=3))
        program = torch.export.export(
            model, (torch.randn(2, 3, 40, 40),), dynamic_shapes={"x": {0: torch.export.Dim("b")}}
        )
        path = tmp_path / "m.pt2"
        torch.export.save(program, str(path))
        meta = import_teacher(str(path), str(tmp_path / "t"), ImportOptions(**NO_DATA)).meta
        assert (meta.format, meta.num_classes, meta.image_size) == ("export", 4, 40)
        assert_same_logits(model, tmp_path / "t", 40)
        # exported graphs refuse .eval(); the loaded teacher must still work with code that toggles modes
        teacher = load_teacher(str(tmp_path / "t"))
        teacher.model.train().eval()


class TestErrors:
    def test_wrong_arch_lists_missing_and_unexpected_keys(self, tmp_path: Path) -> None:
        path = save_state_dict(create_model("resnet8", 10, 3), tmp_path / "r8.pt")
        with pytest.raises(TeacherError, match=r"does not fit arch 'resnet20'.*\n  missing \(\d+\): layer1\.1\."):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet20", **NO_DATA))

    def test_plain_torchvision_weights_into_the_small_stem_arch_hint_the_torchvision_name(self, tmp_path: Path) -> None:
        path = save_state_dict(torchvision.models.resnet18(num_classes=10), tmp_path / "r18.pt")
        with pytest.raises(TeacherError, match=r"(?s)conv1\.weight \[64, 3, 7, 7\].*use --arch resnet18"):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="tv_resnet18", **NO_DATA))

    def test_class_count_that_disagrees_with_the_head_is_an_error(self, tmp_path: Path) -> None:
        path = save_state_dict(create_model("resnet8", 7, 3), tmp_path / "r8.pt")
        with pytest.raises(TeacherError, match="head has 7 classes, --num-classes/--classes say 5"):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet8", num_classes=5, **NO_DATA))

    def test_eval_data_with_another_class_count_is_an_error(self, tmp_path: Path) -> None:
        path = save_state_dict(create_model("resnet8", 7, 1), tmp_path / "r8.pt")
        with pytest.raises(TeacherError, match="outputs 7 classes, eval dataset 'digits' has 10"):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet8", eval_dataset="digits"))

    def test_a_pickled_module_is_refused_not_unpickled(self, tmp_path: Path) -> None:
        torch.save(create_model("resnet8", 10, 3), tmp_path / "whole.pt")
        with pytest.raises(TeacherError, match=r"not a plain state dict.*torch\.save\(model\.state_dict\(\), FILE\)"):
            import_teacher(str(tmp_path / "whole.pt"), str(tmp_path / "t"), ImportOptions(arch="resnet8", **NO_DATA))

    def test_mean_and_std_are_required_without_eval_data(self, tmp_path: Path) -> None:
        path = save_state_dict(create_model("resnet8", 10, 3), tmp_path / "r8.pt")
        with pytest.raises(TeacherError, match="--mean and --std are required"):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet8"))
        with pytest.raises(TeacherError, match="--mean: 2 values for a 3-channel teacher"):
            import_teacher(str(path), str(tmp_path / "t"), ImportOptions(arch="resnet8", mean=[0.1, 0.2], std=[1.0]))


def test_import_with_eval_data_measures_the_same_accuracy_as_training(digits_teacher: Path, tmp_path: Path) -> None:
    trained = load_meta(str(digits_teacher))
    base = ["teacher", "import", "--weights", str(digits_teacher / "weights.pt"), "--arch", trained.arch]
    stats = ["--mean", ",".join(map(str, trained.mean)), "--std", ",".join(map(str, trained.std))]
    result = runner.invoke(app, [*base, *stats, "--eval-dataset", "digits", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    meta = load_meta(str(tmp_path / "t"))
    assert meta.test_accuracy == pytest.approx(trained.test_accuracy)
    assert meta.val_accuracy == pytest.approx(trained.val_accuracy)
    assert meta.classes == trained.classes and meta.has_eval_data and meta.dataset == "digits"
    # without --mean/--std: the eval data's own statistics (val + test), close to the training split's
    result = runner.invoke(app, [*base, "--eval-dataset", "digits", "--out", str(tmp_path / "u")])
    assert result.exit_code == 0, result.output
    own = load_meta(str(tmp_path / "u"))
    assert own.mean != trained.mean and own.mean == pytest.approx(trained.mean, abs=0.02)
    assert own.std == pytest.approx(trained.std, abs=0.02)


def test_cli_import_without_eval_data_and_a_meta_written_before_the_import_fields_still_loads(tmp_path: Path) -> None:
    path = save_state_dict(create_model("resnet8", 3, 3), tmp_path / "r8.pt")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    args = ["teacher", "import", "--weights", str(path), "--arch", "resnet8", "--out", str(tmp_path / "t")]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 2 and "--mean and --std are required" in missing.output
    ok = runner.invoke(
        app, [*args, "--mean", "0.5", "--std", "0.2,0.2,0.2", "--classes", str(tmp_path / "classes.txt")]
    )
    assert ok.exit_code == 0, ok.output
    assert "no eval data" in ok.output
    meta_path = tmp_path / "t" / META
    meta = json.loads(meta_path.read_text())
    assert meta["classes"] == ["cat", "dog", "bird"] and meta["format"] == "state_dict"
    for new_field in ("format", "has_eval_data", "dataset_params", "imported_from"):
        meta.pop(new_field)
    meta_path.write_text(json.dumps(meta))
    old = load_teacher(str(tmp_path / "t"))
    assert old.meta.format == "state_dict" and old.meta.has_eval_data  # what every earlier teacher had


def test_load_teacher_checks_the_sha256_of_every_format(tmp_path: Path) -> None:
    model = create_model("resnet8", 4, 3).eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), buf)
    (tmp_path / "m.ts").write_bytes(buf.getvalue())
    import_teacher(str(tmp_path / "m.ts"), str(tmp_path / "t"), ImportOptions(image_size=32, **NO_DATA))
    weights = tmp_path / "t" / "weights.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(TeacherError, match="sha256 differs"):
        load_teacher(str(tmp_path / "t"))


def test_folder_eval_data_is_scored_in_the_teachers_class_order(tmp_path: Path, monkeypatch) -> None:
    """A teacher that outputs 'red' as class 0 must be scored against a folder whose folders sort 'blue' first."""
    from PIL import Image

    from study.data.eval_splits import eval_split

    order = ["red", "green", "blue"]
    for c, label in enumerate(order):
        (tmp_path / "mine" / label).mkdir(parents=True)
        for i in range(10):
            pixel = np.zeros((8, 8, 3), np.uint8)
            pixel[..., c] = 200 + i
            Image.fromarray(pixel).save(tmp_path / "mine" / label / f"{i}.png")

    class ChannelArgmax(torch.nn.Module):  # a perfect teacher: the brightest channel is the class
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) * 10

    torch.jit.save(torch.jit.script(ChannelArgmax()), str(tmp_path / "argmax.ts"))
    (tmp_path / "classes.txt").write_text("\n".join(order))
    monkeypatch.chdir(tmp_path)  # a relative --eval-root is stored absolute: trials run in other directories
    args = ["--weights", "argmax.ts", "--image-size", "8", "--mean", "0", "--std", "1", "--classes", "classes.txt"]
    result = runner.invoke(
        app, ["teacher", "import", *args, "--eval-dataset", "folder", "--eval-root", "mine", "--out", "t"]
    )
    assert result.exit_code == 0, result.output
    meta = load_meta(str(tmp_path / "t"))
    assert meta.test_accuracy == 1.0 and meta.val_accuracy == 1.0 and meta.classes == order
    assert meta.dataset_root == str(tmp_path / "mine") and meta.dataset_params == {"classes": order}
    images, labels = eval_split(meta, "test")
    assert images[:, :, 0, 0].argmax(1).tolist() == labels.tolist()
