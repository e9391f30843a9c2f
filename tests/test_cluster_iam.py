"""The IAM policy documents in cluster/iam/ grant every AWS action the code and the cluster config use.

The required actions are derived, not listed by hand: S3 calls from kd-study's own source (boto3 calls on
`s3_client()`, turned into API operations by botocore's service model), the operations of pyarrow's S3 filesystem
(Tune's state), EC2 calls from the autoscaler's AWS node provider in the installed Ray, and what aws.yaml itself
implies (an SSM-resolved AMI, an ECR login and pull, worker instance profiles the head passes on).
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IAM = REPO / "cluster" / "iam"

# S3 API operations whose IAM action has another name (AWS's "Actions, resources and condition keys for S3").
S3_ACTION_OF = {
    "HeadObject": "GetObject",
    "HeadBucket": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "DeleteObjects": "DeleteObject",
}
# boto3's transfer manager (upload_file / upload_fileobj): one PUT or a multipart upload, aborted on failure.
TRANSFER_OPERATIONS = [
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
]
# pyarrow's S3FileSystem (C++, Tune's experiment state and checkpoints): the operations its implementation sends.
PYARROW_OPERATIONS = [
    "HeadBucket",
    "HeadObject",
    "GetObject",
    "PutObject",
    "ListObjectsV2",
    "DeleteObjects",
    *TRANSFER_OPERATIONS[1:],
]
# boto3 resource-style calls in Ray's AWS node provider and the EC2 operation each sends.
EC2_RESOURCE_CALLS = {
    r"\.instances\.filter\(": "DescribeInstances",
    r"\.create_instances\(": "RunInstances",
    r"\bnode\.terminate\(\)": "TerminateInstances",
    r"\bnode\.stop\(\)": "StopInstances",
}


def policy(name: str) -> dict[str, Any]:
    return json.loads((IAM / f"{name}.json").read_text())


def granted(document: dict[str, Any]) -> list[tuple[str, list[str]]]:
    out = []
    for statement in document["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        out += [(a, resources) for a in actions]
    return out


def allows(document: dict[str, Any], action: str, resource_hint: str | None = None) -> bool:
    for pattern, resources in granted(document):
        if fnmatch.fnmatchcase(action, pattern) and (
            resource_hint is None or any(resource_hint in r or r == "*" for r in resources)
        ):
            return True
    return False


def s3_operations_in_study() -> set[str]:
    import boto3

    to_api = boto3.session.Session().client("s3", region_name="us-east-1").meta.method_to_api_mapping
    operations: set[str] = set()
    for path in (REPO / "study").rglob("*.py"):
        text = path.read_text()
        if "s3_client()" not in text:
            continue
        clients = {"s3_client()"} | {m for m in re.findall(r"(\w+) = s3_client\(\)$", text, flags=re.M)}
        for client in clients:
            for method in re.findall(rf"(?<![\w.]){re.escape(client)}\.(\w+)\(", text):
                if method in to_api:
                    operations.add(to_api[method])
                elif method in ("upload_file", "upload_fileobj"):
                    operations.update(TRANSFER_OPERATIONS)
                elif method == "get_paginator":
                    pass  # the paginated operation is named in its argument, below
                elif method != "meta":
                    raise AssertionError(f"{path}: s3 client call {method} has no known S3 operation")
        for paginated in re.findall(r"get_paginator\(\"(\w+)\"\)", text):
            operations.add(to_api[paginated])
    return operations


def s3_actions() -> set[str]:
    operations = s3_operations_in_study() | set(PYARROW_OPERATIONS)
    return {f"s3:{S3_ACTION_OF.get(op, op)}" for op in operations}


def ec2_actions_of_rays_aws_provider() -> set[str]:
    import boto3
    import ray

    source = (Path(ray.__file__).parent / "autoscaler" / "_private" / "aws" / "node_provider.py").read_text()
    to_api = boto3.session.Session().client("ec2", region_name="us-east-1").meta.method_to_api_mapping
    actions = {f"ec2:{to_api[m]}" for m in re.findall(r"\.(\w+)\(", source) if m in to_api}
    actions |= {f"ec2:{op}" for pattern, op in EC2_RESOURCE_CALLS.items() if re.search(pattern, source)}
    return actions


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())


@pytest.mark.parametrize("name", ["kd-study-head", "kd-study-worker", "trust-ec2"])
def test_documents_are_well_formed_iam_policies(name: str) -> None:
    document = policy(name)
    assert document["Version"] == "2012-10-17"
    assert document["Statement"]
    for statement in document["Statement"]:
        assert statement["Effect"] in ("Allow", "Deny")
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z*]+", a) for a in actions), actions
        assert ("Resource" in statement) != ("Principal" in statement)  # identity policy or trust policy


def test_derivation_finds_what_kd_study_and_ray_call() -> None:
    """Guards the derivation itself: a regex that found nothing would make the coverage checks below vacuous."""
    assert {"GetObject", "HeadObject", "HeadBucket", "PutObject", "DeleteObject", "ListObjectsV2"} <= (
        s3_operations_in_study()
    )
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances", "ec2:CreateTags"} <= (
        ec2_actions_of_rays_aws_provider()
    )


@pytest.mark.parametrize("role", ["kd-study-head", "kd-study-worker"])
def test_every_node_can_use_the_study_bucket_and_pull_the_image(role: str, aws: dict[str, Any]) -> None:
    document = policy(role)
    missing = sorted(a for a in s3_actions() if not allows(document, a))
    assert not missing, f"{role}: S3 actions the code uses but the policy does not grant: {missing}"
    if any("aws ecr get-login-password" in c for c in aws["initialization_commands"]):
        assert allows(document, "ecr:GetAuthorizationToken")
    if ".dkr.ecr." in aws["docker"]["image"]:
        repository = aws["docker"]["image"].split("/", 1)[1].split(":")[0]
        for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"):
            assert allows(document, action, f"repository/{repository}"), action


def test_head_can_run_the_autoscaler(aws: dict[str, Any]) -> None:
    head = policy("kd-study-head")
    missing = sorted(a for a in ec2_actions_of_rays_aws_provider() if not allows(head, a))
    assert not missing, f"EC2 actions Ray's AWS node provider calls but the head's policy does not grant: {missing}"
    nodes = aws["available_node_types"]
    if any(n["node_config"]["ImageId"].startswith("resolve:ssm:") for n in nodes.values()):
        assert allows(head, "ssm:GetParameters", "parameter/aws/service/deeplearning")
    worker_profiles = {
        n["node_config"]["IamInstanceProfile"]["Name"] for k, n in nodes.items() if k != aws["head_node_type"]
    }
    for profile in worker_profiles:
        assert allows(head, "iam:PassRole", f"role/{profile}")


def test_workers_get_no_more_than_storage_and_the_image() -> None:
    services = {action.split(":")[0] for action, _ in granted(policy("kd-study-worker"))}
    assert services == {"s3", "ecr"}
