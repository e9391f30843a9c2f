"""One KD trial: a student distilled from the teacher on one surrogate, with or without Ray Tune.

The loop follows Frank & Davis (CVPR 2025): the teacher (eval mode, no grad) labels each augmented, mixed-up batch
online; the student matches it with the KD loss alone; SGD with a cosine schedule over a budget counted in images
seen, so arms of different sizes get equal compute. Every `report_every` images the student is evaluated on the
teacher's original val and test splits, so Tune can early-stop it, and a checkpoint is written when
`resources.checkpoint_s` has passed since the last one, so Tune can pause and resume it.
A resumed trial replays its data stream up to the checkpoint and continues with the saved RNG state, so it
matches an uninterrupted run.

Adversarial boundary perturbation (the arm's `perturbation`, `study.teacher.attack`): `offline` arms read the
derived surrogate `study.data.perturb` built for this teacher (kd-study's own variant: attacked once, augmented at
training time). `online` arms attack every batch. Order `after_mixup` (the default) is the authors' (their training
loop: augmentation, mixup, the bold-driver attack, the deeper attack, KD): the batch is augmented and mixed up, the
attack runs on the mixed images in float pixel space (no uint8 rounding, which could undo a crossing smaller than
1/255), and the student learns from the teacher's outputs on the attacked images, so boundary samples reach the
student as the attack left them. Order `before_augment` attacks the clean uint8 batch and augments the result.
A shader surrogate's images are attacked toward their stored label (`target: pseudo_label`): the teacher's class
of the clean, un-mixed image, computed on the batch before augmentation (what the teacher's balanced selection
labelled it), so position i of the mixed batch targets the label of the image mixup kept at weight lambda.

`online_batch: boundary_only` (the default, the authors'): every image of the batch of B is attacked and the
student trains on the 4 images of each success alone, a batch of 4 x successes (up to 4B; a batch whose attacks
all fail trains nothing). The budget counts the images trained on: each step adds its own batch size to
`images_seen`, the last batch is cut to land on the budget exactly, the cosine schedule follows images seen
rather than steps, and the stream position (`batches`) is kept apart from the optimizer step. `equal_compute`
(kd-study's earlier way) keeps the batch at B: the first `ceil(fraction * B / 4)` images are attacked, the 4 images
of each success take the front of the batch, and the un-attacked images, then the failed ones, fill it to B.
`attack_success` (successes / attacked images over the report interval) joins the metrics.

The stream and the per-batch pipeline live in `study.distill.batches.TrainingBatches`, which `KDTrial` extends: the
`trained` criteria population (`study.criteria.trained`) draws its batches from the same class.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from study import storage
from study.config import ArmSpec, CardSpec, StudySpec
from study.data import shards
from study.data.eval_splits import eval_split, read_eval_split
from study.data.perturb import derived_name
from study.data.shards.reader import ShardStream, to_teacher_input
from study.device import autocast_dtype, pick_device, require_cuda
from study.distill.batches import TrainingBatches
from study.distill.loss import kd_loss, onehot_kd_loss
from study.distill.temperature import kd_temperature
from study.distill.trial_paths import TrialPaths
from study.models import create_model
from study.teacher.checkpoint import load_teacher

log = logging.getLogger(__name__)

STATE_FILE = "trial_state.pt"
MAX_EMPTY_BATCHES = 100
"""Consecutive `boundary_only` batches without one successful attack after which the trial gives up."""
Reporter = Callable[[dict[str, float], dict[str, Any]], None]


class TrialDivergedError(FloatingPointError):
    """The KD loss became NaN or infinite, or no attack succeeded for `MAX_EMPTY_BATCHES` batches of a
    `boundary_only` arm: the trial stops rather than train on garbage or spin without training."""


def check_manifest_card(root: str, manifest: shards.Manifest, card: CardSpec) -> None:
    """The shards must come from the card the driver resolved; else the study would mix two surrogates."""
    resolved = card.model_dump(mode="json")
    if manifest.card != resolved:
        raise shards.ShardError(
            f"{root}/{shards.MANIFEST}: shards were built from card {json.dumps(manifest.card, sort_keys=True)}, "
            f"the driver resolved card '{card.name}' as {json.dumps(resolved, sort_keys=True)} (rebuild the shards)"
        )


def surrogate_name(spec: StudySpec, arm: ArmSpec, card: CardSpec, teacher_id: str) -> str:
    """The surrogate an arm reads: its card's, or for an offline-perturbed arm the derived one (built with the
    study's seed, so every trial and seed of the arm shares one attack pass)."""
    if arm.perturbation.mode == "offline":
        return derived_name(card.name, arm.perturbation, teacher_id, spec.seed)
    return card.name


