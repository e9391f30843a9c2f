"""What Ray Tune + MLflow plumbing costs per KD trial, against the same trials run in a plain process one after another.

Window: cold on both sides: Tune's `fit` (its trial worker starts, imports torch) against a fresh spawned process.
Baseline: the same configs run with `KDTrial.run` in one fresh process (one reused worker, as `reuse_actors=True`).

`--trials` real KD trials (random resnet8 teacher -> resnet8 student, 32 px uniform-noise surrogate, the paper's
full recipe, `--threads` intra-op threads per trial) run through `study.orchestrate.sweep.run_sweep` at
`max_concurrent: 1`: the per-arm searcher, the driver-side MLflow callback on a sqlite store, a checkpoint to Tune's
storage at every report, eval on the eval shards; `run_sweep` reuses actors, so all trials share one worker. The
baseline runs the same configs (same learning rates and seeds) with `KDTrial.run` one after another, with the same
threads, in one freshly spawned Python process, so it too pays interpreter start, imports and model set-up once,
as Tune's worker does. Ray start-up is outside both clocks (printed separately) and Ray stays up for both sides.
Each side runs `--rounds` times (default 2), Tune first in even rounds and the plain process first in odd ones;
each keeps its best wall time (the machine is shared; noise only adds time). The plain side reuses the configs of
Tune's first round; the line says whether later rounds' Tune configs were the same.

`tune_overhead: ratio=X` with X = in-process wall time / Tune wall time (1 = parity; goal >= 0.95).

Run: `python benchmarks/tune_overhead.py [--trials 4] [--images 4096] [--threads 2] [--rounds 2]`
(~15 s per trial and side on a quiet machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
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


def in_process_trials(spec_json: str, paths: TrialPaths, configs: list[dict], threads: int) -> None:
    """The baseline's body, run in a freshly spawned process: each config's `KDTrial.run`, one after another."""
    torch.set_num_threads(threads)
    spec = StudySpec.model_validate_json(spec_json)
    for config in configs:
        overrides = {k: v for k, v in config.items() if k not in TRIAL_KEYS}
        trial = KDTrial(spec, spec.arm(config["arm"]), paths, overrides, seed=int(config["seed"]))
        trial.run(lambda metrics, _: None)


def in_process_side(spec: StudySpec, paths: TrialPaths, configs: list[dict], threads: int) -> float:
    """Wall time of `in_process_trials` in a spawned process, from its start (cold: interpreter, imports) to exit."""
    ctx = mp.get_context("spawn")
    start = time.perf_counter()
    proc = ctx.Process(target=in_process_trials, args=(spec.model_dump_json(), paths, configs, threads))
    proc.start()
    proc.join()
    wall = time.perf_counter() - start
    assert proc.exitcode == 0, f"the in-process side failed (exit {proc.exitcode})"
    return wall


def tune_side(spec: StudySpec, paths: TrialPaths, workdir: Path) -> tuple[float, list[dict]]:
    """Wall time of one `run_sweep` in a fresh experiment (its store exists first, as in a study), and its configs
    in trial order."""
    tracker = StudyTracker(f"sqlite:///{workdir / 'mlflow.db'}", spec)
    assert tracker.experiment_id
    start = time.perf_counter()
    result = run_sweep(spec, paths, str(workdir / "tune"), tracker)
    wall = time.perf_counter() - start
    assert not result.grid.num_errors, [r.error for r in result.grid if r.error]
    configs = sorted((r.config for r in result.grid), key=lambda c: (c["arm"], int(c["seed"])))
    return wall, configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, first side alternating; best kept")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="kd-overhead-") as tmp:
        root = Path(tmp)
        spec, paths = study_setup(root, args)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        startup = time.perf_counter() - t0
        walls: dict[str, list[float]] = {"tune": [], "in_process": []}
        configs: list[dict] = []
        same_configs = True
        firsts = []
        for round_ in range(max(1, args.rounds)):
            order = ["tune", "in_process"] if round_ % 2 == 0 else ["in_process", "tune"]
            firsts.append(order[0])
            for side in order:
                if side == "tune":
                    workdir = root / f"round-{round_}"  # a fresh experiment: run_sweep would resume an old one
                    workdir.mkdir()
                    wall, round_configs = tune_side(spec, paths, workdir)
                    same_configs = same_configs and (not configs or round_configs == configs)
                    configs = configs or round_configs
                else:
                    wall = in_process_side(spec, paths, configs, args.threads)
                walls[side].append(wall)
        ray.shutdown()
    tuned, alone = min(walls["tune"]), min(walls["in_process"])

    def rounds(side: str) -> str:
        return ",".join(f"{w:.1f}" for w in walls[side])

    print(
        f"tune_overhead: ratio={alone / tuned:.3f} tune={tuned:.1f} s in_process={alone:.1f} s "
        f"per_trial_tune={tuned / len(configs):.1f} s per_trial_in_process={alone / len(configs):.1f} s "
        f"best_of={len(firsts)} first={','.join(firsts)} tune_rounds={rounds('tune')} s "
        f"in_process_rounds={rounds('in_process')} s same_configs={same_configs} trials={len(configs)} "
        f"images={args.images} threads={args.threads} reuse_actors=True (both: one worker for all trials) "
        f"cold=both ray_init={startup:.1f} s (excluded)"
    )


if __name__ == "__main__":
    main()
