"""Typed specs loaded from YAML.

Specs are data: YAML in, pydantic objects out, validated once at the edge so that a typo fails before any
teacher trains or any trial starts. Every error names the file and the field. Defaults live here, and they are
the paper's values (Frank & Davis, CVPR 2025) unless a field says otherwise.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

M = TypeVar("M", bound=BaseModel)


class SpecError(ValueError):
    """A user error in a spec, card or teacher file; the message names the file and the field."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...], what: str) -> str:
    """`unknown <what> 'x' (did you mean 'y'?; choices: a, b, c)`: the one wording of an unknown name."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what} '{name}'{hint}; choices: {', '.join(sorted(choices))}"


NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
CROSSED_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9][A-Za-z0-9_.-]*)?$"
"""A name, or a name crossed with a teacher id (a multi-teacher study's arms and teacher-dependent cards)."""


def crossed_name(name: str, teacher_id: str) -> str:
    """`<name>@<teacher id>`: an arm or a teacher-dependent card of one teacher of a multi-teacher study."""
    return f"{name}@{teacher_id}"


def uncrossed_name(name: str) -> str:
    """The name a crossed name was made from (`crossed_name`); other names unchanged."""
    return name.rsplit("@", 1)[0]


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
    schedule of CIFAR-LT (Cao et al., NeurIPS 2019). As the authors do, the scan goes on until every quota is met;
    `candidates` is only a ceiling against a class the teacher (almost) never predicts. By default a real source is
    scanned whole and a generated one up to `DEFAULT_CANDIDATES_PER_IMAGE` times the quota total, so the ceiling
    scales with the quotas; a class still short at the ceiling leaves the surrogate marked "not balanced".
    """

    # a class the teacher predicts for 1 candidate in 1000 still fills within this many candidates per kept image
    # (K = 10 classes): the bundled noise and dead-leaves cards' rarest class under the quickstart's digits teacher
    DEFAULT_CANDIDATES_PER_IMAGE: ClassVar[int] = 200

    per_class: int | None = Field(default=None, gt=0)
    total: int | None = Field(default=None, gt=0)
    """Instead of `per_class`: the images to keep in all, `total // K` per class for a K-class teacher (at least 1).
    The paper keeps 50K images whatever the teacher (5,000 per class for CIFAR-10, 500 for CIFAR-100), so a card
    with `total: 50000` serves every teacher of its grid. In `long_tail` mode it sets the head class's quota."""
    candidates: int | None = Field(default=None, gt=0)
    mode: Literal["balanced", "long_tail"] = "balanced"
    imbalance: float = Field(default=1.0, ge=1.0)

    @model_validator(mode="after")
    def _one_size(self) -> BalanceSpec:
        if (self.per_class is None) == (self.total is None):
            raise ValueError("set exactly one of 'per_class' (images per class) and 'total' (images in all)")
        return self

    @model_validator(mode="after")
    def _imbalance_matches_mode(self) -> BalanceSpec:
        if self.mode == "balanced" and self.imbalance != 1.0:
            raise ValueError("'imbalance' applies to mode 'long_tail' only (balanced quotas are equal)")
        if self.mode == "long_tail" and self.imbalance <= 1.0:
            raise ValueError("mode 'long_tail' needs 'imbalance' > 1 (the ratio of the largest to the smallest quota)")
        return self

    def candidate_ceiling(self, num_classes: int) -> int:
        """Candidates a scan of a generated source may visit before it gives up on the quotas it has not met."""
        return self.candidates or self.DEFAULT_CANDIDATES_PER_IMAGE * sum(self.quotas(num_classes))

    def head(self, num_classes: int) -> int:
        """The largest quota (every class's in `balanced` mode) for a teacher of `num_classes` classes."""
        return self.per_class if self.per_class is not None else max(1, (self.total or 0) // num_classes)

    def quotas(self, num_classes: int) -> list[int]:
        """Images to keep per teacher class, class index order."""
        head = self.head(num_classes)
        if self.mode == "balanced" or num_classes == 1:
            return [head] * num_classes
        return [max(1, int(head * self.imbalance ** (-c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)]


class ComponentSpec(Strict):
    """One source of a `mixture` card: a card by bundled name or path (relative to the mixture card's folder) and
    its weight. `resolved` is the component's card as the driver read it (`study.data.mixture.resolve_mixture`),
    so the mixture's snapshot, and with it the study's science hash, covers the components' contents; a card
    file leaves it out."""

    card: str
    weight: float = Field(gt=0)
    resolved: CardSpec | None = None


class CardSpec(Strict):
    """A surrogate source: a `datasets/*.yaml` card.

    A `mixture` blends other cards (`components`, weights normalised to sum to 1) into shards of its own, so a
    trial reads it like any surrogate; `count` is its size. `recipe` picks the training recipe (temperature,
    RandAugment ops, the shader extras) of a mixture as a whole: `synthetic` by default when any component is
    generated (see `study.data.mixture` for why one recipe per card, not per image).
    """

    name: Annotated[str, Field(pattern=CROSSED_NAME)]  # `<card>@<teacher id>`: built per teacher (load_cards)
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
    components: list[ComponentSpec] | None = None
    recipe: Literal["real", "synthetic"] | None = None

    @field_validator("components")
    @classmethod
    def _normalised_weights(cls, components: list[ComponentSpec] | None) -> list[ComponentSpec] | None:
        if components is None:
            return None
        total = sum(c.weight for c in components)
        return [c.model_copy(update={"weight": c.weight / total}) for c in components]

    @model_validator(mode="after")
    def _source_matches_kind(self) -> CardSpec:
        if self.kind == "mixture":
            if not self.components or len(self.components) < 2:
                raise ValueError("a 'mixture' card needs 'components' with at least two entries")
            if self.source is not None or self.generator is not None:
                raise ValueError("a 'mixture' card takes 'components', not 'source' or 'generator'")
            if self.count is None:
                raise ValueError("a 'mixture' card needs a 'count' (its size)")
            if self.balance is not None and self.balance.mode != "balanced":
                raise ValueError("a 'mixture' card's 'balance' supports mode 'balanced' only")
        elif self.components is not None or self.recipe is not None:
            raise ValueError("'components' and 'recipe' apply to 'mixture' cards only")
        if self.kind == "real" and self.source is None:
            raise ValueError("a 'real' card needs a 'source'")
        if self.kind == "generated" and self.generator is None:
            raise ValueError("a 'generated' card needs a 'generator'")
        if self.kind in ("real", "generated") and self.source is not None and self.generator is not None:
            raise ValueError("a card has either 'source' or 'generator', not both")
        return self


ComponentSpec.model_rebuild()  # its `resolved` field refers to CardSpec, defined after it


# --------------------------------------------------------------------------------------------------- study
FINE_GRAINED_SOURCES = frozenset({"fgvc_aircraft", "oxford_pets", "food101", "dtd"})
"""Teacher sources the paper treats as fine-grained (distilled at T = 20, like synthetic surrogates)."""
UNMIRRORED_SOURCES = frozenset({"digits", "mnist", "svhn", "emnist", "folder"})
"""Sources whose label set is not mirror-symmetric (digits, letters; a mirrored 2 is no digit), and `folder`
sources, whose content kd-study cannot know: teacher flips default off for them."""


class TeacherSpec(Strict):
    """The teacher: where its checkpoint lives and, for `teacher train`, how to make it.

    Defaults are a standard supervised teacher as in the paper (plain cross-entropy ResNets): no label smoothing,
    SGD lr 0.1 with momentum 0.9 and a cosine schedule. `flip` None means: on for natural-image datasets, off for
    digits/letters (`UNMIRRORED_SOURCES`) and for folder or imported sources. `fine_grained` None means: from
    the dataset (`FINE_GRAINED_SOURCES`); it sets the students' KD temperature (`study.distill.temperature`).
    """

    uri: str = "teacher"
    dataset: str = "digits"
    arch: str = "resnet20"
    epochs: int = Field(default=30, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    optimizer: Literal["sgd"] = "sgd"
    schedule: Literal["cosine", "onecycle"] = "cosine"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    flip: bool | None = None
    fine_grained: bool | None = None
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

    def resolved_flip(self) -> bool:
        """Whether the teacher trains with horizontal flips (see the class docstring for the default rule)."""
        if self.flip is not None:
            return self.flip
        return self.dataset not in UNMIRRORED_SOURCES

    def resolved_fine_grained(self) -> bool:
        return self.fine_grained if self.fine_grained is not None else self.dataset in FINE_GRAINED_SOURCES


class TeacherEntry(TeacherSpec):
    """One teacher of a multi-teacher study (`teachers:`): a teacher and the id its arms and runs go by. Its
    checkpoint lives at `teachers/<id>` unless `uri` says otherwise."""

    id: Annotated[str, Field(pattern=NAME)]

    @model_validator(mode="before")
    @classmethod
    def _uri_from_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "uri" not in data and isinstance(data.get("id"), str):
            return {**data, "uri": f"teachers/{data['id']}"}
        return data

    def as_teacher(self) -> TeacherSpec:
        return TeacherSpec.model_validate(self.model_dump(exclude={"id"}, exclude_unset=True))  # what was set, as set


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
    # `random`: the authors' Resize + RandomCrop to the input size, the identity on kd-study's square images;
    # `random_resized`: kd-study's earlier RandomResizedCrop (area `crop_scale_min`-1)
    crop: Literal["random", "random_resized"] = "random"
    crop_scale_min: float = Field(default=0.35, gt=0, le=1)
    randaugment_ops: int | None = Field(default=None, ge=0, description="None: 2 for real, 4 for synthetic")
    randaugment_magnitude: int = Field(default=14, ge=0, le=30)
    pad_fraction: float = Field(default=0.125, ge=0, le=0.5)
    flip: bool | None = Field(default=None, description="None: as the teacher was trained (its meta.json 'flip')")
    mixup: bool = True


class PerturbationSpec(Strict):
    """Adversarial boundary perturbation of an arm (Frank & Davis, CVPR 2025; `study.teacher.attack`).

    The attack's parameters define the arm and are never searched; they are in the spec, so they change the
    study's science hash. Defaults equal `study.teacher.attack.AttackConfig`'s (pixel units of [0, 1] images;
    a test pins the equality, this module does not import torch).

    * `none`: the surrogate as built.
    * `online`: every training batch is attacked on the fly, as the authors' code does. `online_batch:
      boundary_only` (default, the authors'): every image of the batch of B is attacked and the student trains on
      the 4 images of each success alone, a batch of 4 x successes (up to 4B; none when every attack fails), with
      the cosine schedule and the budget counted in those images. `equal_compute` (kd-study's earlier way): only
      the first `ceil(fraction * B / 4)` images are attacked (`fraction`, default 1, applies to it alone), the 4
      images of each success take the front of the batch and the other images fill it, so it stays B.
      `online_order: after_mixup` (default, the authors' order) attacks the augmented, mixed-up float batch and
      distils on the attacked images as they are; `before_augment` (kd-study's earlier order) attacks the clean
      uint8 batch and augments and mixes the result. `target: pseudo_label` (default, the authors' for their
      OpenGL shaders): a shader surrogate's images are attacked toward the teacher's class of the un-mixed clean
      image (its stored label), in order `after_mixup` (elsewhere that label is the image's own class, so no
      crossing is sought); every other case, and `uniform_other` always, draws a uniform class other than the
      teacher's prediction.
    * `offline`: kd-study's own variant: the arm reads a `derived` surrogate built once per teacher x surrogate
      (`kd-study data perturb`, or the pipeline when it is missing) and augments it at training time like any
      surrogate; `fraction` (default 1) is the share of each source block that is attacked. The derived set
      holds the 4 images of each success and, with `clean_fraction` c > 0, the first `ceil(c * N)` clean images
      of each source block of N as well.

    `deepen: own_class_step` (default, the authors'): each kept image takes one step of `alpha` toward its own
    class; `confident` (kd-study's earlier way) walks up to `deepen_iters` bold-driver steps until max-softmax
    >= `threshold` inside the original ball.
    """

    mode: Literal["none", "online", "offline"] = "none"
    online_order: Literal["after_mixup", "before_augment"] = "after_mixup"
    online_batch: Literal["boundary_only", "equal_compute"] = "boundary_only"
    target: Literal["pseudo_label", "uniform_other"] = "pseudo_label"
    clean_fraction: float = Field(default=0.0, ge=0, le=1)
    epsilon: float = Field(default=32 / 255, gt=0, le=1)
    alpha: float = Field(default=1 / 255, gt=0, le=1)
    max_iters: int = Field(default=50, ge=1)
    threshold: float = Field(default=0.9, gt=0, le=1)
    random_start: bool = False
    deepen: Literal["own_class_step", "confident"] = "own_class_step"
    deepen_iters: int = Field(default=10, ge=0)
    fraction: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _alpha_in_ball(self) -> PerturbationSpec:
        if self.alpha > self.epsilon:
            raise ValueError(f"'alpha' ({self.alpha}) must not exceed 'epsilon' ({self.epsilon})")
        if self.clean_fraction > 0 and self.mode != "offline":
            raise ValueError("'clean_fraction' applies to mode 'offline' only (online batches keep clean images)")
        if self.mode == "online" and self.online_batch == "boundary_only" and self.fraction is not None:
            raise ValueError("'fraction' applies to 'online_batch: equal_compute' (boundary_only attacks every image)")
        # compared with the default, not `model_fields_set`: a dumped spec (the trials' copy) sets every field
        if (
            self.deepen == "own_class_step"
            and self.deepen_iters != PerturbationSpec.model_fields["deepen_iters"].default
        ):
            raise ValueError("'deepen_iters' applies to 'deepen: confident' (own_class_step takes one step)")
        return self

    def attack_fields(self) -> dict[str, Any]:
        """The `AttackConfig` keyword arguments (everything but how the arm uses the attack)."""
        return self.model_dump(exclude={"mode", "fraction", "online_order", "online_batch", "target", "clean_fraction"})


class ArmSpec(Strict):
    """A unit of comparison: a surrogate plus a fixed variant. Nothing here is searched.

    `count` reads the first N images of the surrogate (stored class-interleaved, so any prefix is class-fair and
    the amounts of one surrogate are nested). `amount_of` names the arm a `counts:` list was expanded from
    (`StudySpec._expand_counts`); the report groups amounts by it.
    """

    name: Annotated[str, Field(pattern=CROSSED_NAME)]  # `<arm>@<teacher id>` when crossed with `teachers:`
    card: str
    count: int | None = Field(default=None, gt=0)
    amount_of: str | None = None
    teachers: list[str] | None = None  # multi-teacher studies: the teachers it applies to (default: all)
    teacher: str | None = None  # the teacher of an arm crossed with `teachers:` (set by `StudySpec`), `<arm>@<id>`
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
    """How long each trial trains.

    `mode: images` (default): every arm sees `images` images, reporting every `report_every`, so arms of
    different sizes get equal compute (a small surrogate is repeated more often). `mode: epochs`: every arm
    trains `epochs` passes over its own images and reports every `report_every_epochs` passes, so arms compare
    at equal epochs (a small amount gets less compute); every arm still reports the same number of times, which
    keeps the per-arm early-stopping rungs comparable.
    """

    mode: Literal["images", "epochs"] = "images"
    images: int = Field(default=20_000_000, gt=0)
    report_every: int = Field(default=1_000_000, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    report_every_epochs: int = Field(default=1, gt=0)
    eval_batch_size: int = Field(default=512, gt=0)

    @model_validator(mode="after")
    def _report_fits(self) -> BudgetSpec:
        if self.mode == "epochs":
            # compared with the defaults, not `model_fields_set`: a dumped spec (the trials' copy) sets every field
            defaults = BudgetSpec.model_fields
            wrong = [f for f in ("images", "report_every") if getattr(self, f) != defaults[f].default]
            if wrong:
                raise ValueError(
                    f"{wrong} apply to mode 'images'; mode 'epochs' uses 'epochs' and 'report_every_epochs'"
                )
            if self.epochs is None:
                raise ValueError("mode 'epochs' needs 'epochs'")
            if self.report_every_epochs > self.epochs:
                raise ValueError("'report_every_epochs' must not exceed 'epochs'")
            return self
        if self.epochs is not None or self.report_every_epochs != 1:
            raise ValueError("'epochs' and 'report_every_epochs' apply to mode 'epochs' (set mode: epochs)")
        if self.report_every > self.images:
            raise ValueError("'report_every' must not exceed 'images'")
        return self

    @property
    def reports(self) -> int:
        """Reports per trial, the same for every arm (the early-stopping rungs count them)."""
        if self.mode == "epochs":
            assert self.epochs is not None
            return math.ceil(self.epochs / self.report_every_epochs)
        return math.ceil(self.images / self.report_every)

    def images_for(self, arm_images: int) -> tuple[int, int]:
        """(images to train on, report interval in images) of an arm that reads `arm_images` images."""
        if self.mode == "epochs":
            assert self.epochs is not None
            return self.epochs * arm_images, self.report_every_epochs * arm_images
        return self.images, self.report_every


class ResourcesSpec(Strict):
    cpu: float = Field(default=1.0, ge=0)  # 0: a GPU trial that reserves no CPU slot (the GPU is its limit)
    gpu: float = Field(default=0.0, ge=0)
    max_concurrent: int = Field(default=0, ge=0)
    # trials kept pending (placement groups requested) so an autoscaler sees the demand; 0: every dealt trial of
    # the current phase (all search trials, then all final reruns), at most 64 (set more for a larger cluster)
    max_pending: int = Field(default=0, ge=0)
    # a trial checkpoints at a report only when this long has passed since its last checkpoint (0: every report);
    # with Tune keeping 2 checkpoints per trial, experiment-state syncs are then forced at most once per period
    checkpoint_s: float = Field(default=60.0, ge=0)
    # "deterministic": when ASHA (or TPE past its random start-up trials) could decide by which result arrived
    # first, an arm's search trials run one after another (arms side by side), so the same spec makes the same
    # decisions at any load or `max_concurrent`; "throughput": every slot is filled (and every dealt trial is
    # demanded from an autoscaler) at the cost of that guarantee. Scheduling only: not part of the study's identity
    order: Literal["deterministic", "throughput"] = "deterministic"
    loader_workers: int = Field(default=0, ge=0)
    threads_per_trial: int = Field(default=1, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    ray_address: str | None = None


class StorageSpec(Strict):
    """Where things live. `root` is a folder or `s3://bucket/prefix`; relative parts join onto it as URIs, and a
    relative local `root` resolves against the working directory.

    `cache` is a node-local folder where trials keep verified copies of S3 shards (shared by the trials of a node,
    at most `cache_max_gb`; 0 turns it off); `KD_STUDY_SHARD_CACHE` on a node overrides it, since the fast local
    disk is a property of the node, not of the study.
    """

    root: str = "."
    shards: str = "shards"
    tune: str = "tune"
    cache: str | None = None
    cache_max_gb: float = Field(default=20.0, ge=0)


def check_tracking_uri(uri: str) -> str:
    """`uri` unchanged, or ValueError when it carries credentials (`https://user:secret@host`).

    A tracking URI travels in plain sight: the job's command line (`kd-study jobs`, the Ray dashboard), Tune's
    pickled state on storage, the report and error messages. Credentials go in MLflow's own environment variables
    instead, which every MLflow client reads and nothing here prints or stores.
    """
    from urllib.parse import urlsplit

    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    if password is not None:
        raise SpecError(
            "tracking URI carries credentials (user:password@); pass the URI without them and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
        )
    return uri


class TrackingSpec(Strict):
    uri: str = "sqlite:///mlflow.db"

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        return check_tracking_uri(uri)


class CriteriaSpec(Strict):
    """Teacher-side criteria (`study.criteria.measures`): images per population (raw candidate pool, built set),
    and the seeded sample of training batches the `trained` population measures (`study.criteria.trained`):
    `trained_batches` batches as the student trains on them, drawing at most `trained_source_batches` batches from
    the stream (an online `boundary_only` arm trains on none of a batch whose attacks all fail)."""

    images: int = Field(default=2048, ge=64)
    trained_batches: int = Field(default=8, ge=1)
    trained_source_batches: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _enough_source_batches(self) -> CriteriaSpec:
        if self.trained_source_batches < self.trained_batches:
            raise ValueError(
                f"trained_source_batches ({self.trained_source_batches}) is below trained_batches "
                f"({self.trained_batches}): the sample could never be drawn"
            )
        return self


class FinalSpec(Strict):
    """The final phase: after an arm's search, its `top_k` configs (by the search metric, among search trials that
    reached the full budget and did not diverge) rerun at the full budget with `seeds` distinct seeds each, exempt
    from early stopping, so the report can average over seeds instead of over configs and early-stopped trials."""

    top_k: int = Field(default=1, gt=0)
    seeds: int = Field(default=3, gt=0)


class StudySpec(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    seed: int = 0
    teacher: TeacherSpec | None = None  # None only in a multi-teacher study (see `teachers`)
    teachers: list[TeacherEntry] | None = None
    """Several teachers in one study: every arm is crossed with the teachers it applies to (`arms[].teachers`,
    default all) into `<arm>@<teacher id>` arms, each with its own search, early stopping, final phase and runs;
    `{dataset}` in an arm's card becomes each teacher's dataset (`card: "{dataset}"`: its own training data).
    A single `teacher:` is a study of one teacher (its arms keep their names)."""
    student: StudentSpec = StudentSpec()
    arms: list[ArmSpec] = Field(min_length=1)
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()
    criteria: CriteriaSpec = CriteriaSpec()
    final: FinalSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _cross_arms_with_teachers(cls, data: Any) -> Any:
        """One teacher by default; with `teachers:`, each unbound arm becomes one arm per teacher it applies to.
        Bound arms (`teacher` set) stay: a spec dumped after crossing validates to itself."""
        if not isinstance(data, dict):
            return data
        if data.get("teachers") is None:
            if "teacher" not in data or data["teacher"] is None:
                data = {**data, "teacher": TeacherSpec()}
            return data
        if data.get("teacher") is not None:
            raise ValueError("set 'teacher' (one teacher) or 'teachers' (a list), not both")
        entries = data["teachers"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("teachers: expected a non-empty list of teachers, each with an 'id'")
        ids = [e.get("id") if isinstance(e, dict) else getattr(e, "id", None) for e in entries]
        dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"teachers: ids must be unique, repeated: {dupes}")
        arms = data.get("arms")
        if not isinstance(arms, list):
            return data
        crossed = []
        for i, arm in enumerate(arms):
            if not isinstance(arm, dict) or arm.get("teacher") is not None:
                crossed.append(arm)
                continue
            wanted = arm.get("teachers") or ids
            unknown = [t for t in wanted if t not in ids]
            if unknown:
                raise ValueError(
                    f"arms.{i}.teachers: {did_you_mean(str(unknown[0]), [str(t) for t in ids], 'teacher id')}"
                )
            base = {k: v for k, v in arm.items() if k != "teachers"}
            for tid in wanted:
                entry = entries[ids.index(tid)]
                default = TeacherSpec.model_fields["dataset"].default
                dataset = entry.get("dataset", default) if isinstance(entry, dict) else entry.dataset
                card = base.get("card")  # `{dataset}`: a card per teacher, e.g. its own data or its ImageNet lists
                card = card.replace("{dataset}", str(dataset)) if isinstance(card, str) else card
                crossed.append({**base, "name": crossed_name(str(arm.get("name")), tid), "teacher": tid, "card": card})
        return {**data, "arms": crossed}

    @field_validator("arms", mode="before")
    @classmethod
    def _expand_counts(cls, arms: Any) -> Any:
        """`counts: [a, b, ...]` on an arm becomes one arm per amount, named `<arm>_n<count>`."""
        if not isinstance(arms, list):
            return arms
        out = []
        for i, arm in enumerate(arms):
            if not isinstance(arm, dict) or "counts" not in arm:
                out.append(arm)
                continue
            counts = arm["counts"]
            if "count" in arm:
                raise ValueError(f"arms.{i}.counts: arm '{arm.get('name')}' sets both 'count' and 'counts' (use one)")
            if (
                not isinstance(counts, list)
                or not counts
                or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts)
            ):
                raise ValueError(f"arms.{i}.counts: expected a non-empty list of positive integers, got {counts!r}")
            if len(set(counts)) != len(counts):
                raise ValueError(f"arms.{i}.counts: repeated amounts in {counts}")
            base = {k: v for k, v in arm.items() if k != "counts"}
            for c in sorted(counts):
                out.append({**base, "name": f"{arm.get('name')}_n{c}", "count": c, "amount_of": arm.get("name")})
        return out

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
    def _arm_train_values(self) -> StudySpec:
        # checked here, not when a trial starts: `momentum: high` must fail before anything is built
        for i, arm in enumerate(self.arms):
            try:
                self.train_for(arm)
            except ValidationError as err:
                item = err.errors()[0]
                field = ".".join(str(p) for p in item["loc"])
                raise ValueError(f"arms.{i}.train.{field}: {item['msg']} (arm '{arm.name}')") from None
        return self

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
        if science.get("teachers") is None:  # a one-teacher study hashes as it did before `teachers:` existed
            science.pop("teachers", None)
            for arm in science["arms"]:
                for key in ("teachers", "teacher"):
                    if arm.get(key) is None:
                        arm.pop(key, None)
        if content:
            science["content"] = content
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def teacher_ids(self) -> list[str]:
        """The study's teachers by id; a one-teacher study's only teacher is `teacher`."""
        return [t.id for t in self.teachers] if self.teachers else ["teacher"]

    def for_teacher(self, teacher_id: str) -> StudySpec:
        """The study as one teacher sees it: that teacher as `teacher`, its arms only (crossed names kept, so runs
        and shards match the whole study's). A one-teacher study is its own view."""
        if not self.teachers:
            return self
        for entry in self.teachers:
            if entry.id == teacher_id:
                arms = [a for a in self.arms if a.teacher == teacher_id]
                return self.model_copy(update={"teacher": entry.as_teacher(), "teachers": None, "arms": arms})
        raise SpecError(f"study '{self.name}': " + did_you_mean(teacher_id, self.teacher_ids, "teacher id"))

    def view_for(self, arm: ArmSpec) -> StudySpec:
        """The one-teacher view an arm trains in (`for_teacher` of its teacher)."""
        return self.for_teacher(arm.teacher) if self.teachers and arm.teacher else self

    def arm(self, name: str) -> ArmSpec:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise SpecError(f"study '{self.name}': " + did_you_mean(name, [a.name for a in self.arms], "arm"))

    def train_for(self, arm: ArmSpec, overrides: dict[str, Any] | None = None) -> TrainSpec:
        return TrainSpec.model_validate({**self.train.model_dump(), **arm.train, **(overrides or {})})


def apply_overrides(
    spec: StudySpec,
    storage: str | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
) -> StudySpec:
    """The spec with where-it-runs settings replaced (`storage.root`, `tracking.uri`, `resources.ray_address`).

    One spec serves a laptop and a cluster: only these change between them, and none is part of the science hash,
    so the study (its MLflow experiment, its Tune experiment) keeps its identity. `None` keeps the spec's value.
    """
    update: dict[str, Any] = {}
    if storage is not None:
        update["storage"] = spec.storage.model_copy(update={"root": storage})
    if tracking_uri is not None:
        update["tracking"] = spec.tracking.model_copy(update={"uri": check_tracking_uri(tracking_uri)})
    if ray_address is not None:
        update["resources"] = spec.resources.model_copy(update={"ray_address": ray_address})
    return spec.model_copy(update=update) if update else spec


# --------------------------------------------------------------------------------------------------- loading
class DuplicateKeyError(yaml.YAMLError):
    pass


class SpecLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys (the second `search:` would silently replace the first) and
    reads `1e6` as a number (YAML 1.1 wants `1.0e+6`, so PyYAML reads `1e6` as a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise DuplicateKeyError(f"duplicate key '{key}' at lines {seen[key]} and {line} (keep one)")
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _one_line(item: Any) -> str:
    field = ".".join(str(p) for p in item["loc"])
    msg = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
    msg = msg.removeprefix("Value error, ")
    # a validator that names its own field (`arms.0.train.momentum: ...`) needs no prefix in front of it
    if not field or msg.startswith(f"{field}."):
        return msg
    return f"{field}: {msg}"


def _format_validation_error(path: Path | str, err: ValidationError) -> str:
    """One line: the file, then each wrong field with what was expected."""
    return f"{path}: " + "; ".join(_one_line(item) for item in err.errors())


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    try:
        return yaml.load(path.read_text(), Loader=SpecLoader)  # SpecLoader is a SafeLoader
    except DuplicateKeyError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None


def load_model(path: Path, model: type[M], data: Any = None) -> M:
    data = read_yaml(path) if data is None else data
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_validation_error(path, err)) from None


def parse_set(item: str) -> tuple[list[str], Any]:
    """`train.lr=0.05` -> (['train', 'lr'], 0.05): the value read as YAML, so numbers, booleans, lists and
    `null` arrive typed; the spec's schema then checks it like any value in the file."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise SpecError(f"--set {item}: expected key.path=value (e.g. --set train.lr=0.05)")
    try:
        value = yaml.load(raw, Loader=SpecLoader) if raw.strip() else ""  # a SafeLoader
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_sets(data: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The spec's raw mapping with each `--set key.path=value` applied; `arms.0.train.lr` indexes a list."""
    out = json.loads(json.dumps(data))  # a deep copy of plain YAML data
    for item in sets:
        path, value = parse_set(item)
        node: Any = out
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {item}: '{part}' is not an index of {'.'.join(path[:depth])}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise SpecError(f"--set {item}: {'.'.join(path[:depth])} is a value, not a section")
    return out


def load_study(path: Path | str, sets: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """The spec at `path`, with `--set key.path=value` overrides applied before validation (so they are typed by
    the schema and, when they change the science, part of the study's identity)."""
    path = Path(path)
    data = read_yaml(path)
    if sets:
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        data = apply_sets(data, sets)
        try:
            return StudySpec.model_validate(data)
        except ValidationError as err:
            raise SpecError(_format_validation_error(f"{path} (with --set {' '.join(sets)})", err)) from None
    return load_model(path, StudySpec, data)


def load_card(path: Path | str) -> CardSpec:
    return load_model(Path(path), CardSpec)
