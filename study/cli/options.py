"""Options shared by the commands that read a study."""

from __future__ import annotations

from typing import Annotated

import typer

StorageOption = Annotated[
    str | None, typer.Option("--storage", help="Study root: a folder or s3://bucket/prefix (sets storage.root).")
]
RootOption = Annotated[str | None, typer.Option("--root", help="Alias of --storage.")]
TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow store: sqlite:////abs/path.db or http://host:5000.")
]
RayAddressOption = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (e.g. auto).")]


def load_spec(spec: str, storage: str | None, root: str | None, tracking_uri: str | None, ray_address: str | None):
    """The spec with the where-it-runs overrides applied (never its science: the study keeps its identity)."""
    from study.config import SpecError, apply_overrides, load_study
    from study.resources import resolve_spec_path

    if storage is not None and root is not None:
        raise SpecError("give --storage or its alias --root, not both")
    spec_path = resolve_spec_path(spec)
    study_spec = apply_overrides(
        load_study(spec_path), storage=storage or root, tracking_uri=tracking_uri, ray_address=ray_address
    )
    return spec_path, study_spec
