"""Train, save and load a teacher: weights plus `meta.json`.

`meta.json` is what every other part needs to know about the teacher without its training data: the input it
expects (size, channels, mean/std), its classes, and where its original data's val/test splits come from, since
students are evaluated there (and never trained there, unless that split is itself the in-domain surrogate).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch

from study import storage
from study.models import create_model
from study.teacher.meta import META, NO_EVAL_DATA, WEIGHTS, TeacherError, TeacherMeta, load_meta  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    model: torch.nn.Module
    meta: TeacherMeta


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 (N, H, W, C) images.

    The std is floored at one grey level (1/255): a channel that is constant over a dataset (a grey scan stored as
    RGB, a synthetic task drawn in one colour) would otherwise give std 0, which normalisation cannot divide by.
    """
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).tolist(), np.maximum(x.std(0), 1.0 / 255.0).tolist()


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
