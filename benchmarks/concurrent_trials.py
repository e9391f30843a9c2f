"""Several real KD trials sharing one node: aggregate and per-trial img/s against one trial alone, same run.

Window: common to all K trials, from the last trial's first report to the first trial's last report, after a barrier.
Baseline: one trial alone (K = 1) in the same run, measured over the same kind of window.

K = 1, 2, 4 trials of the same spec run at once, either through Ray Tune (`--mode ray`:
`study.orchestrate.sweep.run_sweep`
with `resources.cpu = cpus / K` and, on a GPU, `resources.gpu = 1 / K`, the fractional packing a cluster uses) or as
K plain processes (`--mode processes`, for a machine without Ray). Every trial waits at a start barrier (a file
barrier around kd-study's own trainable in Ray mode, a multiprocessing barrier for processes) before it trains, and
stamps the wall time of each report. The window starts once every trial has made its first report (all are past
start-up and warm-up) and ends when the first trial makes its last one (all are still running): the aggregate is
the images all K trials trained inside that window (interpolated between reports) / its length, so it counts only
time when all K were running (evaluation at reports included, as in any trial), and per-trial figures are each
trial's share of it.

Lines: `concurrent_trials_kK: ratio=X` with X = aggregate img/s with K trials / img/s of one trial alone (the
node's gain from packing; K is the ideal on K free devices), then per-trial img/s, the window and, on CUDA, peak
memory per trial (processes mode).

Run: `python benchmarks/concurrent_trials.py [--mode ray|processes] [--trials 1,2,4] [--teacher resnet8]
[--student resnet8] [--images 3072] [--threads 1] [--precision auto]`.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
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
from study.distill.trial import KDTrial, TrialPaths, tune_trainable
from study.teacher.checkpoint import load_meta

Marks = list[tuple[float, float]]  # (wall time.time(), images_seen) at each report of one trial
BARRIER_TIMEOUT_S = 1800.0


def setup(root: Path, args: argparse.Namespace, k: int) -> tuple[StudySpec, TrialPaths]:
    teacher = str(root / "teacher")
    if not (root / "teacher").exists():
        teacher = make_teacher(root, args.teacher, args.size)
        build_eval_shards(load_meta(teacher), str(root / "eval"))
    card = CardSpec(
        name="bench_noise", kind="generated", generator="uniform_noise", count=8192, image_size=args.size, seed=0
    )
    build_surrogate(card, str(root / "shards"))
    cuda = torch.cuda.is_available()
    spec = StudySpec.model_validate(
        {
            "name": "concurrent",
            "student": {"arch": args.student},
            "arms": [{"name": "noise", "card": "bench_noise"}],
            "train": {"batch_size": args.batch},
            "search": {"trials_per_arm": k, "scheduler": {"kind": "none"}},
            "budget": {"images": args.images, "report_every": args.images // 6},
            "resources": {
                "cpu": args.cpus / k,
                "gpu": 1 / k if cuda else 0,
                "max_concurrent": k,
                "threads_per_trial": args.threads,
                "precision": args.precision,
                "loader_workers": args.loader_workers,
            },
        }
    )
    paths = TrialPaths(teacher, str(root / "shards"), cards={"noise": card}, eval_root=str(root / "eval"))
    return spec, paths


def images_at(marks: Marks, t: float) -> float:
    """A trial's images seen at wall time `t`, interpolated linearly between its reports."""
    for (t0, n0), (t1, n1) in itertools.pairwise(marks):
        if t0 <= t <= t1:
            return n0 + (n1 - n0) * (t - t0) / max(t1 - t0, 1e-9)
    raise ValueError(f"time {t} is outside the trial's reports")


def common_window(trials: list[Marks]) -> tuple[float, float, list[float]]:
    """The window when all trials ran (last first report to first last report), its length and each trial's img/s
    inside it."""
    start, end = max(m[0][0] for m in trials), min(m[-1][0] for m in trials)
    if end <= start:
        raise RuntimeError("the trials never all ran at once past their first report: raise --images")
    return start, end - start, [(images_at(m, end) - images_at(m, start)) / (end - start) for m in trials]


