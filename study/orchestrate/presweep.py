"""Pre-sweep work on a Ray cluster: surrogate builds, offline perturbation and criteria passes as Ray tasks.

Run in the driver, a study on a cluster would build, filter, attack and measure on the head's CPU, one surrogate
after another, while the workers idle. On a cluster (`cluster_address`) each surrogate's build (with its
teacher-filtered selection), each offline arm's perturbation (once its source is built) and each arm's criteria pass
run as Ray tasks with a trial's resources (`resources.cpu`, `resources.gpu`: a task given a GPU fails without CUDA
instead of running on the CPU), all submitted at once: surrogates build side by side across the cluster, and the
shards of one surrogate and the attacked blocks of a perturbation fan out as tasks of their own. The driver gathers
results as they finish (`ray.wait`) and keeps its progress output. A local study keeps its process pool and
in-process passes (`study.orchestrate.pipeline`).

Where each piece ran is recorded in the surrogate's manifest (`built_on`) and as tags of the arm's parent run
(`kd_study.node.build`, `kd_study.node.criteria`). An arm is measured on the node that built its surrogate while that
node is alive (a soft affinity): the worker there has the teacher loaded already.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from study.config import ArmSpec, CardSpec, PerturbationSpec, StudySpec
from study.criteria.measures import FeatureMoments
from study.criteria.populations import ArmCriteria, measure_arm, val_moments
from study.data.build import build_surrogate, reusable_build
from study.data.build_plan import BuildResult
from study.data.mixture import component_cards, uses_teacher
from study.data.shards import Manifest, WorkRecord
from study.data.work_records import record_since, this_node
from study.device import pick_device, require_cuda
from study.distill.trial import surrogate_name
from study.orchestrate.progress import ProgressSink
from study.orchestrate.sweep import connect_ray
from study.teacher.checkpoint import Teacher, TeacherMeta, load_teacher

log = logging.getLogger(__name__)
T = TypeVar("T")

NODE_BUILD, HOST_BUILD = "kd_study.node.build", "kd_study.host.build"
NODE_CRITERIA, HOST_CRITERIA = "kd_study.node.criteria", "kd_study.host.criteria"
_TEACHERS: dict[str, Teacher] = {}


class PresweepError(RuntimeError):
    """A pre-sweep task failed; the message names its surrogate or arm and the node it ran on."""


def cluster_address(spec: StudySpec) -> str | None:
    """The Ray cluster the study runs on: `resources.ray_address`, else the one a Ray job's driver runs in
    (`RAY_ADDRESS`); None for a local study."""
    return spec.resources.ray_address or os.environ.get("RAY_ADDRESS") or None


def offline_surrogates(
    spec: StudySpec, cards: dict[str, CardSpec], teacher_id: str
) -> dict[str, tuple[ArmSpec, CardSpec]]:
    """The derived surrogate of each offline-perturbed arm, by name, with the first arm (and its card) that reads
    it: arms that share a card and an attack share one derived surrogate, built once."""
    derived: dict[str, tuple[ArmSpec, CardSpec]] = {}
    for arm in spec.arms:
        if arm.perturbation.mode == "offline":
            card = cards[arm.name]
            derived.setdefault(surrogate_name(spec, arm, card, teacher_id), (arm, card))
    return derived


def built_by(manifest: Manifest) -> WorkRecord | None:
    """Where a surrogate was made: its perturbation for a derived one, else its build (None: not on a cluster)."""
    pieces = manifest.built_on or {}
    return pieces.get("perturbation") or pieces.get("build")


def node_tags(build: WorkRecord | None, criteria: WorkRecord | None) -> dict[str, str]:
    """The arm run's tags naming the nodes (and hosts) that built its surrogate and measured its criteria."""
    tags = {}
    for (node_key, host_key), record in (((NODE_BUILD, HOST_BUILD), build), ((NODE_CRITERIA, HOST_CRITERIA), criteria)):
        if record is not None:
            tags[node_key], tags[host_key] = ",".join(record.nodes), ",".join(record.hosts)
    return tags


# ------------------------------------------------------------------------------------------ tasks (on workers)
def _teacher(uri: str) -> Teacher:
    """The teacher, loaded once per worker process: later tasks on the same worker find it here."""
    if uri not in _TEACHERS:
        _TEACHERS[uri] = load_teacher(uri, pick_device())
    return _TEACHERS[uri]


