"""The cluster launch files (cluster/): valid for the tools that read them and consistent with the project.

What can be checked without a cloud account or a Docker engine: `aws.yaml` against the schema that ships inside
the pinned Ray; the KubeRay manifests structurally; the Dockerfile parsed; one Ray version everywhere.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    from packaging.requirements import Requirement

    (req,) = [Requirement(d) for d in pyproject()["project"]["dependencies"] if Requirement(d).name == "ray"]
    (spec,) = list(req.specifier)
    assert spec.operator == "==", f"pyproject.toml must pin Ray exactly (one version for the cluster), got {req}"
    return spec.version


def project_image() -> str:
    return f"kd-study:{pyproject()['project']['version']}"


def pod_templates(ray_cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [ray_cluster["headGroupSpec"]["template"]] + [g["template"] for g in ray_cluster["workerGroupSpecs"]]


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


class TestRayVersion:
    def test_installed_ray_is_the_pinned_one(self) -> None:
        import ray

        assert ray.__version__ == pinned_ray_version()

    def test_dockerfile_and_kuberay_use_the_pinned_ray(self) -> None:
        version = pinned_ray_version()
        assert dockerfile_args()["RAY_VERSION"] == version
        for name in ("raycluster.yaml", "rayjob.yaml"):
            (cluster,) = [ray_cluster_spec(d) for d in kuberay_docs(name) if d["kind"] in ("RayCluster", "RayJob")]
            assert cluster["rayVersion"] == version, name


# ------------------------------------------------------------------------------------------------ ray up (AWS)
@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


class TestAwsClusterConfig:
    def test_validates_against_the_schema_in_the_installed_ray(self, aws: dict[str, Any]) -> None:
        import jsonschema
        import ray

        schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
        jsonschema.validate(aws, schema)

    def test_schema_check_catches_a_misspelt_field(self, aws: dict[str, Any]) -> None:
        import jsonschema
        import ray

        schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
        with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
            jsonschema.validate({**aws, "idle_timeout_minute": 5}, schema)

    def test_cpu_head_takes_no_trials(self, aws: dict[str, Any]) -> None:
        head = aws["available_node_types"][aws["head_node_type"]]
        assert head["resources"] == {"CPU": 0}
        assert not re.match(r"^(g|p)\d", head["node_config"]["InstanceType"])

    def test_gpu_worker_types_autoscale_from_zero(self, aws: dict[str, Any]) -> None:
        workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
        families = {v["node_config"]["InstanceType"].split(".")[0] for v in workers.values()}
        assert {"g5", "p4d"} <= families
        for name, node in workers.items():
            assert node["min_workers"] == 0, name
            assert node["max_workers"] >= 1, name
        assert aws["max_workers"] >= max(n["max_workers"] for n in workers.values())
        assert aws["idle_timeout_minutes"] > 0

    def test_g5_workers_are_spot(self, aws: dict[str, Any]) -> None:
        g5 = [n for n in aws["available_node_types"].values() if n["node_config"]["InstanceType"].startswith("g5.")]
        assert g5 and all(n["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for n in g5)

    def test_every_node_runs_the_project_image(self, aws: dict[str, Any]) -> None:
        assert aws["docker"]["image"] == project_image()
        assert not any("image" in n.get("docker", {}) for n in aws["available_node_types"].values())

    def test_s3_through_instance_profiles_and_no_keys_in_the_file(self, aws: dict[str, Any]) -> None:
        for name, node in aws["available_node_types"].items():
            assert node["node_config"]["IamInstanceProfile"]["Name"], name
        text = (CLUSTER / "aws.yaml").read_text()
        assert not re.search(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|aws_access_key|AKIA[0-9A-Z]{16}", text)

    def test_every_ray_start_runs_in_token_mode_with_the_shared_token(self, aws: dict[str, Any]) -> None:
        starts = [c for c in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"] if "ray start" in c]
        assert len(starts) == 2
        assert all("RAY_AUTH_MODE=token ray start" in c for c in starts)
        assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# ------------------------------------------------------------------------------------------------ KubeRay
def kuberay_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.fixture(scope="module", params=["raycluster.yaml", "rayjob.yaml"])
def ray_cluster(request: pytest.FixtureRequest) -> dict[str, Any]:
    (doc,) = [d for d in kuberay_docs(request.param) if d["kind"] in ("RayCluster", "RayJob")]
    assert doc["apiVersion"] == "ray.io/v1"
    return ray_cluster_spec(doc)


class TestKubeRay:
    def test_kinds(self) -> None:
        assert [d["kind"] for d in kuberay_docs("raycluster.yaml")] == ["ConfigMap", "RayCluster"]
        assert [d["kind"] for d in kuberay_docs("rayjob.yaml")] == ["RayJob"]
        for doc in kuberay_docs("raycluster.yaml") + kuberay_docs("rayjob.yaml"):
            assert doc["metadata"]["name"]

    def test_head_and_gpu_worker_group(self, ray_cluster: dict[str, Any]) -> None:
        head = ray_cluster["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        assert {"gcs-server", "dashboard"} <= {p["name"] for p in containers(head["template"])[0]["ports"]}
        (gpu,) = ray_cluster["workerGroupSpecs"]
        assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
        assert ray_cluster["enableInTreeAutoscaling"] is True
        resources = containers(gpu["template"])[0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert "nvidia.com/gpu" not in containers(head["template"])[0]["resources"]["limits"]

    def test_every_container_runs_the_project_image_with_shared_memory(self, ray_cluster: dict[str, Any]) -> None:
        templates = pod_templates(ray_cluster)
        for template in templates:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            for container in containers(template):
                assert container["image"] == project_image()
                (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
                assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"

    def test_settings_from_configmap_and_optional_secret(self, ray_cluster: dict[str, Any]) -> None:
        from study.orchestrate.jobs import STORAGE_ENV, TRACKING_ENV

        (config_map,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "ConfigMap"]
        assert {STORAGE_ENV, TRACKING_ENV} <= set(config_map["data"])
        assert config_map["data"][STORAGE_ENV].startswith("s3://")
        templates = pod_templates(ray_cluster)
        for template in templates:
            for container in containers(template):
                sources = container["envFrom"]
                assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in sources
                (secret,) = [s["secretRef"] for s in sources if "secretRef" in s]
                assert secret["optional"] is True

    def test_token_authentication_is_on(self, ray_cluster: dict[str, Any]) -> None:
        assert ray_cluster["authOptions"]["mode"] == "token"

    def test_rayjob_runs_the_study_driver_on_a_valid_bundled_spec(self) -> None:
        from study.config import StudySpec
        from study.orchestrate.jobs import DRIVER_MODULE, SPEC_ENV, check_submittable
        from study.orchestrate.pipeline import load_cards

        (job,) = kuberay_docs("rayjob.yaml")
        assert shlex.split(job["spec"]["entrypoint"]) == ["python", "-m", DRIVER_MODULE]
        runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert set(runtime_env) == {"env_vars"}  # no working_dir, no py_modules: the code is the image's
        spec = StudySpec.model_validate(yaml.safe_load(runtime_env["env_vars"][SPEC_ENV]))
        check_submittable(spec, Path("rayjob.yaml"))
        assert set(load_cards(spec)) == {a.name for a in spec.arms}
        assert spec.resources.gpu == 1


# ------------------------------------------------------------------------------------------------ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for raw in (CLUSTER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue  # comments, also between continuation lines
        current += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                instructions.append((word.upper(), " ".join(rest.split())))
            current = ""
    return instructions


def dockerfile_args() -> dict[str, str]:
    return dict(a.split("=", 1) for word, a in dockerfile_instructions() if word == "ARG" and "=" in a)


class TestDockerfile:
    """Docker cannot build here (no engine on the test machines): the file is parsed and checked instead."""

    def test_base_image_is_rays_cuda_image_for_the_projects_python(self) -> None:
        (base,) = [a for w, a in dockerfile_instructions() if w == "FROM"]
        assert base == "rayproject/ray:${RAY_VERSION}-py311-gpu"
        assert pyproject()["project"]["requires-python"] == ">=3.11"

    def test_installs_the_project_with_its_pinned_dependencies(self) -> None:
        runs = [a for w, a in dockerfile_instructions() if w == "RUN" and "pip install" in a]
        (install,) = runs
        assert '"/opt/kd-study"' in install and '"ray[default,tune]==${RAY_VERSION}"' in install
        assert "-e " not in install  # a regular install: the image holds no checkout to edit

    def test_copies_only_what_the_wheel_is_built_from(self) -> None:
        copied = []
        for word, args in dockerfile_instructions():
            if word == "COPY":
                copied += [a for a in args.split()[:-1] if not a.startswith("--")]
        assert set(copied) == {"pyproject.toml", "README.md", "study", "tune_spaces", "datasets"}
        assert all((REPO / c).exists() for c in copied)
        force_included = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
        assert set(force_included) <= set(copied)
        allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().split() if line[:1] == "!"}
        assert set(copied) == allowed

    def test_mesa_egl_for_cpu_nodes_and_the_nvidia_egl_vendor_for_gpu_nodes(self) -> None:
        from study.data.generators.shaders import APT_PACKAGES

        text = " ".join(a for w, a in dockerfile_instructions() if w in ("RUN", "ENV"))
        assert all(f" {p} " in f" {text} " for p in APT_PACKAGES)
        assert "libglvnd0" in text
        assert "egl_vendor.d/10_nvidia.json" in text and "libEGL_nvidia.so.0" in text
        assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*graphics", text)
