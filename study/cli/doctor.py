"""`kd-study doctor`: one table of readiness checks, here and on every node of a cluster; exit 1 on any failure."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from study.cli.console import console
from study.cli.options import RayAddressOption


def doctor(
    storage: Annotated[
        str | None, typer.Option("--storage", help="Check read/write to this folder or s3://bucket/prefix.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="Check this MLflow store.")] = None,
    ray_address: RayAddressOption = None,
    cache: Annotated[
        str | None, typer.Option("--cache", help="Shard cache folder (default: KD_STUDY_SHARD_CACHE or the temp dir).")
    ] = None,
) -> None:
    """Check torch/CUDA/driver, EGL, storage, tracking and shard-cache disk, here and on every cluster node."""
    from study.orchestrate.doctor import run_doctor

    rows = run_doctor(storage, tracking_uri, ray_address, cache)
    table = Table(title="kd-study doctor")
    for col in ("node", "check", "", "detail"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(row.node, row.name, "[green]ok[/]" if row.ok else "[bold red]FAIL[/]", row.detail)
    console.print(table)
    failed = [r for r in rows if not r.ok]
    if failed:
        console.print(f"[bold red]{len(failed)} check(s) failed[/]")
        raise typer.Exit(1)
    console.print(f"all {len(rows)} checks passed")


def register(app: typer.Typer) -> None:
    app.command()(doctor)
