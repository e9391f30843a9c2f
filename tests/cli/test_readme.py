"""The README says only what is true: every `kd-study` command in its shell blocks (and in docs/) parses against
the real CLI, the spec it shows is the bundled file, and every paragraph quoting measured figures names the commit
and command that produced them. (Commands run for real in tests/cli/test_cli.py, tests/cli/test_commands.py and
tests/orchestrate/test_quickstart.py.)"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from study.cli.app import app

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
MARKER = re.compile(
    r"figures (?:recorded|produced) at commit\s+`(?P<sha>[0-9a-f]{7,40})`:\s*"
    r"(?P<how>`[^`]+`|the (?:\w+ )?commands? (?:above|below))"
)


def readme_commands(text: str = README) -> list[list[str]]:
    """The `kd-study` command lines of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for lang, body in CODE_BLOCK.findall(text):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)
            for part in line.split("&&"):
                words = shlex.split(part)
                if words and words[0].endswith("kd-study") and words[0] in ("kd-study", ".venv/bin/kd-study"):
                    commands.append(words[1:])
    return commands


@functools.cache
def cli() -> typer.core.TyperGroup:
    return typer.main.get_command(app)  # type: ignore[return-value]


def parse(argv: list[str]) -> None:
    """Parse a command line as `kd-study` would, down to its leaf command, without running it: unknown options,
    extra arguments, missing required options and bad values raise click's UsageError/BadParameter."""
    command = cli()
    if argv == ["--version"]:  # an eager option: it prints and exits while the context is made
        with pytest.raises(typer.Exit) as done:
            command.make_context("kd-study", list(argv))
        assert done.value.exit_code == 0
        return
    ctx = command.make_context("kd-study", list(argv))
    while hasattr(command, "resolve_command"):  # a group: resolve the subcommand as Group.invoke does
        rest = [*ctx._protected_args, *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("doc", ["README.md", "docs/cluster.md", "docs/scale.md", "docs/reproduce.md"])
def test_every_documented_command_parses(doc: str) -> None:
    commands = readme_commands((REPO / doc).read_text())
    if doc == "README.md":
        assert len(commands) >= 20 and ["quickstart"] in commands
    for argv in commands:
        try:
            parse(argv)
        except Exception as err:  # click's errors say what is wrong; name the line with them
            pytest.fail(f"{doc}: `kd-study {shlex.join(argv)}` does not parse: {type(err).__name__}: {err}")


def test_a_wrong_command_line_is_caught() -> None:
    """The check above can fail: the README's old `--candidates a b` form, an unknown option, a missing one."""
    block = "```bash\nkd-study rank quickstart --candidates uniform_noise shaders   # two\n```\n"
    assert readme_commands(block) == [["rank", "quickstart", "--candidates", "uniform_noise", "shaders"]]
    for argv in (readme_commands(block)[0], ["data", "ls", "x", "--colour", "red"], ["trial", "quickstart"]):
        with pytest.raises(Exception, match=r"argument|option|Missing"):
            parse(argv)


def test_the_spec_shown_as_the_complete_example_is_the_bundled_quickstart() -> None:
    after = README[README.index("## A study spec") :]
    shown = next(body for lang, body in CODE_BLOCK.findall(after) if lang == "yaml")
    assert shown == (REPO / "tune_spaces" / "quickstart.yaml").read_text()


def figure_paragraphs(text: str = README) -> list[tuple[str, str, bool]]:
    """(section, paragraph, marked) for every paragraph outside code blocks quoting a measured percentage; a
    paragraph counts as marked when it, or an earlier paragraph of its `##` section, holds a figures marker."""
    out, section, marked = [], "", False
    for para in re.split(r"\n\s*\n", CODE_BLOCK.sub("\n\n", text)):
        if para.startswith("## "):
            section, marked = para.splitlines()[0], False
        marked = marked or bool(MARKER.search(para))
        if re.search(r"\d+\.\d+%", para):
            out.append((section, para, marked))
    return out


def test_every_quoted_figure_names_its_commit_and_command() -> None:
    figures = figure_paragraphs()
    assert figures
    unmarked = [f"{section}: {para[:80]}..." for section, para, marked in figures if not marked]
    assert not unmarked, "figures without 'figures recorded at commit `SHA`: `COMMAND`':\n" + "\n".join(unmarked)
    assert not figure_paragraphs("## A\n\nteacher 98.6%, digits 95.0%\n")[0][2]  # an unmarked figure is caught

    for marker in MARKER.finditer(README):
        how = marker["how"]
        if how.startswith("`"):
            argv = shlex.split(how.strip("`"))
            if argv[0] == "kd-study":
                parse(argv[1:])
            else:
                assert argv[:2] == ["python", argv[1]] and (REPO / argv[1]).is_file(), how
        if (REPO / ".git").exists():
            found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{marker['sha']}^{{commit}}"])
            assert found.returncode == 0, f"README names commit {marker['sha']}, which this clone does not hold"
