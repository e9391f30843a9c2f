"""Typed specs loaded from YAML.

Specs are data: YAML in, pydantic objects out, validated once at the edge so that a typo fails before any
teacher trains or any trial starts. Every error names the file and the field. Defaults live here, and they are
the paper's values (Frank & Davis, CVPR 2025) unless a field says otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A user error in a spec, card or teacher file; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- cards
class RealSource(Strict):
    """Where a real card's images come from.

    `name` is a registered real source (`digits`, `photo_crops`, ...); `split` selects a split of it.
    """

    name: str
    split: str = "train"
    root: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _folder_reads_everything(cls, data: Any) -> Any:
        # a surrogate over a user's folder takes all of it: an unsplit folder of 10,000 images can give 8,000
        if isinstance(data, dict) and data.get("name") == "folder" and "split" not in data:
            return {**data, "split": "all"}
        return data


class BalanceSpec(Strict):
    """Selection of a surrogate's images through the teacher, by teacher-predicted class.

    Frank & Davis (CVPR 2025) filter every surrogate through the teacher to 50K images, an equal number per
    predicted class (`mode: balanced`, quota `per_class` for every class). Their class-imbalance ablation uses a
    long-tailed selection (`mode: long_tail`): the quota of class c is `int(per_class * imbalance ** (-c / (K - 1)))`
    (at least 1), decaying geometrically from `per_class` for class 0 to `per_class / imbalance` for class K-1, the
    schedule of CIFAR-LT (Cao et al., NeurIPS 2019). `candidates` caps how many candidates are scanned; by default
    a real source is scanned whole and a generated one up to `DEFAULT_CANDIDATES_PER_IMAGE` times the quota total.
    """

    DEFAULT_CANDIDATES_PER_IMAGE: ClassVar[int] = 20

    per_class: int = Field(gt=0)
    candidates: int | None = Field(default=None, gt=0)
    mode: Literal["balanced", "long_tail"] = "balanced"
    imbalance: float = Field(default=1.0, ge=1.0)

    @model_validator(mode="after")
    def _imbalance_matches_mode(self) -> BalanceSpec:
        if self.mode == "balanced" and self.imbalance != 1.0:
            raise ValueError("'imbalance' applies to mode 'long_tail' only (balanced quotas are equal)")
        if self.mode == "long_tail" and self.imbalance <= 1.0:
            raise ValueError("mode 'long_tail' needs 'imbalance' > 1 (the ratio of the largest to the smallest quota)")
        return self

    def quotas(self, num_classes: int) -> list[int]:
        """Images to keep per teacher class, class index order."""
        if self.mode == "balanced" or num_classes == 1:
            return [self.per_class] * num_classes
        return [
            max(1, int(self.per_class * self.imbalance ** (-c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)
        ]


class CardSpec(Strict):
    """A surrogate source: a `datasets/*.yaml` card."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    kind: Literal["real", "generated", "mixture", "derived"]
    description: str = ""
    source: RealSource | None = None
    generator: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    count: int | None = Field(default=None, gt=0)
    image_size: int = Field(default=32, ge=8, le=1024)
    seed: int = 0
    images_per_sample: int = Field(default=256, gt=0)
    samples_per_shard: int = Field(default=16, gt=0)
    balance: BalanceSpec | None = None

    @model_validator(mode="after")
    def _source_matches_kind(self) -> CardSpec:
        if self.kind == "real" and self.source is None:
            raise ValueError("a 'real' card needs a 'source'")
        if self.kind == "generated" and self.generator is None:
            raise ValueError("a 'generated' card needs a 'generator'")
        if self.kind in ("real", "generated") and self.source is not None and self.generator is not None:
            raise ValueError("a card has either 'source' or 'generator', not both")
        return self


