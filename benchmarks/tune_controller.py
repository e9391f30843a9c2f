"""Tune's controller under kd-study's plumbing with many trials, against plain Ray Tune on the same trials.

Window: each side's `Tuner.fit` wall time, Ray start-up outside both; best of `--rounds`, the first side alternating.
Baseline: plain `tune.Tuner` (random search, FIFO, no callback) on the same trials in the same Ray runtime.

Both sides run 128 trials of a stand-in trainable that imports no torch and sleeps 1 s per report for 10 reports,
on 32 logical GPUs (1 GPU, 0 CPU per trial), in one Ray runtime (start-up excluded, printed separately):

* kd-study: `study.orchestrate.sweep.run_sweep` itself
  (per-arm Optuna searcher, per-arm ASHA rungs persisted after every
  decision, the driver-side MLflow callback writing every report to a real sqlite store), 4 arms x 32 trials;
* plain: `tune.Tuner` with the default searcher (random search over the same space) and scheduler (FIFO), no
  callback, and `reuse_actors=True` as `run_sweep` sets it (so both sides start the same number of actors).

The stand-in reports the same `val_acc` every time, so ASHA never stops a trial and both sides do the same work.
`tune_controller: ratio=X` with X = plain wall time / kd-study wall time (goal >= 0.9: the plumbing costs at most
~10%); each is also printed against the ideal 40 s (128 trials / 32 at once x 10 s). Each side runs `--rounds`
times (default 3), the side that goes first alternating per round (the line says which ran first in each round),
and keeps its best wall time: the machine is shared, and noise only ever adds time.

Run: `python benchmarks/tune_controller.py [--trials 128] [--gpus 32] [--reports 10] [--sleep 1.0] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

ARMS = 4


def standin_trial(config: dict, spec_json: str = "", paths: object = None) -> None:
    """No torch: sleeps and reports like a KD trial (same metric names, constant val_acc)."""
    import time

    from ray import tune

    reports, pause = config.get("reports", 10), config.get("sleep", 1.0)
    for i in range(1, reports + 1):
        time.sleep(pause)
        tune.report({"val_acc": 0.5, "test_acc": 0.5, "train_loss": 1.0, "images_seen": float(i)})


def kd_study_side(tmp: Path, args: argparse.Namespace) -> float:
    from study.config import StudySpec
    from study.distill.trial import TrialPaths
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker

    spec = StudySpec.model_validate(
        {
            "name": "controller",
            "arms": [{"name": f"arm{i}", "card": "digits_train"} for i in range(ARMS)],
            "search": {
                "trials_per_arm": args.trials // ARMS,
                "space": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
                "scheduler": {"kind": "asha", "grace_reports": 2, "reduction_factor": 2},
            },
            "budget": {"images": args.reports, "report_every": 1},
            "resources": {"cpu": 0, "gpu": 1, "max_concurrent": 0},
        }
    )
    tracker = StudyTracker(f"sqlite:///{tmp / 'mlflow.db'}", spec)
    assert tracker.experiment_id  # the store exists before the clock starts, as in a study (criteria ran first)

    def trainable(config: dict, spec_json: str, paths: object) -> None:
        standin_trial({**config, "reports": args.reports, "sleep": args.sleep})

    start = time.perf_counter()
    result = run_sweep(spec, TrialPaths("unused", "unused"), str(tmp / "tune-kd"), tracker, trainable_fn=trainable)
    wall = time.perf_counter() - start
    assert len(result.grid) == args.trials and not result.grid.num_errors, "kd-study side did not finish its trials"
    return wall


def plain_side(tmp: Path, args: argparse.Namespace) -> float:
    from ray import tune

    start = time.perf_counter()
    grid = tune.Tuner(
        tune.with_resources(standin_trial, {"cpu": 0, "gpu": 1}),
        param_space={
            "lr": tune.loguniform(0.01, 0.3),
            "arm": tune.choice([f"arm{i}" for i in range(ARMS)]),
            "reports": args.reports,
            "sleep": args.sleep,
        },
        tune_config=tune.TuneConfig(num_samples=args.trials, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp / "tune-plain"), verbose=0),
    ).fit()
    wall = time.perf_counter() - start
    assert len(grid) == args.trials and not grid.num_errors, "plain side did not finish its trials"
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=128)
    parser.add_argument("--gpus", type=int, default=32)
    parser.add_argument("--reports", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, first side alternating; best kept")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=args.gpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    startup = time.perf_counter() - t0
    ideal = args.trials / args.gpus * args.reports * args.sleep
    sides = {"plain": plain_side, "kd_study": kd_study_side}
    walls: dict[str, list[float]] = {name: [] for name in sides}
    firsts = []
    with tempfile.TemporaryDirectory(prefix="kd-controller-") as tmp:
        for round_ in range(max(1, args.rounds)):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            firsts.append(order[0])
            for name in order:
                workdir = Path(tmp, f"{name}-{round_}")  # a fresh experiment each round: run_sweep would resume
                workdir.mkdir()
                walls[name].append(sides[name](workdir, args))
    ray.shutdown()
    plain, ours = min(walls["plain"]), min(walls["kd_study"])

    def rounds(name: str) -> str:
        return ",".join(f"{w:.1f}" for w in walls[name])

    print(
        f"tune_controller: ratio={plain / ours:.2f} kd_study={ours:.1f} s plain={plain:.1f} s ideal={ideal:.0f} s "
        f"(kd_study/ideal={ours / ideal:.2f}, plain/ideal={plain / ideal:.2f}) best_of={len(firsts)} "
        f"first={','.join(firsts)} kd_study_rounds={rounds('kd_study')} s plain_rounds={rounds('plain')} s "
        f"trials={args.trials} arms={ARMS} logical_gpus={args.gpus} reports={args.reports}x{args.sleep:g}s "
        f"reuse_actors=True (both) ray_init={startup:.1f} s (excluded)"
    )


if __name__ == "__main__":
    main()
