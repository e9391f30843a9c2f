"""`kd-study doctor` against a loopback S3 server (moto) and a real `mlflow server`, here and through a Ray task on
every node of the test session's Ray runtime: all rows pass; with the S3 server stopped the storage row fails and
the command exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli.app import app
from study.orchestrate.doctor import run_doctor
from tests.ray_cluster import mlflow_server
from tests.s3_servers import run_moto

runner = CliRunner()
ROWS = ["torch / CUDA", "EGL (shaders)", "storage", "tracking", "shard cache disk"]


@pytest.mark.slow
def test_doctor_passes_on_loopback_services_and_fails_the_storage_row_without_s3(
    ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from study import storage

    with mlflow_server(tmp_path) as tracking:
        with run_moto() as s3:
            s3.activate(monkeypatch)
            uri = f"s3://{s3.make_bucket('doctor')}/study"
            # the library, here and on every node of the session's runtime (one pinned Ray task per node)
            rows = run_doctor(uri, tracking, ray_address="session", cache=str(tmp_path / "cache"))
            assert [r.name for r in rows] == ROWS * 2, rows
            assert all(r.ok for r in rows), [r for r in rows if not r.ok]
            assert rows[0].node.startswith("local") and not rows[len(ROWS)].node.startswith("local")
            ok = runner.invoke(app, ["doctor", "--storage", uri, "--tracking-uri", tracking])
            assert ok.exit_code == 0, ok.output
            assert "all 5 checks passed" in ok.output and "FAIL" not in ok.output
            assert not s3.client().list_objects_v2(Bucket=uri[5:].split("/")[0]).get("Contents")  # probe removed
        monkeypatch.setenv("KD_STUDY_S3_MAX_ATTEMPTS", "2")  # the server is gone: fail fast
        storage.s3_client.cache_clear()
        down = runner.invoke(app, ["doctor", "--storage", uri, "--tracking-uri", tracking])
    assert down.exit_code == 1, down.output
    failed = [r for r in run_doctor(uri, None) if not r.ok]
    assert [r.name for r in failed] == ["storage"], failed
    assert "1 check(s) failed" in down.output