def _named(what: str, gpus: float, work: Callable[[], T]) -> T:
    """Run `work` for `what` on this worker; a failure names `what` and this node."""
    try:
        require_cuda(gpus, what)
        return work()
    except Exception as err:
        node, host = this_node()
        raise PresweepError(f"{what} failed on node {node} ({host}): {type(err).__name__}: {err}") from err


def build_task(
    card_json: str, shards_root: str, meta: TeacherMeta, teacher_uri: str, gpus: float, *after: Any
) -> BuildResult:
    """One surrogate's build (its selection included), recording where its pieces ran. `after`: builds it waits
    for (a mixture's components), resolved by Ray before this starts."""
    card = CardSpec.model_validate_json(card_json)

    def build() -> BuildResult:
        return build_surrogate(
            card,
            shards_root,
            reference_stats=(meta.mean, meta.std),
            teacher_id=meta.teacher_id,
            teacher=_teacher(teacher_uri) if uses_teacher(card) else None,
            ray_address="auto",  # this task's runtime: a build of several shards fans them out
            replace_stale=True,
            record_work=True,
        )

    return _named(f"surrogate '{card.name}' build", gpus, build)


def perturb_task(
    source: BuildResult,
    teacher_uri: str,
    shards_root: str,
    spec_json: str,
    seed: int,
    name: str,
    block_resources: dict[str, float],
) -> BuildResult:
    """The derived surrogate `name` of `source` (a finished build, resolved by Ray); its blocks run as tasks with
    `block_resources`. This task holds no GPU: its blocks need them."""
    from study.data.perturb import build_perturbed

    spec = PerturbationSpec.model_validate_json(spec_json)

    def perturb() -> BuildResult:
        return build_perturbed(
            source.root, teacher_uri, shards_root, spec, seed=seed, name=name, ray_address="auto",
            block_resources=block_resources, record_work=True,
        )  # fmt: skip

    return _named(f"perturbed surrogate '{name}'", 0.0, perturb)


def reference_task(teacher_uri: str, eval_root: str | None, gpus: float) -> FeatureMoments | None:
    """The teacher's feature moments on its val split, the Fréchet reference every arm's criteria share."""
    return _named(
        "criteria reference (teacher on its val split)", gpus, lambda: val_moments(_teacher(teacher_uri), eval_root)
    )


def criteria_task(
    spec_json: str,
    arm_name: str,
    card_json: str,
    build: BuildResult,
    teacher_uri: str,
    reference: FeatureMoments | None,
    gpus: float,
) -> tuple[ArmCriteria, WorkRecord]:
    """One arm's criteria pass (raw pool, built set and trained batches: `populations.measure_arm`), and where it
    ran."""
    spec = StudySpec.model_validate_json(spec_json)
    card = CardSpec.model_validate_json(card_json)
    started = time.time()

    def measure() -> ArmCriteria:
        return measure_arm(spec, spec.arm(arm_name), card, build, _teacher(teacher_uri), reference)

    found = _named(f"criteria of arm '{arm_name}'", gpus, measure)
    return found, record_since(started)


