"""A teacher's `meta.json`: what every part needs to know about the teacher without its weights or its data.

Kept apart from `study.teacher.checkpoint` (weights, torch) so that checking a study (`kd-study validate`) reads
teacher metadata without importing torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from study import __version__, storage

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
    # teachers imported from elsewhere (study.orchestrate.teacher_import); older metas load unchanged
    format: Literal["state_dict", "torchscript", "export"] = "state_dict"
    has_eval_data: bool = True
    dataset_params: dict[str, Any] = {}
    imported_from: str | None = None

    @property
    def teacher_id(self) -> str:
        return f"{self.arch}-{self.dataset}-{self.weights_sha256[:12]}"


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
