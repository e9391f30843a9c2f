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


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("7", "500m", "120Gi", "1G") as a number (bytes for memory and storage)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit, 1)


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

    def test_spot_type_has_an_on_demand_fallback_of_the_same_shape(self, aws: dict[str, Any]) -> None:
        workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
        spot = {k: v for k, v in workers.items() if market(v) == "spot"}
        assert spot
        for name, node in spot.items():
            fallbacks = [
                v
                for v in workers.values()
                if market(v) == "on-demand"
                and v["node_config"]["InstanceType"] == node["node_config"]["InstanceType"]
                and v["resources"] == node["resources"]
                and v["max_workers"] >= node["max_workers"]
            ]
            assert fallbacks, f"{name}: no on-demand type of the same shape"
            assert all(node["priority"] > f["priority"] for f in fallbacks), "spot must be tried first"
        (head_start,) = [c for c in aws["head_start_ray_commands"] if "ray start --head" in c]
        assert "RAY_enable_autoscaler_v2=1" in head_start  # the autoscaler that ranks types by launch success

    def test_gpu_capacity_reaches_64(self, aws: dict[str, Any]) -> None:
        workers = [v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]]
        for node in workers:  # declared resources agree with AWS's published shape of the instance type
            gpus, vcpus = INSTANCE_SHAPES[node["node_config"]["InstanceType"]]
            assert node["resources"] == {"CPU": vcpus, "GPU": gpus}
        assert gpu_capacity(aws) >= 64
        # and the whole 64 without spot: the on-demand fallback alone reaches it
        on_demand = {
            **aws,
            "available_node_types": {k: v for k, v in aws["available_node_types"].items() if market(v) != "spot"},
        }
        assert gpu_capacity(on_demand) >= 64

    def test_region_reaches_every_container_and_gpus_every_worker(self, aws: dict[str, Any]) -> None:
        region = aws["provider"]["region"]
        options = " ".join(aws["docker"]["run_options"])
        assert f"-e AWS_REGION={region}" in options and f"-e AWS_DEFAULT_REGION={region}" in options
        assert "--gpus all" in aws["docker"]["worker_run_options"]
        assert "--gpus all" not in aws["docker"].get("head_run_options", [])  # the CPU head has no GPU to pass

    def test_registry_login_before_the_image_is_pulled(self, aws: dict[str, Any]) -> None:
        registry = aws["docker"]["image"].split("/", 1)[0]
        region = aws["provider"]["region"]
        assert re.fullmatch(rf"\d{{12}}\.dkr\.ecr\.{region}\.amazonaws\.com", registry)
        (login,) = [c for c in aws["initialization_commands"] if "docker login" in c]
        assert f"aws ecr get-login-password --region {region}" in login
        assert login.rstrip().endswith(f"--password-stdin {registry}")

    def test_tracking_store_outlives_the_head_container_with_auth_on(self, aws: dict[str, Any]) -> None:
        (server,) = [c for c in aws["head_start_ray_commands"] if "mlflow server" in c]
        assert "--app-name basic-auth" in server and "MLFLOW_AUTH_CONFIG_PATH" in server
        assert '--backend-store-uri "${KD_STUDY_MLFLOW_BACKEND_URI:-sqlite:///$store/mlflow.db}"' in server
        assert '--artifacts-destination "$KD_STUDY_MLFLOW_ARTIFACTS"' in server
        assert "store=~/kd-study-mlflow" in server
        # that folder is a volume of the head's host, so recreating the container keeps it
        assert "-v /home/ubuntu/kd-study-mlflow:/home/ray/kd-study-mlflow" in aws["docker"]["head_run_options"]
        # the credentials come from a file on the user's machine outside the repository
        assert aws["file_mounts"]["~/.kd-study/cluster.env"] == "~/.kd-study/cluster.env"
        assert not (REPO / ".kd-study").exists()

    def test_instance_profiles_have_their_policy_documents(self, aws: dict[str, Any]) -> None:
        profiles = {n["node_config"]["IamInstanceProfile"]["Name"] for n in aws["available_node_types"].values()}
        assert profiles == {"kd-study-head", "kd-study-worker"}
        for profile in profiles:
            assert (CLUSTER / "iam" / f"{profile}.json").is_file()
            assert f"cluster/iam/{profile}.json" in (CLUSTER / "aws.yaml").read_text()
            assert f"cluster/iam/{profile}.json" in (REPO / "docs" / "cluster.md").read_text()

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


# (GPUs, vCPUs) of the instance types aws.yaml uses, as AWS publishes them (EC2 accelerated computing instances).
INSTANCE_SHAPES = {"g5.xlarge": (1, 4), "g5.12xlarge": (4, 48), "g5.48xlarge": (8, 192), "p4d.24xlarge": (8, 96)}


def market(node: dict[str, Any]) -> str:
    return node["node_config"].get("InstanceMarketOptions", {}).get("MarketType", "on-demand")


