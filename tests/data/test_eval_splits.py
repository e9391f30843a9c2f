"""The teacher's eval splits travel as shards: written once where its dataset is (`kd-study data eval-splits`), then
read by the driver (the Fréchet reference) and by trials on machines that never had the dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from study.cli.app import app
from study.criteria.populations import val_moments
from study.data.eval_splits import build_eval_shards, read_eval_split
from study.data.sources.registry import SourceError
from study.teacher.checkpoint import load_teacher
from tests.distill.test_trial_inputs import write_mnist_like, write_teacher


def eval_splits(teacher: Path, out: Path) -> str:
    result = CliRunner().invoke(app, ["data", "eval-splits", "--teacher", str(teacher), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.output.replace("\n", "")


def test_eval_splits_written_where_the_dataset_is_serve_a_machine_without_it(tmp_path: Path) -> None:
    data, teacher, eval_root = tmp_path / "data", tmp_path / "teacher", tmp_path / "study" / "eval"
    write_mnist_like(data, train=10, test=200)
    meta = write_teacher(teacher, "mnist", 16, 1, root=str(data))
    assert "written" in eval_splits(teacher, eval_root)
    shutil.rmtree(data)  # from here on, this machine is one without the teacher's dataset

    assert "reused" in eval_splits(teacher, eval_root)  # a rerun (the job's driver) needs only the shards
    images, labels = read_eval_split(str(eval_root), meta.teacher_id, meta.val_split)
    assert images.shape == (100, 16, 16, 1) and sorted(set(labels.tolist())) == list(range(10))
    model = load_teacher(str(teacher), torch.device("cpu"))
    assert val_moments(model, str(eval_root)) is not None  # the driver's Fréchet reference, from the shards
    assert val_moments(model) is None  # from the dataset: gone


def test_missing_eval_splits_without_the_dataset_name_the_command_that_writes_them(tmp_path: Path) -> None:
    meta = write_teacher(tmp_path / "teacher", "mnist", 16, 1, root=str(tmp_path / "not-here"))
    with pytest.raises(SourceError, match="kd-study data eval-splits --teacher TEACHER_URI --out"):
        build_eval_shards(meta, str(tmp_path / "eval"))
