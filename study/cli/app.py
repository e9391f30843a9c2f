"""The `kd-study` command line: parses, loads a spec, calls one library function, prints with rich."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from study.cli import data, doctor, jobs, report, run, teacher, validate
from study.cli.console import DEBUG, console, user_errors

# typer vendors click and exports only this subclass of click's UsageError (bad value, unknown command, no command)
UsageError = typer.BadParameter.__base__


class DebugAnywhere(TyperGroup):
    """`--debug` is a root option, accepted anywhere on the line: `kd-study run spec.yaml --debug` too."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if "--debug" in args[1:]:
            cut = args.index("--") if "--" in args else len(args)
            if "--debug" in args[1:cut]:
                args = ["--debug", *(a for i, a in enumerate(args) if not (a == "--debug" and i < cut))]
        return super().parse_args(ctx, args)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """A usage error (bad option value, unknown command) is one line naming the command and the option, like
        every other user error, not typer's boxed panel; exit code 2 as click gives it."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as err:
            if type(err).__name__ != "NoArgsIsHelpError":  # that one's help is already printed
                where = err.ctx.command_path if err.ctx is not None else "kd-study"
                console.print(
                    f"[bold red]error:[/] {where}: {err.format_message()} (see '{where} --help')",
                    soft_wrap=True, highlight=False,
                )  # fmt: skip
            sys.exit(err.exit_code)
        except typer.Abort:
            console.print("Aborted.", highlight=False)
            sys.exit(1)
        # without standalone mode an explicit Exit comes back as its code, a finished command as its None
        sys.exit(code if isinstance(code, int) else 0)


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