def gpu_capacity(aws: dict[str, Any]) -> int:
    """The most GPUs the autoscaler may run at once: per-type `max_workers`, then the global `max_workers`."""
    workers = [v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]]
    slots, total = aws["max_workers"], 0
    for node in sorted(workers, key=lambda n: -n["resources"].get("GPU", 0)):
        take = min(node["max_workers"], slots)
        total, slots = total + take * node["resources"].get("GPU", 0), slots - take
    return total


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
        assert [d["kind"] for d in kuberay_docs("raycluster.yaml")] == ["ServiceAccount", "ConfigMap", "RayCluster"]
        assert [d["kind"] for d in kuberay_docs("mlflow.yaml")] == ["PersistentVolumeClaim", "Deployment", "Service"]
        assert [d["kind"] for d in kuberay_docs("rayjob.yaml")] == ["RayJob"]
        for doc in kuberay_docs("raycluster.yaml") + kuberay_docs("rayjob.yaml") + kuberay_docs("mlflow.yaml"):
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

    def test_every_pod_runs_as_the_irsa_service_account(self, ray_cluster: dict[str, Any]) -> None:
        (account,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "ServiceAccount"]
        role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", role)
        assert (CLUSTER / "iam" / f"{role.rsplit('/', 1)[1]}.json").is_file()  # its permissions policy
        (mlflow,) = [d for d in kuberay_docs("mlflow.yaml") if d["kind"] == "Deployment"]
        for template in [*pod_templates(ray_cluster), mlflow["spec"]["template"]]:
            assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]

    def test_shard_cache_on_a_sized_volume_within_the_ephemeral_storage_request(
        self, ray_cluster: dict[str, Any]
    ) -> None:
        from study.data.shards.cache import ENV_FOLDER, ENV_GB

        for group in ray_cluster["workerGroupSpecs"]:
            (container,) = containers(group["template"])
            env = {e["name"]: e["value"] for e in container["env"]}
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env[ENV_FOLDER]]
            (volume,) = [v for v in group["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
            size = quantity(volume["emptyDir"]["sizeLimit"])
            assert size >= float(env[ENV_GB]) * 2**30  # the cache's bound fits its volume
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert quantity(requests["ephemeral-storage"]) >= size
            assert quantity(limits["ephemeral-storage"]) >= quantity(requests["ephemeral-storage"])

    def test_mlflow_service_serves_the_tracking_uri_with_auth_and_a_persistent_store(self) -> None:
        from urllib.parse import urlsplit

        from study.orchestrate.jobs import TRACKING_ENV

        (config_map,) = [d for d in kuberay_docs("raycluster.yaml") if d["kind"] == "ConfigMap"]
        uri = urlsplit(config_map["data"][TRACKING_ENV])
        docs = {d["kind"]: d for d in kuberay_docs("mlflow.yaml")}
        service, deployment, claim = docs["Service"], docs["Deployment"], docs["PersistentVolumeClaim"]
        (port,) = service["spec"]["ports"]
        assert (uri.hostname, uri.port) == (service["metadata"]["name"], port["port"])
        assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {p["containerPort"] for p in container["ports"]} == {port["targetPort"]}
        command = " ".join(container["args"])
        assert "--app-name basic-auth" in command and f"--port {port['targetPort']}" in command
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert not secrets[name].get("optional", False)  # no login, no server: auth cannot be off by accident
        (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        # the port forwarded in the instructions is the Service's
        forward = f"kubectl port-forward svc/{service['metadata']['name']} {port['port']}:{port['port']}"
        assert forward in (CLUSTER / "kuberay" / "raycluster.yaml").read_text()
        assert forward in (REPO / "docs" / "cluster.md").read_text()

    def test_rayjob_trials_fit_its_worker_group(self) -> None:
        from study.config import StudySpec
        from study.orchestrate.jobs import SPEC_ENV

        (job,) = kuberay_docs("rayjob.yaml")
        spec = StudySpec.model_validate(
            yaml.safe_load(yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"][SPEC_ENV])
        )
        fits = []
        for group in ray_cluster_spec(job)["workerGroupSpecs"]:
            limits = containers(group["template"])[0]["resources"]["limits"]
            fits.append(
                spec.resources.cpu <= quantity(limits["cpu"]) and spec.resources.gpu <= int(limits["nvidia.com/gpu"])
            )
        assert any(fits)

    def test_token_authentication_is_on(self, ray_cluster: dict[str, Any]) -> None:
        assert ray_cluster["authOptions"]["mode"] == "token"

    def test_rayjob_runs_the_study_driver_on_a_valid_bundled_spec(self) -> None:
        from study.config import StudySpec
        from study.orchestrate.jobs import DRIVER_MODULE, SPEC_ENV, check_submittable
        from study.orchestrate.validation import load_cards

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
        assert base == "rayproject/ray:${RAY_VERSION}-py311-${CUDA_TAG}"
        assert pyproject()["project"]["requires-python"] == ">=3.11"

    def test_one_cuda_stack_torch_pinned_to_the_base_images_cuda(self) -> None:
        from packaging.requirements import Requirement
        from packaging.version import Version

        args = dockerfile_args()
        assert re.fullmatch(r"cu\d{3}", args["CUDA_TAG"])
        (install,) = [a for w, a in dockerfile_instructions() if w == "RUN" and "pip install" in a]
        assert '"torch==${TORCH_VERSION}+${CUDA_TAG}"' in install
        assert '"torchvision==${TORCHVISION_VERSION}+${CUDA_TAG}"' in install
        assert "download.pytorch.org/whl/${CUDA_TAG}" in install
        assert "torch.version.cuda" in install  # the build itself refuses a wheel of another CUDA
        # the pins are versions the project's own ranges admit
        deps = {Requirement(d).name: Requirement(d) for d in pyproject()["project"]["dependencies"]}
        assert Version(args["TORCH_VERSION"]) in deps["torch"].specifier
        assert Version(args["TORCHVISION_VERSION"]) in deps["torchvision"].specifier

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
