"""The package layout as a contract: import-linter's layers, independence and acyclicity contracts (pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the `study` package found under `tree`, with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", str(REPO / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def study_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "study", tmp_path / "study", ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n\ndef _added() -> None:\n    {statement}  # noqa\n")


class TestLayerContracts:
    def test_the_package_keeps_every_contract(self) -> None:
        run = lint_imports(REPO)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "0 broken" in run.stdout

    def test_an_upward_import_breaks_the_layers_and_is_named(self, study_copy: Path) -> None:
        # a function-level import counts as much as a top-level one
        add_import(study_copy / "study" / "models" / "registry.py", "import study.orchestrate.pipeline")
        run = lint_imports(study_copy)
        assert run.returncode == 1, run.stdout
        assert "Layers: each layer imports only the layers below it BROKEN" in run.stdout
        assert "study.models.registry -> study.orchestrate.pipeline" in run.stdout

    def test_a_cycle_between_sibling_modules_is_refused(self, study_copy: Path) -> None:
        # the cycle the layout removed: the builder and the mixture builder importing each other
        add_import(study_copy / "study" / "data" / "mixture.py", "from study.data.build import build_surrogate")
        run = lint_imports(study_copy)
        assert run.returncode == 1, run.stdout
        assert "No import cycles between sibling modules or packages, at any depth BROKEN" in run.stdout
        assert "in study.data" in run.stdout and ".mixture -> .build" in run.stdout

    def test_a_new_top_level_module_must_be_placed_in_a_layer(self, study_copy: Path) -> None:
        (study_copy / "study" / "helpers.py").write_text('"""Unplaced."""\n')
        run = lint_imports(study_copy)
        assert run.returncode == 1, run.stdout
        assert "helpers" in run.stdout
