"""The teacher's val and test splits as shards under the study root, so evaluation data travels with the study.

Trials evaluate on the teacher's original val/test splits. Loading them from `meta.dataset` at a local path would
need that dataset at the same path on every worker node; instead the driver writes each split once, in the
surrogate shard format (blocks of uint8 images with their labels, `manifest.json` with a sha256 per shard), under
`<root>/eval/<teacher_id>/<split>/`, and trials read them from there like any surrogate. A rerun keeps them after
the same presence check a surrogate gets; `kd-study data verify` checks their hashes.

Where the dataset is: a study run locally writes them itself. A submitted study's driver runs on the cluster, which
reaches the bucket but usually not the teacher's dataset (a folder on the submitting machine, a torchvision root
under its `$KD_STUDY_DATA`), so `kd-study data eval-splits` writes them from the machine that has it, once per
teacher and study root; the driver then finds them and never needs the dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from study import storage
from study.config import CardSpec, RealSource
from study.data import shards
from study.data.build import build_surrogate
from study.data.build_plan import BuildResult
from study.data.shards.reader import read_all, to_teacher_input
from study.data.sources.registry import SourceError, load_source
from study.teacher.checkpoint import TeacherError, TeacherMeta
from study.teacher.inference import normalise


def teacher_eval_root(eval_root: str, teacher_id: str) -> str:
    return storage.join(eval_root, teacher_id)


def eval_card(
    dataset: str,
    split: str,
    image_size: int,
    dataset_root: str | None = None,
    params: dict[str, Any] | None = None,
) -> CardSpec:
    """The card of one eval split: the teacher's own dataset, stored as is (no teacher filter, no generator).

    `params` are the source's (`TeacherMeta.dataset_params`): e.g. an imported teacher's class order for a folder,
    so its labels match the teacher's outputs.
    """
    return CardSpec(
        name=split,
        kind="real",
        description=f"evaluation split '{split}' of the teacher's dataset '{dataset}'",
        source=RealSource(name=dataset, split=split, root=dataset_root, params=params or {}),
        image_size=image_size,
    )


def build_eval_shards(meta, eval_root: str) -> dict[str, BuildResult]:  # meta: study.teacher.TeacherMeta
    """Write (or reuse) the teacher's val and test splits under `<eval_root>/<teacher_id>/`."""
    root = teacher_eval_root(eval_root, meta.teacher_id)
    results = {}
    for split in dict.fromkeys((meta.val_split, meta.test_split)):
        card = eval_card(meta.dataset, split, meta.image_size, meta.dataset_root, meta.dataset_params)
        try:
            results[split] = build_surrogate(card, root)
        except SourceError as err:
            raise SourceError(
                f"{storage.join(root, split)}: the teacher's eval split '{split}' is not there and its dataset "
                f"'{meta.dataset}' is not on this machine ({err}); write the eval splits from a machine that has "
                f"it: kd-study data eval-splits --teacher TEACHER_URI --out {eval_root}"
            ) from None
        if not results[split].manifest.labelled:
            raise shards.ShardError(f"{results[split].root}: eval split '{split}' has no labels to evaluate on")
    return results


def read_eval_split(eval_root: str, teacher_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) images and int64 labels of one eval split, read from its shards."""
    root = storage.join(teacher_eval_root(eval_root, teacher_id), split)
    manifest = shards.read_manifest(root)
    shards.check_present(root, manifest)
    images, labels = read_all(root, manifest, field="labels")
    if labels is None:
        raise shards.ShardError(f"{root}: eval shards hold no labels")
    return images, labels


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
