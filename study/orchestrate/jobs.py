"""Studies as Ray Jobs: `kd-study submit / jobs / logs / stop`, and the driver a submitted study runs.

What travels and what does not: the spec (with its `--set` overrides applied) travels as YAML text in the job's
runtime_env (an environment variable), and so do the card files it names beside it (`$KD_STUDY_FILES_JSON`, their
paths relative to the spec's folder), so a custom surrogate needs no new image; the where-it-runs overrides travel in
the entrypoint; the code does not travel at all. The cluster runs the kd-study installed
in its image (cluster/Dockerfile), so a submission never uploads the submitter's working directory, which may hold
a multi-GB virtualenv and shards.

Why submission ids are derived from the study: a study submitted twice must resume, never run twice. Each study
(its key: spec name + the spec's science hash, so storage/tracking/resources overrides do not change it) gets ids
`kd-study-<key>-<n>`, n counting its earlier jobs on this cluster. A submission is refused while
a job of the same study is pending or running; two racing submissions pick the same id and Ray accepts only one.
The study itself resumes from its storage (Tune state and checkpoints under the study root, runs in MLflow).

Authentication: the cluster's token comes from Ray's standard settings (`RAY_AUTH_MODE=token` and the token in
`RAY_AUTH_TOKEN`, a file named by `RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`), which Ray's job client reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml

from study.config import (
    SpecError,
    StudySpec,
    apply_overrides,
    apply_sets,
    check_tracking_uri,
    load_card,
    load_model,
    load_study,
    read_yaml,
)

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

log = logging.getLogger(__name__)
T = TypeVar("T")

SPEC_ENV = "KD_STUDY_SPEC_YAML"
FILES_ENV = "KD_STUDY_FILES_JSON"
MAX_FILES_BYTES = 1_000_000
"""Card files ride in an environment variable of the job: a few YAML files, not data."""
STORAGE_ENV, TRACKING_ENV = "KD_STUDY_STORAGE", "MLFLOW_TRACKING_URI"
DRIVER_MODULE = "study.orchestrate.jobs"
META_KEY, META_STUDY = "kd_study.study_key", "kd_study.study"
ACTIVE = ("PENDING", "RUNNING")
# Ray's job client prefers these environment variables over an explicit address (ray.dashboard.utils).
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class JobError(RuntimeError):
    """A job request the cluster refused or cannot serve; the message says what to do."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    study_key: str
    earlier_jobs: int


def study_key(spec: StudySpec) -> str:
    """`<name>-<science hash>` of the spec alone. The MLflow experiment's hash also covers the teacher's weights and
    the cards' contents, but those live in the study's storage, which the submitting machine may not reach."""
    return f"{spec.name}-{spec.science_hash()[:8]}"


@dataclass(frozen=True)
class JobPayload:
    """What `submit_job` sends: a command and a runtime_env holding the spec, nothing from the working dir."""

    entrypoint: str
    runtime_env: dict[str, dict[str, str]]
    metadata: dict[str, str]


def job_payload(
    spec: StudySpec,
    spec_yaml: str,
    storage: str | None,
    tracking_uri: str | None,
    files: dict[str, str] | None = None,
) -> JobPayload:
    args = ["python", "-m", DRIVER_MODULE]
    if storage:
        args += ["--storage", storage]
    if tracking_uri:
        args += ["--tracking-uri", check_tracking_uri(tracking_uri)]  # the command is shown to anyone
    return JobPayload(
        entrypoint=shlex.join(args),
        runtime_env={"env_vars": {SPEC_ENV: spec_yaml, **({FILES_ENV: json.dumps(files)} if files else {})}},
        metadata={META_KEY: study_key(spec), META_STUDY: spec.name},
    )


def _inside(folder: Path, base: Path, ref: str, where: str) -> Path:
    path = (base / ref).resolve()
    if Path(ref).is_absolute() or not path.is_relative_to(folder):
        raise SpecError(
            f"{where}: card file '{ref}' is not inside the spec's folder {folder}: only files beside the spec travel "
            "with a submitted study (move it there, or add it to datasets/ in the image)"
        )
    if not path.is_file():
        raise SpecError(f"{where}: card file {path} not found")
    return path


