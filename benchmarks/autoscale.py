"""Does an autoscaler see a study's whole demand at once? Time from a study's start to 4 running GPU nodes.

Each side starts a fresh local autoscaling cluster: the head (no GPU) and a fake node type of 1 GPU, min 0, max 4
workers, on Ray's `fake_multinode` provider, the one behind `ray.cluster_utils.AutoscalingCluster` (Ray's way to
test autoscaling locally). That helper is not used as is: its `start()` and `shutdown()` run `ray stop --force`,
which stops every Ray runtime on the machine, and Ray 2.60's wheel lacks the example config it reads. So the
same cluster is started here with `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`, its own temp dir
and ports, and stopped by the PIDs of its own processes (tests/ray_cluster.py). The autoscaler runs a round every
`--round-s` (Ray's default 5 s; `AutoscalingCluster` uses 1 s).

On it, kd-study's real sweep (`run_sweep`: per-arm searcher, per-arm ASHA, MLflow callback, kd-study's Tune
settings) runs a study of 8 one-GPU trials (4 arms x 2) around the stand-in trial of tests/standin_sweep.py
(no torch; sleeps, reports, checkpoints), long enough that the study wants 4 GPUs at once:

* before: the settings before #20, `resources.max_pending: 1` (what Tune's default gives a custom searcher:
  `TUNE_MAX_PENDING_TRIALS_PG` unset means 1 pending trial) and `resources.order: deterministic`;
* after: `resources.order: throughput` with the default `max_pending` (every trial of the phase pending).

Printed per side: seconds from the sweep's start to each worker node running (and to 4), the times the autoscaler
queued node launches (its monitor.log) and their spread, in rounds; then `autoscale: ratio=R`, R = before's time
to 4 running nodes / after's (goal: after's 4 launches within one round of each other).

Run: `python benchmarks/autoscale.py [--round-s 5] [--trial-s 60] [--limit-s 300]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NODES = 4
ARMS, TRIALS_PER_ARM, REPORTS = 4, 2, 5
SIDES = {
    "before": {"order": "deterministic", "max_pending": 1},
    "after": {"order": "throughput", "max_pending": 0},
}
# monitor.log: "2026-12-02 07:10:01,123\tINFO autoscaler.py:1450 -- StandardAutoscaler: Queue 4 new nodes for launch"
QUEUED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*StandardAutoscaler: Queue (\d+) new nodes for launch")


def autoscaling_config(head_cpus: int, gcs_address: str) -> dict:
    """Ray's fake_multinode example config (not shipped in the 2.60 wheel) with one 1-GPU worker type; the provider
    is told the head's GCS address (its default is port 6379 on the machine's address) and launches all the nodes
    the autoscaler asks for at once (its default starts one per round, whatever the count: the first run measured
    that provider, not the demand)."""
    return {
        "cluster_name": "kd-autoscale-bench",
        "max_workers": NODES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
            # as a cloud provider does: all `count` nodes of a launch (the fake default starts one per round)
            "launch_multiple": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.gpu": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": NODES,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def driver(side: str, tmp: Path, limit_s: float) -> None:
    """In the cluster's client environment: run the study, watch the nodes, print one JSON line at 4 (or the limit)."""
    import ray

    from study.config import StudySpec
    from study.distill.trial import TrialPaths
    from study.orchestrate.sweep import run_sweep
    from study.tracking import StudyTracker
    from tests.standin_sweep import standin_trial

    spec = StudySpec.model_validate(
        {
            "name": "autoscale",
            "arms": [{"name": f"arm{i}", "card": "digits_train"} for i in range(ARMS)],
            "search": {
                "trials_per_arm": TRIALS_PER_ARM,
                "space": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
                "scheduler": {"kind": "asha", "grace_reports": 2, "reduction_factor": 2},
            },
            "budget": {"images": REPORTS, "report_every": 1},
            "resources": {"cpu": 0, "gpu": 1, "checkpoint_s": 600, **SIDES[side]},
        }
    )
    ray.init(address=os.environ["RAY_ADDRESS"], include_dashboard=False, log_to_driver=False)
    tracker = StudyTracker(f"sqlite:///{tmp / f'{side}.db'}", spec)
    assert tracker.experiment_id
    start = time.time()
    running: dict[str, float] = {}

    def watch() -> None:
        while time.time() - start < limit_s:
            for node in ray.nodes():
                if node["Alive"] and node["Resources"].get("GPU") and node["NodeID"] not in running:
                    running[node["NodeID"]] = time.time() - start
            if len(running) >= NODES:
                break
            time.sleep(0.2)
        print(json.dumps({"start": start, "running_s": sorted(running.values())}), flush=True)
        os._exit(0)  # the measurement is taken; the cluster (and the rest of the study) is stopped by PID

    threading.Thread(target=watch, daemon=True).start()
    run_sweep(spec, TrialPaths("unused", "unused"), str(tmp / f"tune-{side}"), tracker, trainable_fn=standin_trial)
    time.sleep(limit_s)  # the study ended before the watcher: it reports what it saw


