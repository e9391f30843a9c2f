"""Credentials never ride in a tracking URI: it is shown by `kd-study jobs`, pickled into Tune's state and printed.

A URI with `user:password@` is refused wherever it can enter (spec file, --tracking-uri override, job submission),
with a message that points at MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and never repeats the secret.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from study.config import SpecError, apply_overrides, check_tracking_uri, load_study
from study.orchestrate.jobs import job_payload
from study.resources import bundled_dir

SECRET = "hunter2-s3cr3t"
WITH_CREDENTIALS = f"https://alice:{SECRET}@mlflow.example.org:5000"


def quickstart():
    return load_study(bundled_dir("tune_spaces") / "quickstart.yaml")


def test_spec_file_with_credentials_in_tracking_uri_is_refused_naming_the_field(tmp_path: Path) -> None:
    text = (bundled_dir("tune_spaces") / "quickstart.yaml").read_text()
    path = tmp_path / "study.yaml"
    assert "\ntracking:\n  uri: sqlite:///mlflow.db\n" in text  # the spec's own tracking block, replaced below
    text = text.replace("\ntracking:\n  uri: sqlite:///mlflow.db\n", f"\ntracking:\n  uri: '{WITH_CREDENTIALS}'\n")
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_study(path)
    message = str(caught.value)
    assert "tracking.uri" in message and "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert SECRET not in message


def test_override_and_job_submission_refuse_credentials_without_repeating_them() -> None:
    spec = quickstart()
    for attempt in (
        lambda: apply_overrides(spec, tracking_uri=WITH_CREDENTIALS),
        lambda: job_payload(spec, "name: x", None, WITH_CREDENTIALS),
    ):
        with pytest.raises(SpecError, match="MLFLOW_TRACKING_USERNAME") as caught:
            attempt()
        assert SECRET not in str(caught.value)


def test_uris_without_credentials_pass_unchanged() -> None:
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.org", "sqlite:///mlflow.db", "databricks"):
        assert check_tracking_uri(uri) == uri
    spec = apply_overrides(quickstart(), tracking_uri="http://mlflow:5000")
    assert spec.tracking.uri == "http://mlflow:5000"
    assert job_payload(spec, "name: x", None, "http://mlflow:5000").entrypoint.endswith(
        "--tracking-uri http://mlflow:5000"
    )
