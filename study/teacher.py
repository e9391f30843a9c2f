"""Train, save and load a teacher: weights plus `meta.json`.

`meta.json` is what every other part needs to know about the teacher without its training data: the input it
expects (size, channels, mean/std), its classes, and where its original data's val/test splits come from, since
students are evaluated there (and never trained there, unless that split is itself the in-domain surrogate).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError

from study import __version__, storage
from study.config import TeacherSpec
from study.data.loader import to_teacher_input
from study.data.real import load_source
from study.device import pick_device
from study.distill.augment import AugmentConfig, BatchAugment
from study.models import create_model

log = logging.getLogger(__name__)

WEIGHTS = "weights.pt"
META = "meta.json"
NO_EVAL_DATA = "none"
"""`TeacherMeta.dataset` (and `teacher.dataset` in a spec) of a teacher imported without evaluation data."""


class TeacherError(ValueError):
    """A teacher checkpoint is missing or inconsistent; the message names the URI."""


class TeacherMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str
    num_classes: int
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    dataset: str
    dataset_root: str | None = None
    val_split: str = "val"
    test_split: str = "test"
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    epochs: int | None = None
    # how the teacher was trained; optional so that metas written before these keys existed still load
    label_smoothing: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    flip: bool | None = None
    fine_grained: bool | None = None
    weights_sha256: str
    kd_study_version: str = __version__
    # teachers imported from elsewhere (study.teacher_import); metas written before these fields load unchanged
    format: Literal["state_dict", "torchscript", "export"] = "state_dict"
    has_eval_data: bool = True
    dataset_params: dict[str, Any] = {}
    imported_from: str | None = None

    @property
    def teacher_id(self) -> str:
        return f"{self.arch}-{self.dataset}-{self.weights_sha256[:12]}"


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: TeacherMeta


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 (N, H, W, C) images."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).tolist(), x.std(0).tolist()


def normalise(images_uint8_nchw: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=images_uint8_nchw.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images_uint8_nchw.device).view(1, -1, 1, 1)
    return (images_uint8_nchw.float() / 255.0 - m) / s


def eval_tensors(meta: TeacherMeta, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of the teacher's original data, normalised for the teacher, on `device`."""
    if not meta.has_eval_data:
        raise TeacherError(f"teacher {meta.teacher_id} was imported without evaluation data (no '{split}' split)")
    data = load_source(meta.dataset, split, meta.image_size, root=meta.dataset_root, params=meta.dataset_params)
    if data.labels is None:
        raise TeacherError(f"dataset '{meta.dataset}' split '{split}' has no labels to evaluate on")
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    return normalise(x, meta.mean, meta.std).to(device), torch.from_numpy(data.labels).to(device)