def queued_launches(head_temp: Path, since: float) -> list[tuple[float, int]]:
    """(seconds after `since`, node count) of each launch the autoscaler queued, from its monitor.log."""
    found = []
    for log in head_temp.glob("session_*/logs/monitor.log"):
        for line in log.read_text(errors="replace").splitlines():
            if match := QUEUED.match(line):
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if stamp >= since - 1:
                    found.append((stamp - since, int(match[2])))
    return sorted(set(found))  # monitor.log holds each line twice (two handlers of one logger)


def run_side(side: str, args: argparse.Namespace) -> dict:
    from tests.ray_cluster import HEALTH_CHECK_ENV, LocalRayCluster
    from tests.s3_servers import free_port

    tmp = Path(tempfile.mkdtemp(prefix="kas", dir="/tmp"))  # short: Ray's socket paths (<= 107 bytes) live under it
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_DISABLE_USAGE_STATS": "1",
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": str(args.round_s),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "STANDIN_SLEEP": str(args.trial_s / REPORTS),
        **HEALTH_CHECK_ENV,
    }
    cluster = LocalRayCluster(tmp, port=free_port(), dashboard_port=free_port(), env=env)
    config = tmp / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(args.head_cpus, cluster.gcs_address)))
    load_before = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        cluster.start_head(args.head_cpus, f"--autoscaling-config={config}")
        head_s = time.perf_counter() - t0
        client = cluster.client_env(RAY_ADDRESS=cluster.gcs_address)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", side, "--tmp", str(tmp)]
        cmd += ["--limit-s", str(args.limit_s)]
        done = subprocess.run(cmd, env=client, capture_output=True, text=True, timeout=args.limit_s + 300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"{side}: the driver printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        seen = json.loads(lines[-1])
        launches = queued_launches(cluster.head.temp_dir, seen["start"])
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    running = seen["running_s"]
    times = [t for t, _ in launches]
    return {
        "side": side,
        "settings": SIDES[side],
        "head_start_s": round(head_s, 1),
        "to_4_nodes_s": round(running[NODES - 1], 1) if len(running) >= NODES else None,
        "node_running_s": [round(t, 1) for t in running],
        "launches_queued": [(round(t, 1), n) for t, n in launches],
        "launch_spread_s": round(times[-1] - times[0], 1) if times else None,
        "launch_spread_rounds": round((times[-1] - times[0]) / args.round_s, 1) if times else None,
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-s", type=int, default=5, help="autoscaler update interval (Ray's default 5 s)")
    parser.add_argument("--trial-s", type=float, default=60.0, help="each stand-in trial's length")
    parser.add_argument("--limit-s", type=float, default=300.0, help="give up waiting for 4 nodes after this long")
    parser.add_argument("--head-cpus", type=int, default=2)
    parser.add_argument("--driver", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver, args.tmp, args.limit_s)
        return
    rows = []
    for side in SIDES:
        rows.append(run_side(side, args))
        print(json.dumps(rows[-1]), flush=True)
    before, after = (row["to_4_nodes_s"] or float("inf") for row in rows)
    print(
        f"autoscale: ratio={before / after:.2f} time to {NODES} running GPU nodes before={before:.1f} s "
        f"after={after:.1f} s; launch spread before={rows[0]['launch_spread_s']} s "
        f"({rows[0]['launch_spread_rounds']} rounds) after={rows[1]['launch_spread_s']} s "
        f"({rows[1]['launch_spread_rounds']} rounds); {ARMS}x{TRIALS_PER_ARM} one-GPU trials of {args.trial_s:g} s, "
        f"round={args.round_s} s; load(1 min) before side {rows[0]['load_before']}/{rows[0]['load_after']}, "
        f"after side {rows[1]['load_before']}/{rows[1]['load_after']}"
    )


if __name__ == "__main__":
    main()