# ------------------------------------------------------------------------------------------ the driver's side
def _gather(pending: dict[Any, str], on_done: Callable[[str, Any], None]) -> None:
    """Wait for every task in `pending` (ref -> what it is), calling `on_done(what, result)` as each finishes."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        what = pending.pop(ready[0])
        try:
            value = ray.get(ready[0])
        except RayTaskError as err:
            cause = err.cause
            raise PresweepError(str(cause) if isinstance(cause, PresweepError) else f"{what}: {cause}") from None
        except RayError as err:  # its worker or node died
            raise PresweepError(f"{what}: {err}") from None
        on_done(what, value)


def _resources(spec: StudySpec, gpu: bool = True) -> dict[str, float]:
    return {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu if gpu else 0.0}


def build_on_cluster(
    spec: StudySpec,
    cards: dict[str, CardSpec],
    shards_root: str,
    teacher_uri: str,
    meta: TeacherMeta,
    progress: ProgressSink,
    built: dict[str, BuildResult] | None = None,
) -> dict[str, BuildResult]:
    """Every surrogate the arms read, keyed by name (`surrogate_name`): what is reusable as it is, the rest built as
    Ray tasks submitted at once (plain cards side by side, each mixture after its components and the mixture
    before it, each perturbation after its source). `built`: cards another teacher of the study already built
    (shared ones: `load_cards` renamed those that depend on the teacher), taken as they are."""
    import ray

    connect_ray(spec)
    results: dict[str, BuildResult] = {}
    refs: dict[str, Any] = {}
    pending: dict[Any, str] = {}
    task = ray.remote(build_task)
    unique = {c.name: c for c in cards.values()}
    last_mixture: list[Any] = []
    for card in sorted(unique.values(), key=lambda c: c.kind == "mixture"):  # stable: spec order within each kind
        if built and card.name in built:
            results[card.name] = built[card.name]
            continue
        progress.task(f"build:{card.name}", f"surrogate {card.name}", None)
        reused = reusable_build(card, shards_root, reference_stats=(meta.mean, meta.std), teacher_id=meta.teacher_id)
        if reused is not None:
            results[card.name] = reused
            progress.update(f"build:{card.name}", len(reused.manifest.shards), len(reused.manifest.shards))
            continue
        after = []
        if card.kind == "mixture":
            after = [refs[c.name] for c in component_cards(card) if c.name in refs] + last_mixture
        options = {**_resources(spec), "name": f"build {card.name}"}
        ref = task.options(**options).remote(
            card.model_dump_json(), shards_root, meta, teacher_uri, spec.resources.gpu, *after
        )  # type: ignore[call-arg]
        if card.kind == "mixture":
            last_mixture = [ref]
        refs[card.name] = ref
        pending[ref] = card.name
    perturb = ray.remote(perturb_task)
    for name, (arm, card) in offline_surrogates(spec, cards, meta.teacher_id).items():
        progress.task(f"perturb:{name}", f"perturbed {name}", None)
        source = refs[card.name] if card.name in refs else results[card.name]
        options = {**_resources(spec, gpu=False), "name": f"perturb {name}"}
        ref = perturb.options(**options).remote(  # type: ignore[call-arg]
            source, teacher_uri, shards_root, arm.perturbation.model_dump_json(), spec.seed, name, _resources(spec)
        )
        refs[name] = ref
        pending[ref] = name

    def done(name: str, build: BuildResult) -> None:
        results[name] = build
        record = built_by(build.manifest)
        where = f" on {','.join(record.nodes)} ({','.join(record.hosts)})" if record else ""
        log.info("surrogate %s %s%s", name, "reused" if build.reused else "built", where)
        key = f"perturb:{name}" if build.manifest.kind == "derived" else f"build:{name}"
        progress.update(key, len(build.manifest.shards), len(build.manifest.shards))

    _gather(pending, done)
    return results


def measure_on_cluster(
    spec: StudySpec,
    arms: list[tuple[ArmSpec, CardSpec, BuildResult]],
    teacher_uri: str,
    eval_root: str | None,
    on_measured: Callable[[ArmSpec, ArmCriteria, WorkRecord], None],
) -> None:
    """The criteria of `arms` as Ray tasks, submitted at once after one reference task; `on_measured` is called in
    the driver as each finishes (so nothing measured is lost to a later failure)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not arms:
        return
    connect_ray(spec)
    reference = ray.remote(reference_task).options(**_resources(spec), name="criteria reference")
    reference_ref = reference.remote(teacher_uri, eval_root, spec.resources.gpu)  # type: ignore[call-arg]
    task = ray.remote(criteria_task)
    spec_json = spec.model_dump_json()
    pending: dict[Any, str] = {}
    by_name = {arm.name: arm for arm, _, _ in arms}
    for arm, card, build in arms:
        options: dict[str, Any] = {**_resources(spec), "name": f"criteria {arm.name}"}
        record = built_by(build.manifest)
        if record is not None and record.nodes:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(record.nodes[0], soft=True)
        ref = task.options(**options).remote(  # type: ignore[call-arg]
            spec_json, arm.name, card.model_dump_json(), build, teacher_uri, reference_ref, spec.resources.gpu
        )
        pending[ref] = arm.name

    def done(name: str, value: tuple[ArmCriteria, WorkRecord]) -> None:
        found, record = value
        log.info("criteria of arm %s measured on %s (%s)", name, ",".join(record.nodes), ",".join(record.hosts))
        on_measured(by_name[name], found, record)

    _gather(pending, done)
