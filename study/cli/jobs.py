"""`kd-study submit / jobs / logs / stop`: studies as Ray Jobs on a cluster (the logic is in `study.orchestrate.jobs`).

`study.cli` registers these commands on its app with `register`, handing over its console and error handling;
this module never imports `study.cli`, so `python -m study.cli` (where that module runs as `__main__`) sees them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

_HOST: dict[str, Any] = {"console": Console(), "user_errors": contextlib.nullcontext, "debug": {"on": False}}


def register(
    app: typer.Typer,
    console: Console,
    user_errors: Callable[[], AbstractContextManager[None]],
    debug: dict[str, bool],
) -> None:
    """Add the job commands to `app`, printing on its console and handling errors as its other commands do."""
    _HOST.update(console=console, user_errors=user_errors, debug=debug)
    for command in (submit, jobs, logs, stop):
        app.command()(command)


def _console() -> Console:
    return _HOST["console"]


ADDRESS_HELP = "The Ray dashboard of the cluster, e.g. http://HEAD:8265 (or $RAY_API_SERVER_ADDRESS)."


@contextlib.contextmanager
def job_errors() -> Iterator[None]:
    """A refused or unreachable job request prints one clear message and exits 2."""
    from study.orchestrate.jobs import JobError

    with _HOST["user_errors"]():
        try:
            yield
        except JobError as err:
            if _HOST["debug"]["on"]:
                raise
            _console().print(f"[bold red]error:[/] {err}", soft_wrap=True)
            raise typer.Exit(2) from None


def _follow(address: str, job_id: str) -> None:
    from study.orchestrate.jobs import follow_logs

    status = follow_logs(address, job_id, lambda text: _console().out(text, end="", highlight=False))
    _console().print(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def submit(
    spec: Annotated[str, typer.Argument(help="Study spec (YAML path or bundled name).")],
    address: Annotated[str, typer.Option(help=ADDRESS_HELP, envvar="RAY_API_SERVER_ADDRESS")],
    storage: Annotated[str | None, typer.Option(help="Study root on the cluster (e.g. s3://bucket/study).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking server every node reaches.")] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a spec field: --set train.lr=0.05 (repeatable), as `run` takes it."),
    ] = None,
    follow: Annotated[bool, typer.Option(help="Stream the job's logs until it ends.")] = False,
) -> None:
    """Run a study on a Ray cluster as a Ray Job (card files beside the spec travel with it); resubmitting resumes
    it (never runs it twice)."""
    from study.orchestrate.jobs import submit_study
    from study.resources import resolve_spec_path

    with job_errors():
        sub = submit_study(resolve_spec_path(spec), address, storage, tracking_uri, sets or ())
        state = f"resuming after {sub.earlier_jobs} earlier job(s)" if sub.earlier_jobs else "first job of this study"
        _console().print(f"submitted {sub.study_key} ({state})", soft_wrap=True)
        print(sub.job_id, flush=True)
        if follow:
            _follow(address, sub.job_id)


def jobs(address: Annotated[str, typer.Option(help=ADDRESS_HELP, envvar="RAY_API_SERVER_ADDRESS")]) -> None:
    """List the cluster's jobs (kd-study studies and others)."""
    from study.orchestrate.jobs import META_STUDY, list_jobs

    with job_errors():
        table = Table()
        table.add_column("job", no_wrap=True)  # ids are what the other commands take: never broken across lines
        for name in ("status", "study", "started", "entrypoint"):
            table.add_column(name)
        for job in list_jobs(address):
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.start_time / 1000)) if job.start_time else ""
            study = (job.metadata or {}).get(META_STUDY, "")
            table.add_row(job.submission_id or job.job_id or "", str(job.status), study, started, job.entrypoint)
    _console().print(table)


def logs(
    job: Annotated[str, typer.Argument(help="Job id (as `kd-study submit` printed it).")],
    address: Annotated[str, typer.Option(help=ADDRESS_HELP, envvar="RAY_API_SERVER_ADDRESS")],
    follow: Annotated[bool, typer.Option(help="Keep streaming until the job ends.")] = False,
) -> None:
    """Print a job's logs."""
    from study.orchestrate.jobs import job_logs

    with job_errors():
        if follow:
            _follow(address, job)
        else:
            _console().out(job_logs(address, job), end="", highlight=False)


def stop(
    job: Annotated[str, typer.Argument(help="Job id.")],
    address: Annotated[str, typer.Option(help=ADDRESS_HELP, envvar="RAY_API_SERVER_ADDRESS")],
) -> None:
    """Stop a running job; its study resumes from its storage when submitted again."""
    from study.orchestrate.jobs import stop_job

    with job_errors():
        stopped = stop_job(address, job)
    _console().print(f"job {job}: {'stopping' if stopped else 'had already ended'}")
