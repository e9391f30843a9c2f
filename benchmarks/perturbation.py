"""Cost of an arm's adversarial boundary perturbation: online (attack every batch) against offline (read the
derived surrogate built once), same teacher, student and surrogate, in one run.

Window: each trial's `--images` after its first `--warmup` images (loader start-up, first batches), eval excluded.
Baseline: the online arm (attack on every batch) in the same run, same window; `none` (no attack) for scale.

Measures the trial loop's images/s (KDTrial's own `images_per_s` over the reports after the warm-up one, so
start-up and evaluation are outside the clock on every arm) for three arms of one surrogate: `online` (boundary
attack on each batch, `study.teacher.attack`), `offline` (the precomputed derived shards, `study.data.perturb`)
and `none` (plain KD, for scale), plus the one-time offline build. The ratio is offline / online trial speed; the
build line says after how many trial images the offline build has paid off.

Each arm runs `--repeats` times, arms interleaved, best speed kept (the machine is shared and noisy).

    python benchmarks/perturbation.py [--count 512 --warmup 128 --images 512 --batch 64 --threads 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
import yaml

from study.config import ArmSpec, CardSpec, PerturbationSpec, RealSource, StudySpec, TeacherSpec
from study.data.build import build_surrogate
from study.data.perturb import build_perturbed
from study.distill.trial import KDTrial, TrialPaths
from study.orchestrate.teacher_training import train_teacher


def trial_speed(spec: StudySpec, arm: ArmSpec, paths: TrialPaths) -> tuple[float, dict[str, float]]:
    """Images/s over the window after the first report (the warm-up), from the trial's own per-interval rates
    (each excludes the evaluation before it), and the last report's metrics."""
    reports: list[dict[str, float]] = []
    KDTrial(spec, arm, paths).run(lambda metrics, _: reports.append(metrics))
    intervals = list(itertools.pairwise(reports))  # the first report ends the warm-up
    seen = [b["images_seen"] - a["images_seen"] for a, b in intervals]
    seconds = sum(n / b["images_per_s"] for n, (_, b) in zip(seen, intervals, strict=True))
    return sum(seen) / seconds, reports[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=512, help="source surrogate images (digits, 32 px)")
    parser.add_argument("--warmup", type=int, default=128, help="images before the window (one report interval)")
    parser.add_argument("--images", type=int, default=512, help="images in the timed window (a multiple of --warmup)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per arm, interleaved; best kept")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--arch", default="resnet8", help="teacher and student architecture")
    args = parser.parse_args()
    if args.images % args.warmup or args.warmup % args.batch:
        parser.error("--images must be a multiple of --warmup, and --warmup a multiple of --batch (reports fall there)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kd-bench-perturb-") as tmp:
        root = Path(tmp)
        teacher = str(root / "teacher")
        train_teacher(TeacherSpec(arch=args.arch, epochs=args.teacher_epochs, batch_size=64), teacher)
        card = CardSpec(
            name="digits_bench",
            kind="real",
            source=RealSource(name="digits"),
            count=args.count,
            images_per_sample=64,
            samples_per_shard=2,
        )
        (root / "digits_bench.yaml").write_text(yaml.safe_dump(card.model_dump(mode="json")))
        shards_root = str(root / "shards")
        source = build_surrogate(card, shards_root).root
        attack = PerturbationSpec()  # the paper-derived defaults of AttackConfig
        t0 = time.perf_counter()
        derived = build_perturbed(source, teacher, shards_root, attack.model_copy(update={"mode": "offline"}))
        build_s = time.perf_counter() - t0
        arms = [
            ArmSpec(name=mode, card="digits_bench.yaml", perturbation=attack.model_copy(update={"mode": mode}))
            for mode in ("online", "offline", "none")
        ]
        spec = StudySpec(
            name="bench",
            arms=arms,
            student={"arch": args.arch},
            train={"batch_size": args.batch},
            # a report every `warmup` images: the first ends the warm-up, the rest time the window
            budget={"images": args.warmup + args.images, "report_every": args.warmup},
        )
        paths = TrialPaths(teacher, shards_root, str(root))
        speed = {arm.name: 0.0 for arm in arms}
        online_metrics: dict[str, float] = {}
        for _ in range(args.repeats):
            for arm in arms:
                images_per_s, metrics = trial_speed(spec, arm, paths)
                speed[arm.name] = max(speed[arm.name], images_per_s)
                if arm.name == "online":
                    online_metrics = metrics
    info = derived.manifest.card
    ratio = speed["offline"] / speed["online"]
    print(
        f"perturbation_offline_vs_online: ratio={ratio:.2f} offline={speed['offline']:.1f} img/s "
        f"online={speed['online']:.1f} img/s none={speed['none']:.1f} img/s "
        f"online_attack_success={online_metrics.get('attack_success', float('nan')):.3f} "
        f"window={args.images} img after {args.warmup} warm-up best_of={args.repeats}"
    )
    # the build pays off once an arm's trials have seen more images than the online time it costs
    per_image_online = 1.0 / speed["online"] - 1.0 / speed["offline"]
    break_even = build_s / per_image_online if per_image_online > 0 else float("inf")
    trial_images = args.warmup + args.images
    print(
        f"perturbation_offline_build: ratio={trial_images / break_even:.2f} build={build_s:.1f} s "
        f"source={info['attacked']} img ({info['attacked'] / build_s:.1f} img/s) derived={derived.manifest.count} img "
        f"success={info['success_rate']:.3f} break_even={break_even:.0f} trial img "
        f"(ratio = one {trial_images}-image trial / break-even)"
    )


if __name__ == "__main__":
    main()