def eval_split(meta: TeacherMeta, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of the teacher's original data as uint8 (N, C, H, W) images and int64 labels, on the host.

    Kept uint8 on the host (4x smaller than float, nothing on the device): `predict_classes` normalises and moves
    one `eval_batch_size` batch at a time, so concurrent trials on a GPU do not each hold whole splits there.
    """
    if not meta.has_eval_data:
        raise TeacherError(f"teacher {meta.teacher_id} was imported without evaluation data (no '{split}' split)")
    data = load_source(meta.dataset, split, meta.image_size, root=meta.dataset_root, params=meta.dataset_params)
    if data.labels is None:
        raise TeacherError(f"dataset '{meta.dataset}' split '{split}' has no labels to evaluate on")
    # eval data need not have the teacher's channels (grey digits for an RGB teacher)
    images = to_teacher_input(torch.from_numpy(data.images), meta.channels, meta.image_size)
    return images, torch.from_numpy(data.labels).long()


@torch.no_grad()
def predict_classes(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Predicted classes (int64, host) of uint8 (N, C, H, W) host images, streamed in `batch_size` batches."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        batch = normalise(images[i : i + batch_size].to(device, non_blocking=True), mean, std)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        out.append(model(batch).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` on normalised inputs, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()


def train_teacher(
    spec: TeacherSpec, out_uri: str, on_epoch: Callable[[int, int, float], None] | None = None
) -> Teacher:
    """Train `spec.arch` on the train split of `spec.dataset` and save it to `out_uri`.

    A standard supervised teacher, as the paper's (plain cross-entropy ResNets): cross-entropy with
    `spec.label_smoothing` (0 by default: smoothing flattens the logits, which is what KD transfers), SGD with
    momentum and a cosine schedule (`spec.schedule`), random crops, pad-crop and, where the label set allows it,
    horizontal flips (`TeacherSpec.resolved_flip`). The best val epoch is not picked (the test split stays
    untouched by every choice).
    """
    torch.manual_seed(spec.seed)
    device = pick_device()
    train = load_source(spec.dataset, "train", spec.image_size, root=spec.dataset_root, params=spec.params)
    if train.labels is None:
        raise TeacherError(f"dataset '{spec.dataset}' has no labels to train a teacher on")
    mean, std = channel_stats(train.images)
    num_classes = len(train.classes)
    model = create_model(spec.arch, num_classes=num_classes, in_channels=train.images.shape[3]).to(device)
    x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
    y_all = torch.from_numpy(train.labels)
    steps_per_epoch = math.ceil(len(x_all) / spec.batch_size)
    total_steps = spec.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if spec.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=spec.lr, total_steps=total_steps, pct_start=0.15
        )
    gen = torch.Generator().manual_seed(spec.seed)
    flip = spec.resolved_flip()
    augment = BatchAugment(
        AugmentConfig(crop_scale=(0.8, 1.0), randaugment_ops=0, flip=flip, mixup=False), mean=mean, std=std
    )
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            xb, yb = augment(x_all[idx].to(device), gen), y_all[idx].to(device)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=spec.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if on_epoch:
            on_epoch(epoch + 1, spec.epochs, total / len(x_all))
    meta_fields = dict(
        arch=spec.arch,
        num_classes=num_classes,
        classes=train.classes,
        image_size=spec.image_size,
        channels=int(train.images.shape[3]),
        mean=mean,
        std=std,
        dataset=spec.dataset,
        dataset_root=spec.dataset_root,
        dataset_params=spec.params,
        epochs=spec.epochs,
        label_smoothing=spec.label_smoothing,
        optimizer=spec.optimizer,
        schedule=spec.schedule,
        flip=flip,
        fine_grained=spec.resolved_fine_grained(),
    )
    provisional = TeacherMeta(**meta_fields, weights_sha256="0" * 64)
    accs = {}
    for split in ("train", "val", "test"):
        x, y = eval_tensors(provisional, split, device)
        accs[split] = accuracy(model, x, y)
    model.cpu()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    weights = buf.getvalue()
    meta = TeacherMeta(
        **meta_fields,
        train_accuracy=accs["train"],
        val_accuracy=accs["val"],
        test_accuracy=accs["test"],
        weights_sha256=hashlib.sha256(weights).hexdigest(),
    )
    storage.write_bytes(storage.join(out_uri, WEIGHTS), weights)
    storage.write_text(storage.join(out_uri, META), meta.model_dump_json(indent=2))
    log.info("teacher %s: test accuracy %.4f", meta.teacher_id, accs["test"])
    return Teacher(model.eval(), meta)


def load_meta(uri: str) -> TeacherMeta:
    meta_uri = storage.join(uri, META)
    if not storage.exists(meta_uri):
        raise TeacherError(
            f"{meta_uri}: teacher metadata not found "
            "(train one: kd-study teacher train, or import one: kd-study teacher import)"
        )
    try:
        return TeacherMeta.model_validate_json(storage.read_text(meta_uri))
    except ValidationError as err:
        raise TeacherError(f"{meta_uri}: invalid teacher metadata: {err}") from None


def load_teacher(uri: str, device: torch.device | None = None) -> Teacher:
    """Load weights (`weights_only=True`: no pickle from storage) and meta; checks the weights' sha256."""
    meta = load_meta(uri)
    weights_uri = storage.join(uri, WEIGHTS)
    if not storage.exists(weights_uri):
        raise TeacherError(f"{weights_uri}: teacher weights not found")
    data = storage.read_bytes(weights_uri)
    if hashlib.sha256(data).hexdigest() != meta.weights_sha256:
        raise TeacherError(f"{weights_uri}: sha256 differs from {META} (corrupt or replaced weights)")
    try:
        if meta.format == "state_dict":
            model = create_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.channels)
            model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        else:
            model = model_from_bytes(data, meta.format)
    except (ValueError, RuntimeError, KeyError) as err:
        raise TeacherError(
            f"{storage.join(uri, META)}: arch '{meta.arch}' ({meta.num_classes} classes, {meta.channels} channels) "
            f"cannot be built with the {meta.format} weights in {weights_uri}: {str(err)[:500]}"
        ) from None
    model.to(device or torch.device("cpu")).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, meta)


class ExportedProgramModule(torch.nn.Module):
    """A `torch.export` program as a module that accepts `.eval()`/`.train()` (exported graphs refuse both).

    The program keeps the mode it was exported in (export the teacher in eval mode); the flags are recorded only.
    """

    def __init__(self, program: torch.nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedProgramModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def model_from_bytes(data: bytes, fmt: str) -> torch.nn.Module:
    """A TorchScript or `torch.export` teacher from its file's bytes, on the CPU (neither loader unpickles code)."""
    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    if fmt == "export":
        return ExportedProgramModule(torch.export.load(io.BytesIO(data)).module())
    raise TeacherError(f"unknown teacher format {fmt!r}")
