"""A study submitted with `kd-study submit` to a real 2-node Ray cluster, with S3 and an MLflow server on loopback.

One cluster serves both scenarios: a head (`ray start --head`, 1 CPU) and a worker node (`ray start --address`, 1 CPU,
its own temp dir and shard cache), token authentication on, health checks shortened so a dead node is noticed in
seconds. Storage is a moto S3 server (teacher, shards, eval shards, Tune state and checkpoints, report) and
tracking a real `mlflow server`; nothing the trials need is on the submitting side but what the spec names.

The teacher's dataset exists only in a temp dir of the test (MNIST's raw files, found through $KD_STUDY_DATA, which
the cluster never gets): the test writes its eval splits into the bucket with `kd-study data eval-splits` and
deletes it before anything is submitted. The job's driver (criteria: the Fréchet
reference) and the trials (evaluation) can then only get evaluation data from the bucket.

1. The study, whose arm uses the user's own card file beside the spec (shipped by `submit`, in no image), runs
   as a job: it succeeds, its trials ran on both nodes (MLflow tag `node_id`), every trial read its
   data from the bucket (metric `s3_bytes_read`), the server holds the expected runs and the report is made from it.
   Its pre-sweep work ran as Ray tasks: two teacher-filtered surrogates built side by side, one of them (build,
   selection) on the worker node, where its arm's criteria were measured too (manifest `built_on`, arm run tags).
2. The worker node's raylet is killed (SIGKILL) mid-trial: the GCS declares the node dead, Tune retries the trial
   (`search.max_failures`) from its last checkpoint in the bucket on the head; the job is stopped and submitted
   again, and the second job resumes the study and completes it: one MLflow run per trial, the killed trial's first
   report made once, a complete report in the bucket.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study import storage
from study.cli.app import app
from study.config import StudySpec, apply_overrides
from study.data import shards
from study.data.sources.registry import load_source
from study.orchestrate.pipeline import open_tracker
from study.orchestrate.sweep import total_trials
from study.orchestrate.validation import study_paths
from study.teacher.checkpoint import load_meta
from tests.distill.test_trial_inputs import write_teacher
from tests.ray_cluster import LocalRayCluster, local_ray_cluster, mlflow_server
from tests.s3_servers import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
KD_STUDY = str(Path(sys.executable).parent / "kd-study")


@dataclass
class Setup:
    cluster: LocalRayCluster
    tracking: str
    root: str
    bucket: str
    moto: S3Server
    folder: Path

    def kd(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """`kd-study ARGS` as a user runs it: the cluster's token in the standard Ray settings, S3 settings."""
        return subprocess.run(
            [KD_STUDY, *args],
            env=self.cluster.client_env(COLUMNS="200", **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
        )

    def spec_file(
        self, name: str, images: int, trials: int = 2, card: str = "digits_train", arms: tuple[dict, ...] = ()
    ) -> Path:
        data = {
            "name": name,
            "arms": [{"name": "digits", "card": card, "count": 512}, *arms],
            "train": {"batch_size": 32, "randaugment_ops": 0, "crop_scale_min": 0.8, "mixup": False},
            "search": {"trials_per_arm": trials, "scheduler": {"kind": "none"}},
            "budget": {"images": images, "report_every": 256, "eval_batch_size": 256},
            # one DataLoader worker process per trial: its S3 reads must reach the trial's `s3_bytes_read`
            # checkpoint_s 0: a checkpoint at every report, which the resume below continues from
            "resources": {"cpu": 1, "max_concurrent": 2, "loader_workers": 1, "checkpoint_s": 0},
        }
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def submit(self, spec: Path) -> str:
        done = self.kd(
            "submit", str(spec), "--address", self.cluster.dashboard_url, "--storage", self.root,
            "--tracking-uri", self.tracking, RAY_ADDRESS="127.0.0.1:1",  # --address must win over RAY_ADDRESS
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1]

    def trial_runs(self, spec_path: Path) -> list:
        spec = StudySpec.model_validate(yaml.safe_load(spec_path.read_text()))
        spec = apply_overrides(spec, self.root, self.tracking)
        tracker = open_tracker(spec, study_paths(spec), cards_dir=str(spec_path.parent))
        client = MlflowClient(self.tracking)
        experiment = client.get_experiment_by_name(tracker.name)
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], "tags.`kd_study.role` = 'trial'")


