"""The pyarrow S3 filesystem (Tune's state and checkpoints) is opened in the bucket's own region.

pyarrow does not follow S3's region redirects: a filesystem built in the environment's default region fails on a
bucket elsewhere at Tune's first sync, while boto3 reads (which follow redirects) keep working and hide it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from study import storage
from study.storage import StorageError
from tests.s3_servers import S3Server


def west_bucket(server: S3Server) -> str:
    name = f"west-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return name


class TestBucketRegion:
    def test_filesystem_takes_the_region_the_server_reports_for_the_bucket(
        self, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        bucket = west_bucket(s3_env)
        filesystem, path = storage.arrow_filesystem(f"s3://{bucket}/studies/q1/tune")
        assert filesystem.region == "us-west-2"
        assert path == f"{bucket}/studies/q1/tune"
        with filesystem.open_output_stream(f"{path}/state.json") as out:
            out.write(b"{}")
        body = s3_env.client().get_object(Bucket=bucket, Key="studies/q1/tune/state.json")["Body"].read()
        assert body == b"{}"

    def test_explicit_region_setting_skips_the_question(
        self, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KD_STUDY_S3_REGION", "eu-central-1")
        filesystem, _ = storage.arrow_filesystem("s3://no-such-bucket-anywhere/x")
        assert filesystem.region == "eu-central-1"

    def test_missing_bucket_is_a_clear_error(self, s3_env: S3Server) -> None:
        with pytest.raises(StorageError, match=r"s3://kd-missing-\w+: cannot tell which region.*KD_STUDY_S3_REGION"):
            storage.arrow_filesystem(f"s3://kd-missing-{uuid.uuid4().hex[:8]}/tune")

    def test_aws_resolver_failure_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a custom endpoint the question goes to AWS through pyarrow.fs.resolve_s3_region; here (no
        network, or a bucket that does not exist) it cannot be answered, and the error says what to do."""
        for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "KD_STUDY_S3_REGION"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        start = time.monotonic()
        with pytest.raises(StorageError, match=r"cannot tell which region.*KD_STUDY_S3_REGION"):
            storage.bucket_region(f"kd-study-no-such-bucket-{uuid.uuid4().hex[:12]}")
        assert time.monotonic() - start < 60
