"""The command line as a user meets it: clear errors without tracebacks, data commands on real shards."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from study.cli.app import app
from study.config import SpecError

runner = CliRunner()


def test_spec_with_unknown_key_fails_naming_file_and_field_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\narms: [{name: a, card: digits_train, colour: red}]\n")
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "arms.0.colour: unknown field" in result.output
    assert "Traceback" not in result.output


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    """Without --debug the error is one message and exit 2; with it, the SpecError itself propagates (typer prints
    its traceback)."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\narms: []\n")
    plain = runner.invoke(app, ["run", str(spec)])
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit) and "error:" in plain.output
    debug = runner.invoke(app, ["--debug", "run", str(spec)])
    assert isinstance(debug.exception, SpecError) and "bad.yaml" in str(debug.exception)
    assert debug.exc_info is not None and debug.exc_info[2] is not None  # the traceback typer shows


def test_missing_teacher_names_the_path(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: x\narms: [{{name: a, card: digits_train}}]\nstorage: {{root: {tmp_path}}}\n")
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 2
    assert str(tmp_path / "teacher" / "meta.json") in result.output.replace("\n", "")


def test_data_build_verify_and_ls(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = runner.invoke(app, ["data", "build", "digits_train", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["data", "verify", str(out / "digits_train")]).exit_code == 0
    listing = runner.invoke(app, ["data", "ls", str(out)])
    assert "digits_train" in listing.output and "1257" in listing.output
    shard = out / "digits_train" / "shard-000000.tar"
    os.truncate(shard, shard.stat().st_size // 3)
    bad = runner.invoke(app, ["data", "verify", str(out / "digits_train")])
    assert bad.exit_code == 2 and "shard-000000.tar" in bad.output.replace("\n", "")


def test_unknown_card_names_the_file_it_looked_for(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "build", "no_such_card", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no_such_card.yaml: file not found" in result.output.replace("\n", "")
