"""The `kd-study` command line: parses, loads a spec, calls one library function, prints with rich."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from study.cli import data, doctor, jobs, report, run, teacher, validate
from study.cli.console import DEBUG, console, user_errors


class DebugAnywhere(TyperGroup):
    """`--debug` is a root option, accepted anywhere on the line: `kd-study run spec.yaml --debug` too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args[1:]:
            cut = args.index("--") if "--" in args else len(args)
            if "--debug" in args[1:cut]:
                args = ["--debug", *(a for i, a in enumerate(args) if not (a == "--debug" and i < cut))]
        return super().parse_args(ctx, args)


def _version(value: bool) -> None:
    if value:
        from study import __version__

        console.print(f"kd-study {__version__}", highlight=False)
        raise typer.Exit()


app = typer.Typer(
    cls=DebugAnywhere,
    no_args_is_help=True,
    help="kd-study: which surrogate dataset should I distill on? Build surrogates, distill, rank (Frank & Davis, "
    "CVPR 2025).",
)
app.add_typer(teacher.teacher_app, name="teacher")
app.add_typer(data.data_app, name="data")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors (anywhere on the line).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    DEBUG["on"] = debug
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # MLflow and its migrations log at INFO through their own handlers
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


validate.register(app)
run.register(app)
report.register(app)
doctor.register(app)
jobs.register(app, console, user_errors, DEBUG)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
