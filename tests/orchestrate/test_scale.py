"""Cluster scale: storage URIs and overrides, a study rooted on S3 that resumes elsewhere, status, the final phase."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study import storage
from study.cli.app import app
from study.config import SpecError, StudySpec, apply_overrides
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.status import study_status
from study.orchestrate.sweep import PerArmSearch, total_trials, trial_seed
from study.orchestrate.validation import study_paths
from study.teacher.checkpoint import load_meta
from study.tracking import experiment_name
from tests.s3_servers import S3Server

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def spec_data(**extra) -> dict:
    return {"name": "scale", "arms": [{"name": "digits", "card": "digits_train"}], **extra}


# ---------------------------------------------------------------------------------------------- URIs and overrides
def test_relative_parts_join_onto_an_s3_root_as_uris() -> None:
    spec = StudySpec.model_validate(spec_data(tracking={"uri": "http://127.0.0.1:5000"}))
    paths = study_paths(apply_overrides(spec, storage="s3://lab/studies/one/"))
    assert paths.root == "s3://lab/studies/one"
    assert paths.shards == "s3://lab/studies/one/shards" and paths.tune_dir == "s3://lab/studies/one/tune"
    assert paths.teacher == "s3://lab/studies/one/teacher" and paths.report_dir == "s3://lab/studies/one/report/scale"
    assert paths.eval_root == "s3://lab/studies/one/eval"
    assert storage.resolve("/data/shards", "s3://lab/x") == "/data/shards"  # an absolute path stays local


def test_overrides_leave_the_experiment_name_and_science_hash_unchanged() -> None:
    spec = StudySpec.model_validate(spec_data())
    moved = apply_overrides(spec, storage="s3://b/p", tracking_uri="http://10.0.0.1:5000", ray_address="auto")
    assert (moved.storage.root, moved.tracking.uri, moved.resources.ray_address) == (
        "s3://b/p",
        "http://10.0.0.1:5000",
        "auto",
    )
    content = {"teacher_weights_sha256": "ab" * 32}
    assert moved.science_hash(content) == spec.science_hash(content)
    assert experiment_name(moved, content) == experiment_name(spec, content)
    assert apply_overrides(spec) is spec


def test_relative_sqlite_under_an_s3_root_asks_for_tracking_uri() -> None:
    spec = apply_overrides(StudySpec.model_validate(spec_data()), storage="s3://b/p")
    with pytest.raises(SpecError, match="--tracking-uri"):
        study_paths(spec)
    assert study_paths(apply_overrides(spec, tracking_uri="sqlite:////tmp/x.db")).tracking_uri == "sqlite:////tmp/x.db"


def test_storage_and_its_root_alias_together_are_an_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(spec_data()))
    result = runner.invoke(app, ["status", str(spec), "--storage", str(tmp_path), "--root", str(tmp_path)])
    assert result.exit_code == 2 and "--storage or its alias --root" in result.output


def test_arrow_filesystem_points_at_the_endpoint_with_path_style(s3_env: S3Server) -> None:
    from pyarrow import fs

    bucket = s3_env.make_bucket()
    filesystem, path = storage.arrow_filesystem(f"s3://{bucket}/tune/")
    assert isinstance(filesystem, fs.S3FileSystem) and path == f"{bucket}/tune"
    with filesystem.open_output_stream(f"{path}/probe.txt") as out:
        out.write(b"hello")
    assert storage.read_bytes(f"s3://{bucket}/tune/probe.txt") == b"hello"
    assert storage.arrow_filesystem("relative/tune")[0] is None


# ---------------------------------------------------------------------------------------------- seeds, final phase
def complete(searcher: PerArmSearch, trial_id: str, val: float, images: int, **extra) -> None:
    searcher.on_trial_complete(trial_id, {"val_acc": val, "images_seen": images, **extra})


def test_every_search_trial_gets_its_own_seed_from_study_seed_arm_and_index() -> None:
    searcher = PerArmSearch(["a", "b"], {}, trials_per_arm=3, seed=5)
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    seeds = [c["seed"] for c in configs]
    assert len(set(seeds)) == 6
    again = PerArmSearch(["a", "b"], {}, trials_per_arm=3, seed=5)
    assert seeds == [again.suggest(f"x{i}")["seed"] for i in range(6)]
    assert configs[0]["seed"] == trial_seed(5, "a", "search", 0) != trial_seed(6, "a", "search", 0)


def test_final_phase_reruns_the_best_full_budget_config_with_distinct_seeds() -> None:
    from study.config import FinalSpec, ParamSpace

    space = {"lr": ParamSpace(type="loguniform", low=0.01, high=0.3)}
    searcher = PerArmSearch(["a"], space, 4, seed=0, final=FinalSpec(top_k=1, seeds=3), budget_images=1000)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    assert searcher.suggest("t4") is None  # the search has not ended: the final phase waits for it
    complete(searcher, "t0", 0.9, 500)  # early-stopped: not eligible, whatever its value
    complete(searcher, "t1", 0.95, 1000, diverged=1.0)  # diverged: not eligible
    complete(searcher, "t2", 0.6, 1000)
    state = json.loads(json.dumps(searcher.state()))  # as saved with the experiment
    complete(searcher, "t3", 0.7, 1000)  # the arm's last search trial: its final phase is queued now
    finals = [searcher.suggest(f"f{i}") for i in range(3)]
    assert searcher.suggest("f3") == PerArmSearch.FINISHED
    assert {f["phase"] for f in finals} == {"final"} and {f["lr"] for f in finals} == {configs["t3"]["lr"]}
    assert len({f["seed"] for f in finals} | {c["seed"] for c in configs.values()}) == 7

    resumed = PerArmSearch(["a"], space, 4, seed=0, final=FinalSpec(top_k=1, seeds=3), budget_images=1000)
    resumed.load_state(state)  # a study killed before its last search trial ended queues the same final phase
    complete(resumed, "t3", 0.7, 1000)
    assert [resumed.suggest(f"f{i}") for i in range(3)] == finals
    spec = StudySpec.model_validate(spec_data(final={"top_k": 2, "seeds": 3}, search={"trials_per_arm": 4}))
    assert total_trials(spec) == 4 + 6


def test_a_resumed_search_adopts_trials_that_finished_after_the_last_snapshot_instead_of_rerunning_them() -> None:
    from study.config import FinalSpec, ParamSpace
    from study.orchestrate.sweep import FinishedRun

    space = {"lr": ParamSpace(type="loguniform", low=0.01, high=0.3)}

    def searcher() -> PerArmSearch:
        return PerArmSearch(["a", "b"], space, 3, seed=0, final=FinalSpec(top_k=1, seeds=2), budget_images=100)

    first = searcher()
    dealt = {f"t{i}": first.suggest(f"t{i}") for i in range(2)}  # a0, b0
    snapshot = json.loads(json.dumps(first.state()))  # Tune's last snapshot before the kill
    lost = {f"t{i}": first.suggest(f"t{i}") for i in range(2, 4)}  # a1, b1: dealt after it, lost with the driver
    assert [c["arm"] for c in lost.values()] == ["a", "b"]
    # in the store: t2 (arm a) finished best of its arm; t3 (arm b) was still running, so it has no outcome
    finished = [
        FinishedRun("t2", "a", "search", lost["t2"]["seed"], {"lr": str(lost["t2"]["lr"]), "seed": "1"}, 0.9, True)
    ]

    resumed = searcher()
    resumed.load_state(snapshot)
    resumed.adopt(finished)
    again = [resumed.suggest(f"r{i}") for i in range(3)]  # b1 (dealt again), a2, b2: a1 is t2's, not re-run
    assert [(c["arm"], c["seed"]) for c in again] == [
        ("b", lost["t3"]["seed"]),
        ("a", trial_seed(0, "a", "search", 2)),
        ("b", trial_seed(0, "b", "search", 2)),
    ]
    assert lost["t2"]["lr"] in resumed.studies["a"].trials[1].params.values() and resumed.finished_values("a") == [0.9]
    for trial_id, value in (("t0", 0.5), ("r1", 0.6)):  # arm a's other search trials end: its final phase queues
        complete(resumed, trial_id, value, 100)
    finals = [resumed.suggest(f"f{i}") for i in range(2)]
    assert {(f["arm"], f["phase"], f["lr"]) for f in finals} == {("a", "final", lost["t2"]["lr"])}  # the adopted one
    assert dealt["t0"]["arm"] == "a"

    # a finished final-phase trial is adopted too: its queued config is not dealt again
    state = json.loads(json.dumps(resumed.state()))
    state["queued"] = [dict(f) for f in finals]
    later = searcher()
    later.load_state(state)
    later.adopt([FinishedRun("f0x", "a", "final", finals[0]["seed"], {"seed": str(finals[0]["seed"])}, 0.9, True)])
    assert later.suggest("g0") == finals[1] and later.suggest("g1") is None  # arm b's search is still running


# ---------------------------------------------------------------------------------------------- a study on S3
def study_yaml(path: Path) -> Path:
    data = spec_data(
        arms=[{"name": "digits", "card": "digits_train"}, {"name": "noise", "card": "gaussian_noise", "count": 1024}],
        train={"batch_size": 32, "randaugment_ops": 0, "crop_scale_min": 0.8, "mixup": False, "temperature": 4.0},
        search={
            "trials_per_arm": 2,
            "space": {"lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
            "scheduler": {"kind": "asha", "grace_reports": 1, "reduction_factor": 2},
        },
        budget={"images": 1536, "report_every": 512, "eval_batch_size": 256},
        # a checkpoint at every report (the default waits checkpoint_s = 60 s): the kill below waits for one
        resources={"cpu": 1, "max_concurrent": 2, "checkpoint_s": 0},
        final={"top_k": 1, "seeds": 2},
    )
    path.write_text(yaml.safe_dump(data))
    return path


def driver(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`kd-study` in a process group of its own, so a kill takes its Ray runtime with it."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_study_on_s3_lands_in_the_bucket_and_resumes_from_a_fresh_directory(
    tmp_path: Path, moto_server: S3Server, digits_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_server.activate(monkeypatch)
    bucket = moto_server.make_bucket()
    root = f"s3://{bucket}/study"
    for name in ("weights.pt", "meta.json"):
        storage.upload_file(digits_teacher / name, f"{root}/teacher/{name}")
    spec_file = study_yaml(tmp_path / "scale.yaml")
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    tracking = f"sqlite:///{db}"
    args = ["run", str(spec_file), "--storage", root, "--tracking-uri", tracking]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KD_STUDY_SHARD_CACHE": str(tmp_path / "cache")}
    spec = apply_overrides(StudySpec.model_validate(yaml.safe_load(spec_file.read_text())), root, tracking)
    tracker = open_tracker(spec, study_paths(spec))
    first_cwd, second_cwd = tmp_path / "first", tmp_path / "second"
    first_cwd.mkdir()
    second_cwd.mkdir()

    # first driver: killed (with its Ray runtime) once a trial has checkpointed into the bucket
    proc = driver(args, first_cwd, env)
    deadline = time.monotonic() + 240
    while not any("checkpoint_" in k for k in keys(moto_server, bucket, "study/tune/")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint reached the bucket in time"
        time.sleep(1)
    mid = study_status(spec, tracker)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mid is not None and [(r.arm, r.phase) for r in mid] == [
        ("digits", "search"),
        ("digits", "final"),
        ("noise", "search"),
        ("noise", "final"),
    ]
    assert all(r.expected == 2 for r in mid) and sum(r.running + r.done for r in mid) >= 1
    assert all(r.done == 0 and r.pending == 2 for r in mid if r.phase == "final")

    # second driver, from another directory: resumes from the bucket and finishes, final phase included
    done = subprocess.run(
        [sys.executable, "-m", "study.cli", "run", *args[1:]], cwd=second_cwd, env=env, capture_output=True, timeout=400
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-4000:]
    assert list(first_cwd.iterdir()) == [] and list(second_cwd.iterdir()) == []

    listed = keys(moto_server, bucket)
    teacher_id = load_meta(f"{root}/teacher").teacher_id
    exp = tracker.name
    for expected in (
        "study/shards/digits_train/manifest.json",
        "study/shards/gaussian_noise/shard-000000.tar",
        f"study/eval/{teacher_id}/val/manifest.json",
        f"study/eval/{teacher_id}/test/shard-000000.tar",
        f"study/report/{spec.name}/report.md",
        f"study/report/{spec.name}/results.parquet",
    ):
        assert expected in listed, f"{expected} not in the bucket"
    assert any(k.startswith(f"study/tune/{exp}/") and "experiment_state" in k for k in listed)
    assert any(k.startswith(f"study/tune/{exp}") and k.endswith("/trial_state.pt") for k in listed)

    # MLflow: one run per trial (the resume reopened runs instead of duplicating them), the final phase complete
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id], "tags.`kd_study.role` = 'trial'")
    assert len({r.data.tags["trial_id"] for r in runs}) == len(runs)
    for arm in ("digits", "noise"):
        search = [r for r in runs if r.data.tags["kd_study.arm"] == arm and r.data.tags["phase"] == "search"]
        final = [r for r in runs if r.data.tags["kd_study.arm"] == arm and r.data.tags["phase"] == "final"]
        assert len(search) == 2 and len(final) == 2
        assert len({r.data.params["seed"] for r in search + final}) == 4  # every trial its own seed
        assert all(r.info.status == "FINISHED" and r.data.tags["early_stopped"] == "false" for r in final)
        full = [r for r in search if r.data.tags.get("early_stopped") == "false"]
        top = max(r.data.metrics["val_acc"] for r in full)
        best = {r.data.params["lr"] for r in full if r.data.metrics["val_acc"] == top}  # ties: either is right
        assert len({r.data.params["lr"] for r in final}) == 1 and {r.data.params["lr"] for r in final} <= best

    after = study_status(spec, tracker)
    assert all((r.done, r.running, r.failed, r.pending) == (2, 0, 0, 0) for r in after)
    assert all(r.best is not None for r in after)
    shown = runner.invoke(app, ["status", str(spec_file), "--storage", root, "--tracking-uri", tracking])
    assert shown.exit_code == 0 and "final" in shown.output and "digits" in shown.output

    results = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{root}/report/{spec.name}/results.parquet")))
    assert {"arm", "seed", "phase"} <= set(results.columns) and len(results) == 8