def card_files(spec: StudySpec, source: Path) -> dict[str, str]:
    """The card files the spec names (and the components of mixture cards among them), as text by their path
    relative to the spec's folder: what the job's driver needs beside the spec. Bundled cards stay behind (the
    image has them)."""
    folder = source.resolve().parent
    files: dict[str, str] = {}
    queue = [(a.card, folder, f"{source}: arms.{i}.card") for i, a in enumerate(spec.arms)]
    while queue:
        ref, base, where = queue.pop(0)
        if Path(ref).suffix not in (".yaml", ".yml"):
            continue
        path = _inside(folder, base, ref, where)
        rel = path.relative_to(folder).as_posix()
        if rel in files:
            continue
        files[rel] = path.read_text()
        card = load_card(path)
        for j, component in enumerate(card.components or []):
            queue.append((component.card, path.parent, f"{path}: components.{j}.card"))
    if sum(len(t) for t in files.values()) > MAX_FILES_BYTES:
        raise SpecError(f"{source}: card files beside the spec exceed {MAX_FILES_BYTES:,} bytes; put data in storage")
    return files


def check_submittable(spec: StudySpec, source: Path) -> None:
    """Refuse what cannot work on a cluster before anything is sent: card files outside the spec's folder."""
    card_files(spec, source)


