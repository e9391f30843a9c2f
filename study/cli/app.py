"""The `kd-study` command line: parses, loads a spec, calls one library function, prints with rich."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from study.cli import data, doctor, jobs, report, run, teacher
from study.cli.console import DEBUG, console, user_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="kd-study: which surrogate dataset should I distill on? Build surrogates, distill, rank (Frank & Davis, "
    "CVPR 2025).",
)
app.add_typer(teacher.teacher_app, name="teacher")
app.add_typer(data.data_app, name="data")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    DEBUG["on"] = debug
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # MLflow and its migrations log at INFO through their own handlers
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


run.register(app)
report.register(app)
doctor.register(app)
jobs.register(app, console, user_errors, DEBUG)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
