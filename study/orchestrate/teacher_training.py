"""Train a teacher on a labelled real source and save it as weights plus `meta.json`.

It sits above the data and distillation layers because it reads a real source and trains with the study's batched
augmentation; loading, predicting and the attack live in `study.teacher`, below the data layer.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from study import storage
from study.config import TeacherSpec
from study.data.eval_splits import eval_tensors
from study.data.sources.registry import load_source
from study.device import pick_device
from study.distill.augment import AugmentConfig, BatchAugment
from study.models import create_model
from study.teacher.checkpoint import META, WEIGHTS, Teacher, TeacherError, TeacherMeta, channel_stats
from study.teacher.inference import accuracy

log = logging.getLogger(__name__)


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
        AugmentConfig(crop="random_resized", crop_scale=(0.8, 1.0), randaugment_ops=0, flip=flip, mixup=False),
        mean=mean,
        std=std,
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
