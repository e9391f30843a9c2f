"""A study that always finishes: one tiny study through `kd-study run` as a real subprocess, SIGKILLed mid-study
and rerun. Real local Ray (started by the driver), real sqlite MLflow store, real shards.

Arms: `relative` (its card is a path relative to the spec file, run from another working directory), `diverge`
(arm-fixed lr 1e6: NaN/inf loss), `broken` (a surrogate whose last shard is damaged after it was built; the
driver reads only the first images for criteria, the trial reads them all and raises) and `tiny` (10 images,
batch 64).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.config import load_card, load_study
from study.data.build import build_surrogate
from study.orchestrate.pipeline import study_content
from study.orchestrate.sweep import PerArmASHA, PerArmSearch, max_reports, rungs_location
from study.orchestrate.validation import load_cards, study_paths
from study.teacher.checkpoint import load_meta
from study.tracking import experiment_name

pytestmark = pytest.mark.slow

ARMS = ["relative", "diverge", "broken", "tiny"]


def write_study(folder: Path, teacher: Path) -> Path:
    cards = folder / "cards"
    cards.mkdir(parents=True)
    (cards / "local_digits.yaml").write_text(
        yaml.safe_dump({"name": "local_digits", "kind": "real", "source": {"name": "digits", "split": "train"}})
    )
    # 3 shards of 1,024 / 1,024 / 256 images: criteria read the first 2,000, a trial reads all of them
    (cards / "broken_noise.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "broken_noise",
                "kind": "generated",
                "generator": "uniform_noise",
                "count": 2304,
                "samples_per_shard": 4,
            }
        )
    )
    spec = {
        "name": "reliability",
        "teacher": {"uri": str(teacher)},
        "student": {"arch": "resnet8"},
        "arms": [
            {"name": "relative", "card": "cards/local_digits.yaml"},
            {"name": "diverge", "card": "digits_train", "train": {"lr": 1.0e6}},
            {"name": "broken", "card": "cards/broken_noise.yaml"},
            {"name": "tiny", "card": "digits_train", "count": 10, "train": {"batch_size": 64}},
        ],
        "train": {"batch_size": 32, "randaugment_ops": 0, "mixup": False, "temperature": 4.0},
        "search": {
            "trials_per_arm": 2,
            "space": {"momentum": {"type": "uniform", "low": 0.8, "high": 0.95}},
            "scheduler": {"kind": "asha", "grace_reports": 1, "reduction_factor": 2},
        },
        "budget": {"images": 256, "report_every": 128, "eval_batch_size": 128},
        "resources": {"cpu": 1, "max_concurrent": 2},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def kd_study(*args: str, cwd: Path) -> subprocess.Popen:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(RAY_AUTH_MODE="disabled", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_ADDRESS="")
    script = Path(sys.executable).parent / "kd-study"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from study.cli.app import app; app()"]
    return subprocess.Popen(
        [*cmd, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Ray's processes with it
    )


def trial_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`kd_study.role` = 'trial'", max_results=1000)


def descendants(pid: int) -> list[int]:
    """PIDs below `pid` in the process tree (from /proc, Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the driver's process group; returns descendants that outlived it (then killed here by PID)."""
    family = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(p) for p in family):
        time.sleep(0.2)
    survivors = [p for p in family if alive(p)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return survivors


def test_a_killed_study_resumes_and_always_finishes_with_its_report(digits_teacher: Path, tmp_path: Path) -> None:
    spec_path = write_study(tmp_path / "spec", digits_teacher)
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = load_study(spec_path)
    meta = load_meta(str(digits_teacher))

    # the `broken` surrogate, built as the driver would, then its last shard zeroed (same size: passes the
    # driver's presence check, fails the trial's read)
    card = load_card(spec_path.parent / "cards" / "broken_noise.yaml")
    built = build_surrogate(
        card, str(root / "shards"), reference_stats=(meta.mean, meta.std), teacher_id=meta.teacher_id
    )
    last = Path(built.root) / built.manifest.shards[-1].name
    last.write_bytes(bytes(last.stat().st_size))

    cards = load_cards(spec, str(spec_path.parent))
    experiment = experiment_name(spec, study_content(cards, meta))
    tracking_uri = study_paths(spec, str(root)).tracking_uri
    client = MlflowClient(tracking_uri)
    args = ("run", str(spec_path), "--root", str(root))

    # ---- first run: SIGKILL once a trial is FINISHED in the store
    first = kd_study(*args, cwd=elsewhere)
    deadline = time.monotonic() + 240
    finished: dict[str, int] = {}
    while time.monotonic() < deadline and first.poll() is None:
        if Path(str(root / "mlflow.db")).exists():
            runs = trial_runs(client, experiment)
            finished = {r.data.tags["trial_id"]: r.info.end_time for r in runs if r.info.status == "FINISHED"}
            if finished:
                break
        time.sleep(0.5)
    assert first.poll() is None, f"the study ended before it could be killed:\n{first.stdout.read()}"
    assert finished, "no trial finished within 240 s"
    survivors = kill_group(first)
    assert survivors == [], f"processes outlived the driver's process group: {survivors}"
    finished = {
        r.data.tags["trial_id"]: r.info.end_time for r in trial_runs(client, experiment) if r.info.status == "FINISHED"
    }

    # ---- rerun: the same command completes the study and writes the report
    second = kd_study(*args, cwd=elsewhere)
    out, _ = second.communicate(timeout=400)
    assert second.returncode == 3, out  # the broken arm's trials failed; the report is written first
    report = (root / "report" / "reliability" / "report.md").read_text()

    runs = trial_runs(client, experiment)
    ids = [r.data.tags["trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 2 * len(ARMS), ids  # exactly one run per trial, no duplicates
    by_arm: dict[str, list] = {arm: [] for arm in ARMS}
    for r in runs:
        by_arm[r.data.tags["kd_study.arm"]].append(r)
    for r in by_arm["broken"]:
        assert r.info.status == "FAILED" and r.data.tags["kd_study.outcome"] == "failed"
        assert "shard-000002.tar" in r.data.tags["kd_study.error"]
        error_file = client.download_artifacts(r.info.run_id, "error.txt", str(tmp_path))
        assert "shard-000002.tar" in Path(error_file).read_text()
    for r in by_arm["diverge"]:
        assert r.info.status == "FINISHED" and r.data.tags["kd_study.outcome"] == "diverged"
    for arm in ("relative", "tiny"):
        for r in by_arm[arm]:
            assert r.info.status == "FINISHED" and r.data.tags["kd_study.outcome"] in ("completed", "early_stopped")
            assert "val_acc" in r.data.metrics
    assert any(r.data.tags["kd_study.outcome"] == "completed" for r in by_arm["tiny"])  # 10 images, batch 64: ends
    # finished trials were not rerun: same end time
    for r in runs:
        if r.data.tags["trial_id"] in finished:
            assert r.info.end_time == finished[r.data.tags["trial_id"]]

    # the report lists the failed and diverged trials per arm
    section = report.split("## Failed and diverged trials", 1)[1]
    for r in by_arm["broken"] + by_arm["diverge"]:
        assert (
            f"| {r.data.tags['kd_study.arm']} | {r.data.tags['trial_id']} | {r.data.tags['kd_study.outcome']} |"
            in section
        )

    # each arm's Optuna study holds every trial that reached a result (failed ones are FAIL, ignored by TPE)
    experiment_dir = root / "tune" / experiment
    searcher = PerArmSearch(ARMS, spec.search.space, spec.search.trials_per_arm, spec.seed)
    searcher.restore_from_dir(str(experiment_dir))
    for arm in ARMS:
        results = [r for r in by_arm[arm] if r.data.tags["kd_study.outcome"] != "failed"]
        assert len(searcher.finished_values(arm)) == len(results), arm
    assert searcher.finished_values("diverge") == [0.0, 0.0]

    # the scheduler restored after the kill decides as a fresh one fed the recorded results in order
    restored = PerArmASHA(max_reports(spec), 1, 2)
    restored.load_state(json.loads(Path(rungs_location(str(root / "tune"), experiment)).read_text()))
    fresh = PerArmASHA(max_reports(spec), 1, 2)
    recorded = []
    for r in runs:
        # one entry per report (a trial resumed from a checkpoint may have re-reported one step: same value)
        history = {
            m.step: m for m in sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: -m.timestamp)
        }
        for i, step in enumerate(sorted(history)):
            recorded.append((history[step].timestamp, step, r, i + 1, {"val_acc": history[step].value}))
        if r.data.tags["kd_study.outcome"] == "diverged":
            recorded.append((r.info.end_time, 10**9, r, len(history) + 1, {"val_acc": 0.0, "diverged": 1.0}))
    for _, _, r, iteration, result in sorted(recorded, key=lambda x: (x[0], x[1])):
        fresh.decide(r.data.tags["kd_study.arm"], "search", r.data.tags["trial_id"], iteration, result)
    assert restored.state() == fresh.state()
    probes = [(arm, "probe", 1, {"val_acc": v}) for arm in ARMS for v in (0.0, 0.5, 1.0)]
    assert [restored.decide(a, "search", t, i, r) for a, t, i, r in probes] == [
        fresh.decide(a, "search", t, i, r) for a, t, i, r in probes
    ]