# --------------------------------------------------------------------------------------------------- study
class TeacherSpec(Strict):
    """The teacher: where its checkpoint lives and, for `teacher train`, how to make it."""

    uri: str = "teacher"
    dataset: str = "digits"
    arch: str = "resnet20"
    epochs: int = Field(default=30, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    image_size: int = Field(default=32, ge=8)
    seed: int = 0
    # your own data and your own teacher (`kd-study run`: train it when missing, or import it from `weights`)
    dataset_root: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    train: bool = False
    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None

    @model_validator(mode="after")
    def _one_way_to_make_it(self) -> TeacherSpec:
        if self.train and self.weights is not None:
            raise ValueError("'train: true' and 'weights' both say how to make the teacher: keep one")
        return self


class StudentSpec(Strict):
    arch: str = "resnet8"


class TrainSpec(Strict):
    """Hyperparameters of one KD trial: the paper's recipe. Searched names override these per trial."""

    lr: float = Field(default=0.1, gt=0)
    lr_min: float = Field(default=1e-6, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float | None = Field(default=None, gt=0, description="None: 2 for real, 20 for synthetic (paper)")
    batch_size: int = Field(default=256, gt=0)
    crop_scale_min: float = Field(default=0.35, gt=0, le=1)
    randaugment_ops: int | None = Field(default=None, ge=0, description="None: 2 for real, 4 for synthetic")
    randaugment_magnitude: int = Field(default=14, ge=0, le=30)
    pad_fraction: float = Field(default=0.125, ge=0, le=0.5)
    flip: bool = True
    mixup: bool = True


class PerturbationSpec(Strict):
    """Adversarial boundary perturbation of an arm (Frank & Davis, CVPR 2025; `study.distill.attack`).

    The attack's parameters define the arm and are never searched; they are in the spec, so they change the
    study's science hash. Defaults equal `study.distill.attack.AttackConfig`'s (pixel units of [0, 1] images;
    a test pins the equality, this module does not import torch).

    * `none`: the surrogate as built.
    * `online`: every training batch is attacked on the fly (as the authors' code does); `fraction` (default 1)
      is the share of the batch given to perturbed images: the first `ceil(fraction * B / 4)` images are
      attacked, the 4 images of each success take the front of the batch and clean images fill the rest, so
      the batch size stays B.
    * `offline`: the arm reads a `derived` surrogate built once per teacher x surrogate
      (`kd-study data perturb`, or the pipeline when it is missing); it holds only perturbed images, 4 per
      success; `fraction` (default 1) is the share of each source block that is attacked.
    """

    mode: Literal["none", "online", "offline"] = "none"
    epsilon: float = Field(default=32 / 255, gt=0, le=1)
    alpha: float = Field(default=1 / 255, gt=0, le=1)
    max_iters: int = Field(default=50, ge=1)
    threshold: float = Field(default=0.9, gt=0, le=1)
    random_start: bool = False
    deepen_iters: int = Field(default=10, ge=0)
    fraction: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _alpha_in_ball(self) -> PerturbationSpec:
        if self.alpha > self.epsilon:
            raise ValueError(f"'alpha' ({self.alpha}) must not exceed 'epsilon' ({self.epsilon})")
        return self

    def attack_fields(self) -> dict[str, Any]:
        """The `AttackConfig` keyword arguments (everything but `mode` and `fraction`)."""
        return self.model_dump(exclude={"mode", "fraction"})


class ArmSpec(Strict):
    """A unit of comparison: a surrogate plus a fixed variant. Nothing here is searched."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    card: str
    count: int | None = Field(default=None, gt=0)
    labels: Literal["soft", "onehot"] = "soft"
    train: dict[str, Any] = Field(default_factory=dict)
    perturbation: PerturbationSpec = PerturbationSpec()


class ParamSpace(Strict):
    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpace:
        if self.type == "choice":
            if not self.values:
                raise ValueError("'choice' needs a non-empty 'values' list")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"'{self.type}' needs 'low' < 'high'")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("'loguniform' needs 'low' > 0")
        return self


class SchedulerSpec(Strict):
    """Per-arm ASHA early stopping; `grace_reports` counts reports, not images."""

    kind: Literal["asha", "none"] = "asha"
    grace_reports: int = Field(default=2, gt=0)
    reduction_factor: int = Field(default=2, ge=2)


def _field_kind(name: str) -> str:
    """'int', 'float' or 'bool': the value type of a TrainSpec field (None allowed or not)."""
    annotation = TrainSpec.model_fields[name].annotation
    kinds = {a for a in get_args(annotation) if a is not type(None)} or {annotation}
    return "bool" if bool in kinds else "int" if int in kinds else "float"


def _check_searched(name: str, p: ParamSpace) -> None:
    """A searched parameter must produce values its TrainSpec field accepts, over its whole range."""
    kind = _field_kind(name)
    allowed = {"int": ("int", "choice"), "float": ("uniform", "loguniform", "int", "choice"), "bool": ("choice",)}
    if p.type not in allowed[kind]:
        ways = " or ".join(allowed[kind])
        raise ValueError(f"'{name}' is a {kind} field of train: search it as {ways}, not '{p.type}'")
    if p.type == "int" and not (float(p.low or 0).is_integer() and float(p.high or 0).is_integer()):
        raise ValueError(f"'{name}': type 'int' needs whole 'low' and 'high', got {p.low} and {p.high}")
    values = p.values if p.type == "choice" else [p.low, p.high]
    for value in values or []:
        value = int(value) if p.type == "int" else value
        try:
            TrainSpec.model_validate({name: value})
        except ValidationError as err:
            reason = "; ".join(e["msg"] for e in err.errors())
            raise ValueError(f"'{name}': searched value {value!r} is not a valid train.{name}: {reason}") from None


class SearchSpec(Strict):
    """Per-arm search. `max_failures`: retries (from the last checkpoint) of a trial that raises before it is
    recorded FAILED; a diverged trial (NaN/inf loss) is a result, never retried."""

    trials_per_arm: int = Field(default=4, gt=0)
    space: dict[str, ParamSpace] = Field(default_factory=dict)
    scheduler: SchedulerSpec = SchedulerSpec()
    max_failures: int = Field(default=1, ge=0)
    # `agreement`: data-free search on the student's agreement with the teacher over the last `agreement_images`
    # images of each arm's own surrogate, held out of its training
    metric: Literal["val_acc", "agreement"] = "val_acc"
    agreement_images: int = Field(default=1000, gt=0)

    @field_validator("space")
    @classmethod
    def _searchable(cls, space: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        unknown = sorted(set(space) - set(TrainSpec.model_fields))
        if unknown:
            raise ValueError(f"cannot search {unknown}: searchable names are {sorted(TrainSpec.model_fields)}")
        for name, p in space.items():
            _check_searched(name, p)
        return space


class BudgetSpec(Strict):
    """Budget in images seen, so arms of different sizes get equal compute."""

    images: int = Field(default=20_000_000, gt=0)
    report_every: int = Field(default=1_000_000, gt=0)
    eval_batch_size: int = Field(default=512, gt=0)

    @model_validator(mode="after")
    def _report_fits(self) -> BudgetSpec:
        if self.report_every > self.images:
            raise ValueError("'report_every' must not exceed 'images'")
        return self


class ResourcesSpec(Strict):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    max_concurrent: int = Field(default=0, ge=0)
    loader_workers: int = Field(default=0, ge=0)
    threads_per_trial: int = Field(default=1, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    ray_address: str | None = None


class StorageSpec(Strict):
    """Where things live. Relative paths are resolved against `root`; `root` against the working directory."""

    root: str = "."
    shards: str = "shards"
    tune: str = "tune"


class TrackingSpec(Strict):
    uri: str = "sqlite:///mlflow.db"


class StudySpec(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    seed: int = 0
    teacher: TeacherSpec = TeacherSpec()
    student: StudentSpec = StudentSpec()
    arms: list[ArmSpec] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        names = [a.name for a in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {dupes}")
        for arm in arms:
            unknown = sorted(set(arm.train) - set(TrainSpec.model_fields))
            if unknown:
                raise ValueError(f"arm '{arm.name}': unknown train fields {unknown}")
        return arms

    @model_validator(mode="after")
    def _arms_do_not_fix_searched_names(self) -> StudySpec:
        for i, arm in enumerate(self.arms):
            fixed = sorted(set(arm.train) & set(self.search.space))
            if fixed:
                raise ValueError(
                    f"arms.{i}.train: arm '{arm.name}' fixes {fixed}, which search.space also searches "
                    "(an arm's fixed values define it; remove them from one of the two)"
                )
        return self

    def science_hash(self, content: dict[str, Any] | None = None) -> str:
        """Hash of what changes results; storage, tracking and resources are left out on purpose.

        `content` adds what the spec only names: the teacher's weights and the cards' contents (the pipeline's
        `study_content`), so retraining the teacher or editing a card starts a new experiment.
        """
        science = self.model_dump(mode="json", exclude={"storage", "tracking", "resources"})
        if content:
            science["content"] = content
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:12]

    def arm(self, name: str) -> ArmSpec:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"study '{self.name}' has no arm '{name}' (arms: {[a.name for a in self.arms]})")

    def train_for(self, arm: ArmSpec, overrides: dict[str, Any] | None = None) -> TrainSpec:
        return TrainSpec.model_validate({**self.train.model_dump(), **arm.train, **(overrides or {})})


# --------------------------------------------------------------------------------------------------- loading
def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid {err.title}:"]
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "<top level>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from err


def load_model(path: Path, model: type[M], data: Any = None) -> M:
    data = read_yaml(path) if data is None else data
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_validation_error(path, err)) from None


def load_study(path: Path | str) -> StudySpec:
    return load_model(Path(path), StudySpec)


def load_card(path: Path | str) -> CardSpec:
    return load_model(Path(path), CardSpec)
