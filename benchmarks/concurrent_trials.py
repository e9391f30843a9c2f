"""Several real KD trials sharing one node: aggregate and per-trial img/s against one trial alone.

K = 1, 2, 4 trials of the same spec run at once, either through Ray Tune (`--mode ray`:
`study.orchestrate.sweep.run_sweep`
with `resources.cpu = cpus / K` and, on a GPU, `resources.gpu = 1 / K`, the fractional packing a cluster uses) or as
K plain processes (`--mode processes`, for a machine without Ray). A trial's rate is the median `images_per_s`
of its reports after the first (warm-up); the aggregate is the sum over the K trials, which run concurrently.

Lines: `concurrent_trials_kK: ratio=X` with X = aggregate img/s with K trials / img/s of one trial alone (the
node's gain from packing; K is the ideal on K free devices), then per-trial img/s and, on CUDA, peak memory per
trial (processes mode).

Run: `python benchmarks/concurrent_trials.py [--mode ray|processes] [--trials 1,2,4] [--teacher resnet8]
[--student resnet8] [--images 3072] [--threads 1] [--precision auto]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
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
from study.teacher.checkpoint import load_meta


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


def steady_rate(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def run_with_ray(root: Path, args: argparse.Namespace, k: int) -> list[dict]:
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker

    spec, paths = setup(root, args, k)
    tracker = StudyTracker(f"sqlite:///{root / f'mlflow-{k}.db'}", spec)
    result = run_sweep(spec, paths, str(root / f"tune-{k}"), tracker)
    assert not result.grid.num_errors, [r.error for r in result.grid if r.error]
    return [{"rate": steady_rate(list(r.metrics_dataframe["images_per_s"])), "peak_mb": 0.0} for r in result.grid]


def one_process(spec_json: str, paths: TrialPaths, seed: int, threads: int, start, results) -> None:
    torch.set_num_threads(threads)
    spec = StudySpec.model_validate_json(spec_json)
    trial = KDTrial(spec, spec.arms[0], paths, seed=seed)
    rates: list[float] = []
    start.wait()
    trial.run(lambda metrics, _: rates.append(metrics["images_per_s"]))
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    results.put({"rate": steady_rate(rates), "peak_mb": peak})


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
            per_trial = [r["rate"] for r in rows]
            aggregate = sum(per_trial)
            alone = alone or (aggregate if k == 1 else None)
            ratio = f"{aggregate / alone:.2f}" if alone else "n/a"
            peak = max(r["peak_mb"] for r in rows)
            print(
                f"concurrent_trials_k{k}: ratio={ratio} aggregate={aggregate:.0f} img/s "
                f"per_trial={','.join(f'{r:.0f}' for r in per_trial)} img/s alone={alone or float('nan'):.0f} img/s "
                f"mode={args.mode} device={device} {args.student}<-{args.teacher} {args.size}px batch={args.batch} "
                f"threads/trial={args.threads} precision={args.precision} wall={wall:.0f} s"
                + (f" peak_mem/trial={peak:.0f} MiB" if peak else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()