def write_files(files: dict[str, str], folder: Path) -> None:
    """The submitted card files under `folder`, at their paths relative to the spec (the driver's cards_dir)."""
    for rel, text in files.items():
        path = (folder / rel).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise SpecError(f"${FILES_ENV}: '{rel}' leaves the spec's folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Hide RAY_ADDRESS / RAY_API_SERVER_ADDRESS while the client resolves its address, so `--address` wins."""
    saved = {k: os.environ.pop(k) for k in ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str) -> JobSubmissionClient:
    """A job client for the dashboard at `address` (http://HEAD:8265); a clear error if it is not reachable."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not re.match(r"^https?://", address):
        raise JobError(f"--address '{address}': expected the dashboard's URL, e.g. http://HEAD:8265")
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, AuthenticationError) as err:
        raise JobError(_explain(address, err)) from None


def _explain(address: str, err: Exception) -> str:
    from ray.exceptions import AuthenticationError

    text = str(err)
    if isinstance(err, AuthenticationError) or "401" in text or "403" in text:
        return (
            f"{address}: the cluster refused the request ({text.splitlines()[0]}). It requires Ray's token: "
            "export RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or ~/.ray/auth_token)."
        )
    return f"{address}: {text.splitlines()[0] if text else type(err).__name__}"


def _call(address: str, request: Callable[[], T]) -> T:
    from ray.exceptions import AuthenticationError

    try:
        return request()
    except (RuntimeError, AuthenticationError) as err:
        raise JobError(_explain(address, err)) from None


def study_jobs(client: JobSubmissionClient, key: str) -> list[JobDetails]:
    """This study's submitted jobs on the cluster, oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get(META_KEY) == key]
    return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def submit_study(
    spec_path: Path,
    address: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> Submission:
    """Submit the study in `spec_path` as a Ray Job; resumes (a new job on the same storage), never duplicates."""
    spec = load_study(spec_path, sets)
    spec_yaml = spec_path.read_text()
    if sets:  # the spec as the user's --set made it, in the user's own terms (no defaults filled in)
        spec_yaml = yaml.safe_dump(apply_sets(read_yaml(spec_path), sets), sort_keys=False)
    payload = job_payload(spec, spec_yaml, storage, tracking_uri, card_files(spec, spec_path))
    key = payload.metadata[META_KEY]
    client = connect(address)
    earlier = _call(address, lambda: study_jobs(client, key))
    active = [j for j in earlier if str(j.status) in ACTIVE]
    if active:
        job = active[-1].submission_id
        raise JobError(
            f"study '{spec.name}' ({key}) is already {active[-1].status} as job {job}: "
            f"follow it with `kd-study logs {job} --follow` or stop it with `kd-study stop {job}`"
        )
    prefix = f"kd-study-{key}-"
    numbers = [int(n) for j in earlier if (n := (j.submission_id or "").removeprefix(prefix)).isdigit()]
    submission_id = f"{prefix}{max(numbers, default=0) + 1}"
    job_id = _call(
        address,
        lambda: client.submit_job(
            entrypoint=payload.entrypoint,
            runtime_env=payload.runtime_env,
            metadata=payload.metadata,
            submission_id=submission_id,
        ),
    )
    return Submission(job_id, key, len(earlier))


def list_jobs(address: str) -> list[JobDetails]:
    client = connect(address)
    jobs = _call(address, client.list_jobs)
    return sorted(jobs, key=lambda j: j.start_time or 0)


def job_status(address: str, job_id: str) -> str:
    client = connect(address)
    return str(_call(address, lambda: client.get_job_status(job_id)))


def job_logs(address: str, job_id: str) -> str:
    client = connect(address)
    return _call(address, lambda: client.get_job_logs(job_id))


def follow_logs(address: str, job_id: str, write: Callable[[str], None]) -> str:
    """Stream a job's logs to `write` until it ends; returns its final status."""
    client = connect(address)
    _call(address, lambda: client.get_job_info(job_id))  # a clear error for an unknown job

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    return str(_call(address, lambda: client.get_job_status(job_id)))


def stop_job(address: str, job_id: str) -> bool:
    """Ask the cluster to stop a job; False if it had already ended."""
    client = connect(address)
    return _call(address, lambda: client.stop_job(job_id))


# ------------------------------------------------------------------------------------------- the job's driver
class LogProgress:
    """ProgressSink for a job's log: one line per finished trial (`kd-study logs` shows it)."""

    def task(self, key: str, description: str, total: int | None) -> None:
        print(f"{description}", flush=True)

    def update(self, key: str, completed: int, total: int | None = None) -> None:
        if key == "sweep":
            print(f"trials finished: {completed}/{total}", flush=True)


def driver_main(argv: list[str] | None = None) -> int:
    """Entry point of a submitted study (`python -m study.orchestrate.jobs`): the spec from $KD_STUDY_SPEC_YAML."""
    from study.orchestrate.pipeline import run_study

    parser = argparse.ArgumentParser(prog=f"python -m {DRIVER_MODULE}", description=driver_main.__doc__)
    # A cluster's own settings (KubeRay's ConfigMap) apply when the submitter gave none.
    parser.add_argument(
        "--storage",
        default=os.environ.get(STORAGE_ENV) or None,
        help=f"Study root (folder or s3:// URI) instead of the spec's storage.root (default ${STORAGE_ENV}).",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get(TRACKING_ENV) or None,
        help=f"MLflow tracking URI instead of the spec's tracking.uri (default ${TRACKING_ENV}).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    text = os.environ.get(SPEC_ENV)
    if not text:
        print(f"error: ${SPEC_ENV} is empty: submit studies with `kd-study submit`", file=sys.stderr)
        return 2
    source = Path(f"<submitted spec in ${SPEC_ENV}>")
    try:
        spec = load_model(source, StudySpec, yaml.safe_load(text))
    except (SpecError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        spec = apply_overrides(spec, storage=args.storage, tracking_uri=args.tracking_uri)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kd-study-cards-") as cards_dir:
        # the user's card files, as they lay beside the spec on the submitting machine
        write_files(json.loads(os.environ.get(FILES_ENV) or "{}"), Path(cards_dir))
        outcome = run_study(spec, progress=LogProgress(), cards_dir=cards_dir)
    print(f"study {spec.name} done: report {outcome.report.markdown if outcome.report else '-'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(driver_main())
