"""`study.orchestrate.jobs` without a cluster: what a submission carries, and what is refused before anything is sent.

The submission itself (a real 2-node Ray cluster, S3 and MLflow server) is tests/orchestrate/test_cluster_e2e.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from study.config import SpecError, StudySpec, load_study
from study.orchestrate.jobs import (
    DRIVER_MODULE,
    FILES_ENV,
    META_KEY,
    SPEC_ENV,
    JobError,
    card_files,
    check_submittable,
    connect,
    driver_main,
    job_payload,
    study_key,
    write_files,
)
from study.orchestrate.validation import load_cards
from study.resources import resolve_spec_path


@pytest.fixture
def quickstart() -> tuple[StudySpec, str]:
    path = resolve_spec_path("quickstart")
    return load_study(path), path.read_text()


class TestPayload:
    def test_the_spec_travels_in_the_runtime_env_and_no_files_do(self, quickstart: tuple[StudySpec, str]) -> None:
        spec, text = quickstart
        payload = job_payload(spec, text, None, None)
        assert payload.runtime_env == {"env_vars": {SPEC_ENV: text}}
        assert StudySpec.model_validate(yaml.safe_load(payload.runtime_env["env_vars"][SPEC_ENV])) == spec
        assert shlex.split(payload.entrypoint) == ["python", "-m", DRIVER_MODULE]

    def test_overrides_travel_quoted_in_the_entrypoint(self, quickstart: tuple[StudySpec, str]) -> None:
        spec, text = quickstart
        payload = job_payload(spec, text, "s3://b/my study", "http://mlflow:5000")
        assert shlex.split(payload.entrypoint)[3:] == [
            "--storage",
            "s3://b/my study",
            "--tracking-uri",
            "http://mlflow:5000",
        ]

    def test_jobs_are_labelled_with_a_study_key_overrides_do_not_change(
        self, quickstart: tuple[StudySpec, str]
    ) -> None:
        spec, text = quickstart
        here = job_payload(spec, text, None, None).metadata[META_KEY]
        there = job_payload(spec, text, "s3://b/x", "http://m:5000").metadata[META_KEY]
        assert here == there == study_key(spec)
        other = spec.model_copy(update={"seed": spec.seed + 1})
        assert study_key(other) != here


class TestCardFilesTravel:
    def test_card_files_beside_the_spec_travel_with_the_job_and_resolve_the_same_there(self, tmp_path: Path) -> None:
        here = tmp_path / "laptop"
        (here / "cards" / "parts").mkdir(parents=True)
        (here / "cards" / "parts" / "noise.yaml").write_text(
            "name: my_noise\nkind: generated\ngenerator: uniform_noise\ncount: 256\n"
        )
        (here / "cards" / "blend.yaml").write_text(
            "name: my_blend\nkind: mixture\ncount: 256\n"
            "components: [{card: parts/noise.yaml, weight: 1}, {card: dead_leaves, weight: 1}]\n"
        )
        spec_path = here / "s.yaml"
        spec_path.write_text(
            "name: s\narms: [{name: blend, card: cards/blend.yaml}, {name: digits, card: digits_train}]\n"
        )
        spec = load_study(spec_path)
        files = card_files(spec, spec_path)
        assert sorted(files) == ["cards/blend.yaml", "cards/parts/noise.yaml"]  # the bundled card stays behind
        env = job_payload(spec, spec_path.read_text(), None, None, files).runtime_env["env_vars"]
        there = tmp_path / "driver"
        write_files(json.loads(env[FILES_ENV]), there)
        assert load_cards(spec, str(there)) == load_cards(spec, str(here))

    def test_a_card_file_outside_the_spec_folder_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "elsewhere.yaml").write_text("name: e\nkind: generated\ngenerator: uniform_noise\n")
        (tmp_path / "study").mkdir()
        spec = StudySpec.model_validate({"name": "s", "arms": [{"name": "mine", "card": "../elsewhere.yaml"}]})
        with pytest.raises(SpecError, match=r"arms\.0\.card: card file '\.\./elsewhere\.yaml' is not inside"):
            check_submittable(spec, tmp_path / "study" / "s.yaml")


class TestRefusedBeforeSending:
    def test_an_address_that_is_not_the_dashboard_url_is_refused(self) -> None:
        with pytest.raises(JobError, match="http://HEAD:8265"):
            connect("127.0.0.1:6379")


class TestDriver:
    def test_refuses_to_run_without_a_submitted_spec(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.delenv(SPEC_ENV, raising=False)
        assert driver_main([]) == 2
        assert "kd-study submit" in capsys.readouterr().err

    def test_a_bad_submitted_spec_names_the_field(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv(SPEC_ENV, "name: s\narms: [{name: a, card: digits_train, colour: red}]\n")
        assert driver_main([]) == 2
        err = capsys.readouterr().err
        assert SPEC_ENV in err and "arms.0.colour: unknown field" in err
