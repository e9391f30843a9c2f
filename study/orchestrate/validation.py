"""Everything a study run checks before it does any work, and the plan it would follow.

`kd-study validate` and `kd-study run` (first thing) call `plan_study`: the spec, every arm's card, the arms' train
overrides, the search space, the tracking URI's scheme, the teacher's metadata and every manifest that already
exists are checked, and nothing is written. Torch and Ray are never imported here (a typo costs a second, not the
~15 s of importing them); the modules this one imports keep their own torch imports inside the functions that
need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from study import storage
from study.config import ArmSpec, CardSpec, SpecError, StudySpec, crossed_name, did_you_mean, load_card
from study.resources import bundled_dir, bundled_names, resolve_card_path
from study.teacher.meta import META, TeacherError, TeacherMeta, load_meta

TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
"""MLflow tracking URI schemes kd-study accepts (a bare path is MLflow's legacy file store)."""


@dataclass(frozen=True)
class StudyPaths:
    """Every location of a study as an absolute URI (a folder or `s3://...`), resolved once on the driver."""

    root: str
    shards: str
    tune_dir: str
    teacher: str  # a one-teacher study's (or view's) teacher; "" for a multi-teacher study: see `teachers`
    tracking_uri: str
    report_dir: str
    eval_root: str = ""
    teachers: dict[str, str] = field(default_factory=dict)  # teacher id -> checkpoint folder

    def for_teacher(self, teacher_id: str) -> StudyPaths:
        """The paths as one teacher's view of the study sees them (`StudySpec.for_teacher`)."""
        return replace(self, teacher=self.teachers[teacher_id]) if not self.teacher else self


def study_paths(spec: StudySpec, root: str | None = None) -> StudyPaths:
    """Resolve the spec's storage against `root` (or its own `storage.root`, which may be `s3://bucket/prefix`).

    Relative parts join onto the root as URIs. A relative `sqlite:///` tracking URI resolves beside a local root;
    under an S3 root it is an error, since a sqlite file cannot live in a bucket.
    """
    base = storage.resolve(root or spec.storage.root)
    uri = spec.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        relative = uri[len("sqlite:///") :]
        if storage.is_s3(base):
            raise SpecError(
                f"tracking.uri '{uri}' is a sqlite file relative to storage.root '{base}', which is on S3 where a "
                "sqlite file cannot live: give --tracking-uri (an absolute sqlite:////path/mlflow.db on this "
                "machine, or the http:// address of an MLflow server that every node reaches)"
            )
        uri = "sqlite:///" + storage.resolve(relative, base)
    if spec.teachers:
        teachers = {t.id: storage.resolve(t.uri, base) for t in spec.teachers}
        teacher = ""
    else:
        assert spec.teacher is not None
        teacher = storage.resolve(spec.teacher.uri, base)
        teachers = {"teacher": teacher}
    same = sorted({u for u in teachers.values() if list(teachers.values()).count(u) > 1})
    if same:
        raise SpecError(f"study '{spec.name}': teachers: two teachers share the checkpoint folder {same[0]} (set uri)")
    return StudyPaths(
        root=base,
        shards=storage.resolve(spec.storage.shards, base),
        tune_dir=storage.resolve(spec.storage.tune, base),
        teacher=teacher,
        tracking_uri=uri,
        report_dir=storage.resolve(f"report/{spec.name}", base),  # one folder per study sharing a root
        eval_root=storage.resolve("eval", base),  # eval splits are keyed by teacher id inside
        teachers=teachers,
    )


def total_trials(spec: StudySpec) -> int:
    """Search trials plus the final phase's reruns (top_k x seeds per arm, when the spec asks for one)."""
    final = spec.final.top_k * spec.final.seeds if spec.final is not None else 0
    return (spec.search.trials_per_arm + final) * len(spec.arms)


def check_tracking_uri(uri: str, where: str, field_name: str = "tracking.uri") -> None:
    """A tracking URI MLflow can open: a known scheme (`sqllite:///` is a typo, not a store)."""
    if "://" not in uri:
        return  # a path: MLflow's file store
    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    if scheme not in TRACKING_SCHEMES:
        raise SpecError(f"{where}: {field_name}: '{uri}': " + did_you_mean(scheme, TRACKING_SCHEMES, "scheme"))


def check_models(spec: StudySpec, where: str) -> None:
    """The student's and the teacher's archs are models the registry builds (zoo or torchvision)."""
    from study.models.names import IMPORTED_FORMATS, ZOO_MODELS, is_known_arch

    archs = [("student.arch", spec.student.arch)]
    if spec.teachers:
        archs += [(f"teachers.{i}.arch", t.arch) for i, t in enumerate(spec.teachers)]
    else:
        assert spec.teacher is not None
        archs.append(("teacher.arch", spec.teacher.arch))
    for field_name, arch in archs:
        if field_name != "student.arch" and arch in IMPORTED_FORMATS:
            continue  # an imported program needs no registry entry
        if not is_known_arch(arch):
            message = did_you_mean(arch, ZOO_MODELS, "model")
            raise SpecError(f"{where}: {field_name}: {message}, or a torchvision.models classification model")


def resolve_card(ref: str, base: Path | None, where: str) -> CardSpec:
    """A card by bundled name or by path (relative to `base`, the spec's folder), its mixture components read."""
    from study.data.mixture import resolve_mixture

    path = resolve_card_path(ref, base)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        if Path(ref).suffix not in (".yaml", ".yml") and path.parent == bundled_dir("datasets"):
            raise SpecError(f"{where}: " + did_you_mean(ref, bundled_names("datasets"), "card"))
        raise SpecError(f"{where}: card file {path} not found")
    return resolve_mixture(load_card(path), path.parent)


def card_for_teacher(card: CardSpec, teacher_id: str) -> CardSpec:
    """`card` as one teacher of a multi-teacher study builds it. A card whose build depends on the teacher (a
    teacher-filtered selection, noise matched to the teacher data's statistics) is renamed `<card>@<teacher>`, so
    that each teacher's build has a folder of its own; in a mixture, so is each component that depends on the
    teacher, while the other components stay shared between teachers. Other cards are returned as they are."""
    from study.data.mixture import depends_on_teacher

    if not depends_on_teacher(card):
        return card
    update: dict[str, object] = {"name": crossed_name(card.name, teacher_id)}
    if card.kind == "mixture":
        components = []
        for component in card.components or []:
            part = component.resolved
            if part is not None and depends_on_teacher(part):
                part = part.model_copy(update={"name": crossed_name(part.name, teacher_id)})
                component = component.model_copy(update={"resolved": part})
            components.append(component)
        update["components"] = components
    return card.model_copy(update=update)


def load_cards(spec: StudySpec, cards_dir: str | None = None, where: str | None = None) -> dict[str, CardSpec]:
    """Every arm's card, resolved once here (relative paths against `cards_dir`, the spec file's folder) and
    validated, its generator's params checked, before anything runs; trials receive these, never paths."""
    from study.data.generators.registry import create_generator
    from study.data.mixture import component_cards

    where = where or f"study '{spec.name}'"
    cards = {}
    for i, arm in enumerate(spec.arms):
        card = resolve_card(arm.card, Path(cards_dir) if cards_dir else None, f"{where}: arms.{i}.card")
        for part in component_cards(card) if card.kind == "mixture" else [card]:
            if part.kind == "generated":
                assert part.generator is not None
                try:
                    create_generator(part.generator, part.params, reference_stats=([0.5], [0.25]))
                except ValueError as err:
                    raise SpecError(f"card '{part.name}' (arm '{arm.name}'): {err}") from None
        if arm.teacher is not None:
            card = card_for_teacher(card, arm.teacher)
        if arm.count and card.count and arm.count > card.count:
            field_name = f"counts of arm '{arm.amount_of}'" if arm.amount_of else "count"
            raise SpecError(
                f"{where}: arm '{arm.name}': {field_name}: {arm.count} exceeds card '{card.name}' count {card.count}"
            )
        cards[arm.name] = card
    return cards


@dataclass(frozen=True)
class TeacherPlan:
    uri: str
    arch: str
    dataset: str
    action: str  # "present", "train" or "import"
    meta: TeacherMeta | None = None


def check_teacher_meta(spec: StudySpec, meta: TeacherMeta, teacher_uri: str) -> None:
    """The teacher found at `teacher_uri` is the one the spec names (only the fields the spec sets), and it can serve
    the search metric. Used by `validate` before any work and by the pipeline after training or importing it."""
    t = spec.teacher
    for name, made, wanted in (("arch", meta.arch, t.arch), ("dataset", meta.dataset, t.dataset)):
        if name in t.model_fields_set and made != wanted:
            raise SpecError(
                f"{teacher_uri}: the teacher's {name} is '{made}' (meta.json), the spec's teacher.{name} is "
                f"'{wanted}'; fix the spec or point teacher.uri elsewhere"
            )
    if spec.search.metric == "val_acc" and not meta.has_eval_data:
        raise SpecError(
            f"{teacher_uri}: teacher {meta.teacher_id} has no evaluation data, and search.metric 'val_acc' needs "
            "its val split: import it with --eval-dataset/--eval-root, or set search.metric: agreement"
        )


def check_teacher(spec: StudySpec, paths: StudyPaths, where: str) -> TeacherPlan:
    """The teacher as `run` will find it: present (its meta.json agrees with the spec), or trained or imported
    because the spec says how; missing with no way to make it is an error naming the path."""
    t = spec.teacher
    if not storage.exists(storage.join(paths.teacher, META)):
        if t.weights is not None:
            weights = storage.resolve(t.weights, paths.root)
            if not storage.exists(weights):
                raise SpecError(f"{where}: teacher.weights: {weights} not found")
            return TeacherPlan(paths.teacher, t.arch, t.dataset, "import")
        if t.train:
            return TeacherPlan(paths.teacher, t.arch, t.dataset, "train")
    try:
        meta = load_meta(paths.teacher)
    except TeacherError as err:
        raise SpecError(
            f"{err} ({where}: teacher.uri is '{t.uri}'; set teacher.train: true to train it, "
            "or teacher.weights to import one)"
        ) from None
    check_teacher_meta(spec, meta, paths.teacher)
    return TeacherPlan(paths.teacher, meta.arch, meta.dataset, "present", meta)


@dataclass(frozen=True)
class SurrogatePlan:
    card: str
    kind: str
    uri: str
    action: str  # "reuse", "build" or "rebuild" (the card changed since the shards were built)
    images: int | None  # built, or the card's count; None: all of a real source, known once built


def check_surrogates(
    spec: StudySpec, cards: dict[str, CardSpec], paths: StudyPaths, where: str
) -> dict[str, SurrogatePlan]:
    """Per card, whether `run` reuses, builds or rebuilds its shards; a manifest that exists must be readable and
    hold the images each arm asks for."""
    from study.data import shards

    plans: dict[str, SurrogatePlan] = {}
    for i, arm in enumerate(spec.arms):
        card = cards[arm.name]
        if card.name not in plans:
            root = storage.join(paths.shards, card.name)
            action, images = "build", card.count
            if storage.exists(storage.join(root, shards.MANIFEST)):
                manifest = shards.read_manifest(root)
                same = manifest.card == card.model_dump(mode="json")
                action, images = ("reuse", manifest.count) if same else ("rebuild", card.count)
            plans[card.name] = SurrogatePlan(card.name, card.kind, root, action, images)
        built = plans[card.name]
        if built.action == "reuse" and arm.count and built.images is not None and arm.count > built.images:
            field_name = f"arms.{i}.count" if not arm.amount_of else f"counts of arm '{arm.amount_of}'"
            raise SpecError(
                f"{where}: {field_name}: arm '{arm.name}' wants {arm.count} images, {built.uri} holds {built.images}"
            )
    return plans


@dataclass(frozen=True)
class ArmPlan:
    arm: ArmSpec
    card: CardSpec
    images: int | None  # images the arm reads; None: all of its surrogate, known once built
    images_per_trial: int | None


@dataclass
class StudyPlan:
    """What `run` would do, checked: the paths, the teacher, the surrogates and the trials."""

    spec: StudySpec
    where: str
    paths: StudyPaths
    teachers: dict[str, TeacherPlan]  # by teacher id (`teacher` in a one-teacher study)
    cards: dict[str, CardSpec]
    surrogates: dict[str, SurrogatePlan]
    arms: list[ArmPlan] = field(default_factory=list)

    @property
    def search_trials(self) -> int:
        return self.spec.search.trials_per_arm * len(self.spec.arms)

    @property
    def final_trials(self) -> int:
        return total_trials(self.spec) - self.search_trials

    @property
    def total_trials(self) -> int:
        return total_trials(self.spec)


def plan_study(
    spec: StudySpec,
    where: str,
    cards_dir: str | None = None,
    root: str | None = None,
    tracking_field: str = "tracking.uri",
) -> StudyPlan:
    """Check everything `run` checks before work and return its plan; raises SpecError (a user error: one line
    naming the file and the field). Writes nothing."""
    check_models(spec, where)
    check_tracking_uri(spec.tracking.uri, where, tracking_field)
    paths = study_paths(spec, root)
    cards = load_cards(spec, cards_dir, where)
    teachers = {tid: check_teacher(spec.for_teacher(tid), paths.for_teacher(tid), where) for tid in spec.teacher_ids}
    surrogates = check_surrogates(spec, cards, paths, where)
    arms = []
    for arm in spec.arms:
        built = surrogates[cards[arm.name].name]
        images = arm.count or built.images
        if spec.budget.mode == "images":
            per_trial: int | None = spec.budget.images
        else:
            per_trial = spec.budget.images_for(images)[0] if images else None
        arms.append(ArmPlan(arm, cards[arm.name], images, per_trial))
    return StudyPlan(spec, where, paths, teachers, cards, surrogates, arms)