def write_teacher_dataset(folder: Path) -> None:
    """scikit-learn's digits (train split; val + test as the test file) as MNIST's raw files in torchvision's layout
    under `folder/mnist`, where $KD_STUDY_DATA=`folder` points the `mnist` source."""
    raw = folder / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, splits in (("train", ("train",)), ("t10k", ("val", "test"))):
        parts = [load_source("digits", split, 28) for split in splits]
        images = np.concatenate([p.images[..., 0] for p in parts])
        labels = np.concatenate([p.labels for p in parts if p.labels is not None]).astype(np.uint8)
        header = struct.pack(">iiii", 2051, len(images), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())


def local_teacher(root: str, folder: Path) -> None:
    """A teacher of a dataset that only this process has: its eval splits written into the bucket with
    `kd-study data eval-splits`, then the dataset deleted. An untrained 16 px resnet8: the test is about where data
    comes from, not what the student learns, and training one would cost a minute of the suite on 2 cores."""
    data = folder / "teacher-data"
    write_teacher_dataset(data)
    write_teacher(folder / "teacher", "mnist", 16, 1)  # its dataset: $KD_STUDY_DATA/mnist, set only here
    for name in ("weights.pt", "meta.json"):
        storage.upload_file(folder / "teacher" / name, f"{root}/teacher/{name}")
    os.environ["KD_STUDY_DATA"] = str(data)
    try:
        written = CliRunner().invoke(
            app, ["data", "eval-splits", "--teacher", f"{root}/teacher", "--out", f"{root}/eval"]
        )
        assert written.exit_code == 0, written.output
    finally:
        os.environ.pop("KD_STUDY_DATA")
        shutil.rmtree(data)