def file_barrier(directory: Path, parties: int) -> None:
    """Block until `parties` callers (trial workers on this node) have arrived in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{os.getpid()}-{time.time_ns()}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while sum(1 for _ in directory.iterdir()) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"start barrier: not all {parties} trials arrived within {BARRIER_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def barrier_trainable(barrier_dir: str, parties: int) -> Callable[..., None]:
    """kd-study's own trainable behind a start barrier, each report stamped with the wall time (`wall_time`).

    Tune's results carry no float wall clock comparable across trials, so the stamp is added where the trial
    reports: `tune.report` is wrapped in this trial's worker process only, for the trial's duration."""

    def trainable(config: dict, spec_json: str, paths: TrialPaths) -> None:
        from ray import tune

        file_barrier(Path(barrier_dir), parties)
        report = tune.report

        def stamped(metrics: dict, *args, **kwargs) -> None:
            report({**metrics, "wall_time": time.time()}, *args, **kwargs)

        tune.report = stamped
        try:
            tune_trainable(config, spec_json, paths)
        finally:
            tune.report = report

    return trainable


def run_with_ray(root: Path, args: argparse.Namespace, k: int) -> list[dict]:
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker

    spec, paths = setup(root, args, k)
    tracker = StudyTracker(f"sqlite:///{root / f'mlflow-{k}.db'}", spec)
    trainable = barrier_trainable(str(root / f"barrier-{k}"), k)
    result = run_sweep(spec, paths, str(root / f"tune-{k}"), tracker, trainable_fn=trainable)
    assert not result.grid.num_errors, [r.error for r in result.grid if r.error]
    rows = []
    for r in result.grid:
        frame = r.metrics_dataframe
        rows.append({"marks": list(zip(frame["wall_time"], frame["images_seen"], strict=True)), "peak_mb": 0.0})
    return rows


def one_process(spec_json: str, paths: TrialPaths, seed: int, threads: int, start, results) -> None:
    torch.set_num_threads(threads)
    spec = StudySpec.model_validate_json(spec_json)
    trial = KDTrial(spec, spec.arms[0], paths, seed=seed)
    marks: Marks = []
    start.wait()
    trial.run(lambda metrics, _: marks.append((time.time(), metrics["images_seen"])))
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    results.put({"marks": marks, "peak_mb": peak})


def run_processes(root: Path, args: argparse.Namespace, k: int) -> list[dict]:
    spec, paths = setup(root, args, k)
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(k), ctx.Queue()
    procs = [
        ctx.Process(target=one_process, args=(spec.model_dump_json(), paths, i, args.threads, start, results))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ray", "processes"), default="ray")
    parser.add_argument("--trials", default="1,2,4")
    parser.add_argument("--teacher", default="resnet8")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=3072)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per trial")
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 2), help="CPUs the node offers")
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    args = parser.parse_args()
    counts = [int(k) for k in args.trials.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="kd-concurrent-") as tmp:
        if args.mode == "ray":
            import ray

            ray.init(num_cpus=int(args.cpus), include_dashboard=False, log_to_driver=False, configure_logging=False)
        alone = None
        for k in counts:
            t0 = time.perf_counter()
            rows = run_with_ray(Path(tmp), args, k) if args.mode == "ray" else run_processes(Path(tmp), args, k)
            wall = time.perf_counter() - t0
            _, window, per_trial = common_window([r["marks"] for r in rows])
            aggregate = sum(per_trial)
            alone = alone or (aggregate if k == 1 else None)
            ratio = f"{aggregate / alone:.2f}" if alone else "n/a"
            peak = max(r["peak_mb"] for r in rows)
            print(
                f"concurrent_trials_k{k}: ratio={ratio} aggregate={aggregate:.0f} img/s "
                f"per_trial={','.join(f'{r:.0f}' for r in per_trial)} img/s alone={alone or float('nan'):.0f} img/s "
                f"mode={args.mode} device={device} {args.student}<-{args.teacher} {args.size}px batch={args.batch} "
                f"threads/trial={args.threads} precision={args.precision} window={window:.1f} s wall={wall:.0f} s"
                + (f" peak_mem/trial={peak:.0f} MiB" if peak else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
