"""What Ray Tune + MLflow plumbing costs per KD trial, against the same trials run in-process one after another.

Eight real KD trials (random resnet8 teacher -> resnet8 student, 32 px uniform-noise surrogate, the paper's full
recipe, `--threads` intra-op threads per trial) run through
`study.orchestrate.sweep.run_sweep` at `max_concurrent: 1`: the
per-arm searcher, the driver-side MLflow callback on a sqlite store, a checkpoint to Tune's storage at every
report, eval on the eval shards. Then the same eight configs (same learning rates and seeds) run in this process
with `KDTrial.run`, one after another, with the same threads. Ray start-up is excluded and printed separately.

`tune_overhead: ratio=X` with X = Tune wall time / in-process wall time - 1 (goal X <= 0.05).

Run: `python benchmarks/tune_overhead.py [--trials 8] [--images 8192] [--threads 2]`
(~30 s per trial on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import torch
from kd_step import make_teacher

from study.config import CardSpec, StudySpec
from study.data.build import build_surrogate
from study.data.eval_splits import build_eval_shards
from study.distill.trial import KDTrial, TrialPaths
from study.orchestrate.sweep import TRIAL_KEYS, run_sweep
from study.teacher.checkpoint import load_meta
from study.tracking import StudyTracker


def study_setup(root: Path, args: argparse.Namespace) -> tuple[StudySpec, TrialPaths]:
    teacher = make_teacher(root, "resnet8", 32)
    card = CardSpec(name="bench_noise", kind="generated", generator="uniform_noise", count=8192, seed=0)
    build_surrogate(card, str(root / "shards"))
    build_eval_shards(load_meta(teacher), str(root / "eval"))
    spec = StudySpec.model_validate(
        {
            "name": "overhead",
            "student": {"arch": "resnet8"},
            "arms": [{"name": "noise", "card": "bench_noise"}],
            "train": {"batch_size": 64},
            "search": {
                "trials_per_arm": args.trials,
                "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
                "scheduler": {"kind": "none"},
            },
            "budget": {"images": args.images, "report_every": args.images // 4},
            "resources": {"cpu": 1, "max_concurrent": 1, "threads_per_trial": args.threads},
        }
    )
    paths = TrialPaths(
        teacher=teacher, shards_root=str(root / "shards"), cards={"noise": card}, eval_root=str(root / "eval")
    )
    return spec, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="kd-overhead-") as tmp:
        root = Path(tmp)
        spec, paths = study_setup(root, args)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        startup = time.perf_counter() - t0
        tracker = StudyTracker(f"sqlite:///{root / 'mlflow.db'}", spec)
        assert tracker.experiment_id
        t0 = time.perf_counter()
        result = run_sweep(spec, paths, str(root / "tune"), tracker)
        tuned = time.perf_counter() - t0
        ray.shutdown()
        assert not result.grid.num_errors, [r.error for r in result.grid if r.error]
        configs = [r.config for r in result.grid]

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        for config in configs:
            overrides = {k: v for k, v in config.items() if k not in TRIAL_KEYS}
            trial = KDTrial(spec, spec.arm(config["arm"]), paths, overrides, seed=int(config["seed"]))
            trial.run(lambda metrics, _: None)
        alone = time.perf_counter() - t0
    print(
        f"tune_overhead: ratio={tuned / alone - 1:.3f} tune={tuned:.1f} s in_process={alone:.1f} s "
        f"per_trial_in_process={alone / len(configs):.1f} s trials={len(configs)} images={args.images} "
        f"threads={args.threads} ray_init={startup:.1f} s (excluded)"
    )


if __name__ == "__main__":
    main()
