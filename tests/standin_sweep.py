"""kd-study's real sweep (`run_sweep`: Tuner, per-arm searcher, per-arm ASHA, MLflow callback, storage) around a
stand-in trial that imports no torch: it sleeps, reports `reports` times and checkpoints on the same schedule as
a KD trial (`resources.checkpoint_s`), writing a small checkpoint that a resumed trial continues from.

Used by tests/orchestrate/test_sync_scale.py (as a subprocess it can SIGKILL) and benchmarks/tune_scale.py.
Run: `python -m tests.standin_sweep --trials N --tune-dir URI --tracking-uri URI [--gpus 32] [--blocks DIR]`;
prints one JSON line with the wall time and the number of results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARMS = 4
CHECKPOINT_BYTES = 4096


def is_upload_start(method: str, path: str) -> bool:
    """One file upload as the S3 server sees it: a PutObject, or the CreateMultipartUpload that opens one (pyarrow
    streams a file as a multipart upload: create, parts, complete)."""
    if method == "PUT":
        return "partNumber=" not in path
    return method == "POST" and "uploads" in path.split("?", 1)[-1] and "uploadId=" not in path


def state_uploads(requests: list[tuple[str, str, int]]) -> int:
    """Uploads of Tune's experiment-state file among requests logged by the fault proxy."""
    return sum(1 for method, path, _ in requests if "experiment_state" in path and is_upload_start(method, path))


def init_ray(**kwargs: Any) -> None:
    """`ray.init` for a local runtime, retried: Ray gives a node 30 s to register, which a crowded machine misses."""
    import ray

    for attempt in range(3):
        try:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
            return
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == 2:
                raise
            ray.shutdown()
            time.sleep(5)


def standin_spec(trials: int, reports: int, checkpoint_s: float, max_pending: int = 0) -> Any:
    """The stand-in study; a checkout without `checkpoint_s`/`max_pending` (before #20) gets neither."""
    from study.config import ResourcesSpec, StudySpec

    # a cluster-scale sweep: every slot filled, every dealt trial demanded (not one search trial per arm at a time)
    resources = {"cpu": 0, "gpu": 1, "checkpoint_s": checkpoint_s, "max_pending": max_pending, "order": "throughput"}
    resources = {k: v for k, v in resources.items() if k in ResourcesSpec.model_fields}

    return StudySpec.model_validate(
        {
            "name": "standin",
            "arms": [{"name": f"arm{i}", "card": "digits_train"} for i in range(ARMS)],
            "search": {
                "trials_per_arm": trials // ARMS,
                "space": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
                "scheduler": {"kind": "asha", "grace_reports": 2, "reduction_factor": 2},
            },
            "budget": {"images": reports, "report_every": 1},
            "resources": resources,
        }
    )


def standin_trial(config: dict[str, Any], spec_json: str, paths: Any) -> None:
    """Reports `val_acc` 0.5 (ASHA stops nothing) `reports` times, `sleep` s apart; `blocks` (a local folder)
    receives how long each `tune.report` call blocked."""
    from ray import tune

    spec = json.loads(spec_json)
    reports = int(spec["budget"]["images"])
    checkpoint_s = float(spec["resources"].get("checkpoint_s", 0.0))  # before #20: a checkpoint per report
    sleep, blocks = float(os.environ.get("STANDIN_SLEEP", "0.2")), os.environ.get("STANDIN_BLOCKS")
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = json.loads((Path(directory) / "state.json").read_text())["done"]
    last_checkpoint = time.monotonic()
    for done in range(start + 1, reports + 1):
        time.sleep(sleep)
        result = {"val_acc": 0.5, "test_acc": 0.5, "train_loss": 1.0, "images_seen": float(done)}
        t0 = time.perf_counter()
        if time.monotonic() - last_checkpoint < checkpoint_s:
            tune.report(result)
        else:
            with tempfile.TemporaryDirectory(prefix="standin-ckpt-") as directory:
                (Path(directory) / "state.json").write_text(json.dumps({"done": done}))
                (Path(directory) / "weights.bin").write_bytes(bytes(CHECKPOINT_BYTES))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
            last_checkpoint = time.monotonic()
        if blocks:  # at once: the scheduler stops the trial inside its last `report`
            with open(Path(blocks) / f"{os.getpid()}.txt", "a") as out:
                out.write(f"{time.perf_counter() - t0:.6f}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--tune-dir", required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--gpus", type=int, default=32)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--checkpoint-s", type=float, default=60.0)
    parser.add_argument("--max-pending", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import ray

    from study.distill.trial_paths import TrialPaths
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker

    init_ray(num_cpus=2, num_gpus=args.gpus)
    spec = standin_spec(args.trials, args.reports, args.checkpoint_s, args.max_pending)
    tracker = StudyTracker(args.tracking_uri, spec)
    assert tracker.experiment_id
    print(f"standin sweep started at {time.time():.3f}", file=sys.stderr, flush=True)  # rates of a cut-off run
    start = time.perf_counter()
    result = run_sweep(spec, TrialPaths("unused", "unused"), args.tune_dir, tracker, trainable_fn=standin_trial)
    wall = time.perf_counter() - start
    # trials adopted from the store (finished in a killed driver after its last Tune snapshot) are not in the grid
    summary = {"wall_s": wall, "trials": len(result.grid) + result.adopted, "errors": result.grid.num_errors}
    summary["adopted"] = result.adopted
    if os.environ.get("STANDIN_RESTORE"):  # the time to restore the finished experiment and read its results
        from ray import tune

        from study import storage

        filesystem, path = storage.arrow_filesystem(result.experiment_dir)
        t0 = time.perf_counter()
        restored = tune.Tuner.restore(path, trainable=standin_trial, storage_filesystem=filesystem)
        assert len(restored.get_results()) == len(result.grid)
        summary["restore_s"] = time.perf_counter() - t0
    print(json.dumps({**summary, "restored": result.restored}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