class KDTrial(TrainingBatches):
    """A trial's state and its training loop; `run` drives it and calls `report` at each report point. Its batches
    come from `TrainingBatches` (the stream and the pipeline the `trained` criteria population shares)."""

    def __init__(
        self,
        spec: StudySpec,
        arm: ArmSpec,
        paths: TrialPaths,
        overrides: dict[str, Any] | None = None,
        seed: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        spec, paths = spec.view_for(arm), paths.for_arm(arm)  # a multi-teacher study: the arm's own teacher
        self.paths = paths
        train = spec.train_for(arm, overrides)
        seed = spec.seed if seed is None else seed
        device = device or pick_device()
        card = paths.card(arm)
        teacher = load_teacher(paths.teacher, device)
        meta = teacher.meta
        surrogate = surrogate_name(spec, arm, card, meta.teacher_id)
        root = f"{paths.shards_root.rstrip('/')}/{surrogate}"
        manifest = shards.read_manifest(root)
        shards.check_present(root, manifest)
        if arm.perturbation.mode != "offline":  # a derived surrogate's manifest holds its attack, not the card
            check_manifest_card(root, manifest, card)
        cache = paths.cache.open() if paths.cache else None
        super().__init__(spec, arm, train, card, teacher, root, manifest, seed, device, cache)
        torch.manual_seed(self.seed)
        self.student = create_model(spec.student.arch, meta.num_classes, meta.channels).to(self.device)
        if self.device.type == "cuda":
            self.student = self.student.to(memory_format=torch.channels_last)
            self.teacher.model = self.teacher.model.to(memory_format=torch.channels_last)
        # compiled modules share parameters with the originals, so state dicts and optimizers are unaffected
        self._student_fwd = torch.compile(self.student) if spec.resources.compile else self.student
        self._teacher_fwd = torch.compile(self.teacher.model) if spec.resources.compile else self.teacher.model
        t = self.train
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
        )
        # equal images seen by default; `budget.mode: epochs` scales the budget with the arm's own amount
        arm_images = min(arm.count or manifest.count, manifest.count)
        self.budget_images, self.report_every = spec.budget.images_for(arm_images)
        self.total_steps = math.ceil(self.budget_images / t.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_steps, eta_min=t.lr_min
        )
        # the paper's temperatures: 20 on synthetic images and for fine-grained teachers, 2 otherwise
        self.temperature_choice = kd_temperature(t, self.card, meta, spec.teacher)
        self.temperature = self.temperature_choice.value
        augment = self.augment.config
        # what this trial trains with, every default resolved (MLflow params `recipe.*`, filterable in the UI)
        self.recipe: dict[str, Any] = {
            **t.model_dump(exclude={"temperature", "randaugment_ops", "flip"}),
            "temperature": self.temperature,
            "temperature_rule": self.temperature_choice.rule,
            "randaugment_ops": augment.randaugment_ops,
            "flip": augment.flip,
            "elastic_p": augment.elastic_p,
            "invert_p": augment.invert_p,
            "labels": arm.labels,
            "perturbation": arm.perturbation.mode,
            **(
                {f"perturbation.{k}": v for k, v in arm.perturbation.model_dump().items() if k != "mode"}
                if arm.perturbation.mode != "none"
                else {}
            ),
            "surrogate": surrogate,
            "budget_images": self.budget_images,
            "seed": self.seed,
        }
        if self.attack is not None:
            self.recipe["attack_target"] = "pseudo_label" if self.stored_label_targets else "uniform_other"
        self.step = 0  # optimizer steps
        self.batches = 0  # batches drawn from the stream (a boundary_only batch whose attacks all fail is no step)
        self.images_seen = 0  # images trained on, counted per batch (a small surrogate's batches repeat images)
        self.amp_dtype = autocast_dtype(self.device, spec.resources.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.val = self._eval_split(meta.val_split) if meta.has_eval_data else None
        self.test = self._eval_split(meta.test_split) if meta.has_eval_data else None
        self.test_teacher_pred = self.predict(self.teacher.model, self.test[0]) if self.test is not None else None
        self.heldout_teacher_pred = self.predict(self.teacher.model, self.heldout) if self.heldout is not None else None

    def _eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) host images and labels of an eval split: from the study's eval shards, which travel to
        every node, else from the teacher's dataset at its local path."""
        meta = self.teacher.meta
        if self.paths.eval_root is None:
            return eval_split(meta, split)
        images, labels = read_eval_split(self.paths.eval_root, meta.teacher_id, split)
        # eval data need not have the teacher's channels (grey digits for an RGB teacher)
        x = to_teacher_input(torch.from_numpy(images), meta.channels, meta.image_size)
        return x, torch.from_numpy(labels).long()

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "batches": self.batches,
            "images_seen": self.images_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.batches = int(state.get("batches", self.step))
        self.images_seen = int(state.get("images_seen", self.step * self.train.batch_size))

    def save(self, directory: Path) -> None:
        torch.save(self.state_dict(), directory / STATE_FILE)

    def restore(self, directory: Path) -> None:
        self.load_state_dict(torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True))

    # ------------------------------------------------------------------------------------------ loop
    def evaluate(self) -> dict[str, float]:
        """`val_acc`, `test_acc` and `teacher_agreement` (on test) when the teacher has eval data; `agreement` on
        the arm's held-out surrogate images when the search uses it."""
        metrics = {}
        if self.val is not None and self.test is not None:
            test_pred = self.predict(self.student, self.test[0])
            metrics = {
                "val_acc": (self.predict(self.student, self.val[0]) == self.val[1]).float().mean().item(),
                "test_acc": (test_pred == self.test[1]).float().mean().item(),
                "teacher_agreement": (test_pred == self.test_teacher_pred).float().mean().item(),
            }
        if self.heldout is not None:
            agree = self.predict(self.student, self.heldout) == self.heldout_teacher_pred
            metrics["agreement"] = agree.float().mean().item()
        return metrics

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)):
            with torch.no_grad():
                teacher_logits = self._teacher_fwd(x)
            student_logits = self._student_fwd(x)
        if self.arm.labels == "onehot":
            return onehot_kd_loss(student_logits, teacher_logits)
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def finished(self) -> bool:
        if self.boundary_batches:
            return self.images_seen >= self.budget_images
        return self.step >= self.total_steps

    def set_images_seen_lr(self) -> None:
        """Cosine from `lr` to `lr_min` over the images seen: a boundary_only step's batch size varies, so a
        schedule over steps would decay at a pace set by the attack's success rate."""
        t = self.train
        done = min(self.images_seen / self.budget_images, 1.0)
        lr = t.lr_min + (t.lr - t.lr_min) * (1.0 + math.cos(math.pi * done)) / 2.0
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def run(self, report: Reporter) -> dict[str, float]:
        """Train to the budget, calling `report(metrics, {'trial': self})` at every report point."""
        budget, every = self.budget_images, self.report_every
        batches = self.source_batches()
        for _ in range(self.batches):  # replay the deterministic stream up to a restored checkpoint
            next(batches)
        self.student.train()
        loss_sum, loss_n, t0, seen0 = 0.0, 0, time.perf_counter(), self.images_seen
        metrics: dict[str, float] = {}
        empty = 0
        while not self.finished():
            x = self.make_batch(next(batches).to(self.device, non_blocking=True))
            self.batches += 1
            if self.boundary_batches:
                x = x[: budget - self.images_seen]  # the last batch lands on the budget exactly
                if len(x) == 0:
                    empty += 1
                    if empty >= MAX_EMPTY_BATCHES:
                        raise TrialDivergedError(
                            f"arm '{self.arm.name}': no attack succeeded in {empty} batches in a row "
                            f"after {self.images_seen} images (online_batch: boundary_only trains on none)"
                        )
                    continue
                empty = 0
                self.set_images_seen_lr()
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self._loss(x)
            loss_value = loss.item()  # the step's one host sync: the divergence check and the running mean
            if not math.isfinite(loss_value):
                raise TrialDivergedError(
                    f"arm '{self.arm.name}': KD loss is {loss_value} after {self.images_seen} images "
                    f"(lr={self.train.lr}, T={self.temperature})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if not self.boundary_batches:
                self.scheduler.step()
            self.step += 1
            self.images_seen += len(x)
            loss_sum += loss_value
            loss_n += 1
            # a batch of up to 4B images can pass several report points: one report each, so every arm reports
            # `budget.reports` times (the early-stopping rungs count reports)
            passed = self.images_seen // every - (self.images_seen - len(x)) // every
            if passed or self.finished():
                elapsed = time.perf_counter() - t0
                metrics = {
                    **self.evaluate(),
                    "train_loss": loss_sum / max(loss_n, 1),
                    "images_seen": float(min(self.images_seen, budget)),
                    "budget_images": float(budget),
                    "images_per_s": (self.images_seen - seen0) / max(elapsed, 1e-9),
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                if self.attack is not None:
                    metrics["attack_success"] = self.attack_counts[0] / max(self.attack_counts[1], 1)
                    self.attack_counts = [0, 0]
                self.student.train()
                for point in range(max(passed, 1) - 1, 0, -1):  # the earlier points a large batch passed
                    report(
                        {**metrics, "images_seen": float((self.images_seen // every - point) * every)}, {"trial": self}
                    )
                report(metrics, {"trial": self})
                loss_sum, loss_n, t0, seen0 = 0.0, 0, time.perf_counter(), self.images_seen
        return metrics


# ---------------------------------------------------------------------------------------------- Ray Tune
class TrialPlacement:
    """Where a trial runs and what it read from S3, reported with its metrics (the MLflow run's `node_id` tag and
    `s3_bytes_read` metric): on a cluster they show which node ran it and that its data came from the bucket.

    `s3_bytes_read` counts the trial's reads since it (or its resumption) started: this process's (eval splits,
    and shards when the trial reads them itself) plus those of its DataLoader worker processes
    (`resources.loader_workers` > 0), which tally into shared memory on the stream (`ShardStream.worker_s3_bytes`).
    """

    def __init__(self) -> None:
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()
        self.start = storage.s3_counters()["bytes_read"]

    def result(self, stream: ShardStream) -> dict[str, Any]:
        own = storage.s3_counters()["bytes_read"] - self.start
        return {"node_id": self.node_id, "s3_bytes_read": float(own + stream.worker_s3_bytes())}


def tune_trainable(config: dict[str, Any], spec_json: str, paths: TrialPaths) -> None:
    """Function trainable: `config` holds `arm`, `seed` and the searched hyperparameters."""
    from ray import tune

    spec = StudySpec.model_validate_json(spec_json)
    torch.set_num_threads(spec.resources.threads_per_trial)
    require_cuda(spec.resources.gpu)  # a trial given a GPU it cannot use fails loudly instead of crawling on CPU
    placement = TrialPlacement()  # before the trial reads its eval splits and shards
    overrides = {k: v for k, v in config.items() if k not in ("arm", "seed", "phase")}
    trial = KDTrial(spec, spec.arm(config["arm"]), paths, overrides, seed=int(config.get("seed", spec.seed)))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trial.restore(Path(directory))

    last_checkpoint = time.monotonic()

    def report(metrics: dict[str, float], _: dict[str, Any]) -> None:
        # a checkpoint every `checkpoint_s`, not every report: Tune forces an experiment-state sync whenever a
        # trial has made `num_to_keep` checkpoints since the last one, so per-report checkpoints of many trials
        # would force a sync per report (the sweep keeps 2 checkpoints per trial)
        nonlocal last_checkpoint
        recipe = {f"recipe.{k}": v for k, v in trial.recipe.items()}
        result = {**metrics, **placement.result(trial.stream), **recipe}
        if time.monotonic() - last_checkpoint < spec.resources.checkpoint_s:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory(prefix="kd-ckpt-") as directory:
            trial.save(Path(directory))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
        last_checkpoint = time.monotonic()

    try:
        trial.run(report)
    except TrialDivergedError as err:
        # a diverged trial is a result (retrying a deterministic trial diverges again): the search scores it 0
        log.warning("%s", err)
        tune.report(diverged_result(trial.images_seen, str(err)))


def diverged_result(images_seen: int, reason: str) -> dict[str, Any]:
    """The last report of a diverged trial: flagged, scored 0 on every objective, no checkpoint."""
    return {
        "diverged": 1.0,
        "diverged_reason": reason,
        "val_acc": 0.0,
        "teacher_agreement": 0.0,
        "agreement": 0.0,
        "images_seen": float(images_seen),
    }
