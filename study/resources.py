"""Locate the specs and cards that ship with kd-study.

`tune_spaces/` and `datasets/` live at the repository root and are copied
into the wheel under `study/_bundled/`, so the quickstart works from a source checkout and from an installed wheel.
"""

from __future__ import annotations

import difflib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """Directory of a shipped resource tree (`tune_spaces` or `datasets`)."""
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"kd-study installation is missing its bundled '{name}/' directory")


def resolve_card_path(ref: str, base: Path | None = None) -> Path:
    """A card given by name (a bundled `datasets/<name>.yaml`) or by path (relative to `base`)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_absolute() and base is not None:
            path = base / path
        return path
    return bundled_dir("datasets") / f"{ref}.yaml"


def resolve_spec_path(ref: str) -> Path:
    """A study spec given by path, or by name of a bundled `tune_spaces/<name>.yaml`."""
    path = Path(ref)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = bundled_dir("tune_spaces") / f"{ref}.yaml"
    if not bundled.is_file():
        names = bundled_names("tune_spaces")
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FileNotFoundError(
            f"{ref}: no such spec file, and no bundled spec of that name{hint}; bundled: {', '.join(names)}"
        )
    return bundled


def bundled_names(name: str) -> list[str]:
    """Names of the bundled `tune_spaces` specs or `datasets` cards (file stems), sorted."""
    return sorted(p.stem for p in bundled_dir(name).glob("*.yaml"))