@pytest.fixture(scope="module")
def setup(moto_server: S3Server) -> Iterator[Setup]:
    start = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="kd-e2e-"))
    bucket = moto_server.make_bucket()
    root = f"s3://{bucket}/study"
    s3_env = {
        **moto_server.env(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    previous = {k: os.environ.get(k) for k in s3_env}
    os.environ.update(s3_env)  # for the test's own storage reads (undone below)
    storage.s3_client.cache_clear()
    try:
        local_teacher(root, folder)
        cluster_env = {**s3_env, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
        with mlflow_server(folder) as tracking, local_ray_cluster([1], head_cpus=1, **cluster_env) as cluster:
            print(f"e2e setup: teacher, S3, MLflow server and 2-node cluster ready in {time.monotonic() - start:.0f} s")
            yield Setup(cluster, tracking, root, bucket, moto_server, folder)
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.s3_client.cache_clear()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for(what: str, check, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def object_bytes(setup: Setup, prefix: str) -> int:
    pages = setup.moto.client().get_paginator("list_objects_v2").paginate(Bucket=setup.bucket, Prefix=prefix)
    return sum(o["Size"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".tar"))


def balanced_noise_card(folder: Path, name: str, generator: str) -> dict:
    """A teacher-filtered noise card beside the spec, built by the job. Its scan of 24,576 candidates takes some
    seconds (the untrained teacher never fills most quotas), so two such builds overlap despite worker start-up."""
    card = {"name": name, "kind": "generated", "generator": generator, "image_size": 16, "seed": 7,
            "balance": {"per_class": 20, "candidates": 24576}}  # fmt: skip
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return {"name": name, "card": f"{name}.yaml"}


def test_submitted_study_runs_on_both_nodes_from_the_bucket_and_reports_from_the_server(setup: Setup) -> None:
    # the user's own card, beside the spec and in no image: `submit` ships it with the job
    (setup.folder / "cards").mkdir()
    card = (REPO / "datasets" / "digits_train.yaml").read_text().replace("name: digits_train", "name: my_digits")
    (setup.folder / "cards" / "my_digits.yaml").write_text(card)
    built = setup.kd("data", "build", "cards/my_digits.yaml", "--out", f"{setup.root}/shards")
    assert built.returncode == 0, built.stdout + built.stderr
    noise = [
        balanced_noise_card(setup.folder, n, g)
        for n, g in (("noise_a", "gaussian_noise"), ("noise_b", "uniform_noise"))
    ]
    spec = setup.spec_file("e2e", images=512, trials=1, card="cards/my_digits.yaml", arms=tuple(noise))
    job = setup.submit(spec)
    assert job.startswith("kd-study-e2e-") and job.endswith("-1")

    again = setup.kd("submit", str(spec), "--address", setup.cluster.dashboard_url, "--storage", setup.root)
    assert again.returncode == 2 and "already" in again.stdout and job in again.stdout  # no second copy

    refused = setup.kd("jobs", "--address", setup.cluster.dashboard_url, RAY_AUTH_MODE="", RAY_AUTH_TOKEN="")
    assert refused.returncode == 2 and "RAY_AUTH_TOKEN" in refused.stdout  # token authentication is on

    followed = setup.kd("logs", job, "--address", setup.cluster.dashboard_url, "--follow")
    assert followed.returncode == 0 and f"job {job}: SUCCEEDED" in followed.stdout, followed.stdout[-3000:]
    listed = setup.kd("jobs", "--address", setup.cluster.dashboard_url)
    assert job in listed.stdout and "SUCCEEDED" in listed.stdout

    runs = setup.trial_runs(spec)
    assert len(runs) == total_trials(StudySpec.model_validate(yaml.safe_load(spec.read_text()))) == 3
    assert all(r.info.status == "FINISHED" for r in runs)
    worker_id = setup.cluster.nodes[1].node_id()
    nodes = {n.node_id() for n in setup.cluster.nodes}
    assert {r.data.tags["node_id"] for r in runs} == nodes  # the first two trials side by side, one on each node
    teacher_id = load_meta(f"{setup.root}/teacher").teacher_id
    surrogate = {"digits": "my_digits", "noise_a": "noise_a", "noise_b": "noise_b"}
    for run in runs:  # eval splits (trial process) and the surrogate (its DataLoader worker), from the bucket
        folder = surrogate[run.data.tags["kd_study.arm"]]
        needed = object_bytes(setup, f"study/eval/{teacher_id}/") + object_bytes(setup, f"study/shards/{folder}/")
        assert run.data.metrics["s3_bytes_read"] >= needed > 0
    # the teacher's dataset was deleted before the job: the Fréchet reference came from the bucket too
    arm_runs = MlflowClient(setup.tracking).search_runs([runs[0].info.experiment_id], "tags.`kd_study.role` = 'arm'")
    assert [r.data.metrics.get("criteria.built.frechet_val", -1) > 0 for r in arm_runs] == [True] * 3

    # pre-sweep work as Ray tasks: the two balanced surrogates built side by side, one of them on the worker
    pieces = {n: shards.read_manifest(f"{setup.root}/shards/{n}").built_on for n in ("noise_a", "noise_b")}
    assert all(p is not None and {"build", "selection"} <= p.keys() for p in pieces.values()), pieces
    a, b = (p["build"] for p in pieces.values())  # type: ignore[index]
    assert a.started < b.ended and b.started < a.ended, pieces
    on_worker = [n for n, p in pieces.items() if p["build"].nodes == [worker_id]]  # type: ignore[index]
    assert len(on_worker) == 1, pieces
    assert pieces[on_worker[0]]["selection"].nodes == [worker_id]  # type: ignore[index]
    tags = {r.data.tags["kd_study.arm"]: r.data.tags for r in arm_runs}
    assert tags[on_worker[0]]["kd_study.node.build"] == tags[on_worker[0]]["kd_study.node.criteria"] == worker_id
    assert "kd_study.node.criteria" in tags["digits"] and "kd_study.node.build" not in tags["digits"]  # reused

    report = setup.kd(
        "report", str(spec), "--storage", setup.root, "--tracking-uri", setup.tracking, "--out", "report-copy"
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert "digits" in (setup.folder / "report-copy" / "report.md").read_text()


def test_killed_worker_node_resumes_from_the_bucket_and_a_stopped_job_resumes_when_resubmitted(setup: Setup) -> None:
    # 3 trials on 2 slots: A on the head, B on the worker, C created when A ends. Once the worker is dead the head
    # runs A, then B's retry (FIFO: B is older than C), then C; so when B reports from the head, C has not run and
    # the stopped study must be carried on by the second job, whatever the machine's speed.
    spec = setup.spec_file("e2e-recover", images=2048, trials=3)
    worker = setup.cluster.nodes[1]
    worker_id, head_id = worker.node_id(), setup.cluster.head.node_id()
    client = MlflowClient(setup.tracking)
    first = setup.submit(spec)

    def worker_trial_reported():
        runs = [r for r in setup.trial_runs(spec) if r.data.tags.get("node_id") == worker_id]
        return runs[0] if runs and "val_acc" in runs[0].data.metrics else None

    victim = wait_for("a report from the worker node", worker_trial_reported, timeout=180)
    os.kill(worker.raylet_pid(), signal.SIGKILL)
    history = client.get_metric_history(victim.info.run_id, "val_acc")
    assert max(m.step for m in history) < 2048, "the worker's trial ended before its node died: nothing to resume"

    def resumed_on_head():
        return client.get_run(victim.info.run_id).data.tags.get("node_id") == head_id

    wait_for("the killed trial to report again from the head", resumed_on_head, timeout=180)
    stopped = setup.kd("stop", first, "--address", setup.cluster.dashboard_url)
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    status = lambda: setup.kd("jobs", "--address", setup.cluster.dashboard_url).stdout  # noqa: E731
    wait_for("the first job to stop", lambda: any(first in ln and "STOPPED" in ln for ln in status().splitlines()), 60)
    ended = {r.data.tags["trial_id"]: r.info.end_time for r in setup.trial_runs(spec) if r.info.status == "FINISHED"}
    assert len(ended) < 3, "the first job ended every trial before it was stopped: nothing to resume"

    second = setup.submit(spec)
    assert second != first and second.endswith("-2")
    followed = setup.kd("logs", second, "--address", setup.cluster.dashboard_url, "--follow")
    assert followed.returncode == 0 and f"job {second}: SUCCEEDED" in followed.stdout, followed.stdout[-3000:]
    assert "resuming Tune experiment" in followed.stdout  # from the state in the bucket, not a new search

    runs = setup.trial_runs(spec)
    assert len(runs) == 3 and len({r.data.tags["trial_id"] for r in runs}) == 3  # resumed, never duplicated
    assert all(r.info.status == "FINISHED" for r in runs)
    # trials the first job finished were not rerun: their runs kept their end times
    assert {t: e for t, e in ((r.data.tags["trial_id"], r.info.end_time) for r in runs) if t in ended} == ended
    steps = [m.step for m in client.get_metric_history(victim.info.run_id, "val_acc")]
    # continued from its checkpoints in the bucket, never from zero: the first report was made once
    assert max(steps) == 2048 and steps.count(min(steps)) == 1 and min(steps) == 256
    # the second job's report, in the bucket: every trial, one row each, nothing partial
    report = f"{setup.root}/report/e2e-recover"
    assert "partial results" not in storage.read_bytes(f"{report}/report.md").decode()
    results = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{report}/results.parquet")))
    assert len(results) == 3
