"""Options shared by the commands that read a study, and the one way they load its spec."""

from __future__ import annotations

import os
from typing import Annotated

import typer

StorageOption = Annotated[
    str | None, typer.Option("--storage", help="Study root: a folder or s3://bucket/prefix (sets storage.root).")
]
RootOption = Annotated[str | None, typer.Option("--root", help="Alias of --storage.")]
TrackingOption = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow store: sqlite:////abs/path.db or http://host:5000 (default: $MLFLOW_TRACKING_URI, then the "
        "spec's tracking.uri).",
    ),
]
RayAddressOption = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (e.g. auto).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a spec field, typed by the spec's schema: --set train.lr=0.05 (repeatable). Storage, "
        "tracking and resources keep the study's identity; anything else makes a new study.",
    ),
]
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def tracking_override(tracking_uri: str | None) -> tuple[str | None, str]:
    """The tracking URI that wins (flag > $MLFLOW_TRACKING_URI > the spec's) and where it came from."""
    if tracking_uri is not None:
        return tracking_uri, "--tracking-uri"
    if os.environ.get(TRACKING_ENV):
        return os.environ[TRACKING_ENV], TRACKING_ENV
    return None, "tracking.uri"


def load_spec(
    spec: str,
    storage: str | None,
    root: str | None,
    tracking_uri: str | None,
    ray_address: str | None = None,
    sets: list[str] | None = None,
):
    """The spec with `--set` applied and the where-it-runs overrides (never its science: the study keeps its
    identity). Returns (spec path, spec, the field the tracking URI came from)."""
    from study.config import SpecError, apply_overrides, load_study
    from study.resources import resolve_spec_path

    if storage is not None and root is not None:
        raise SpecError("give --storage or its alias --root, not both")
    spec_path = resolve_spec_path(spec)
    uri, source = tracking_override(tracking_uri)
    study_spec = apply_overrides(
        load_study(spec_path, sets or ()), storage=storage or root, tracking_uri=uri, ray_address=ray_address
    )
    return spec_path, study_spec, source
