"""deployments/prefect.yaml and serve.py without a server: what `prefect deploy` would read.

`prefect deploy` only prints a warning and skips a deployment whose configuration does not
validate, so a typo would silently drop the nightly schedule; these checks fail instead.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tomllib
from importlib import import_module
from pathlib import Path
from uuid import uuid4

import docker
import pytest
import yaml
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.steps.core import _strip_version
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.utilities.importtools import import_object
from prefect.utilities.schema_tools import ValidationError, is_valid_schema, validate
from prefect.utilities.templating import apply_values, find_placeholders
from prefect.workers.base import BaseJobConfiguration

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def config() -> PrefectYamlModel:
    return PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))


def test_prefect_yaml_validates_and_names_both_deployments(config):
    names = {(d.entrypoint, d.name) for d in config.deployments}
    assert names == {
        ("flows/nightly.py:nightly_retrain", "nightly"),
        ("flows/batch_score.py:batch_score", "manual"),
        ("flows/tune.py:tune", "weekly"),
    }
    (pull,) = config.pull
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $ENCORE_PROJECT_ROOT }}"
        }
    }
    for deployment in config.deployments:
        assert deployment.work_pool.name == "encore-process"
        assert deployment.work_pool.job_variables["env"]["ENCORE_HOME"] == "{{ $ENCORE_HOME }}"
        assert deployment.concurrency_limit.limit == 1
        assert deployment.concurrency_limit.collision_strategy == "ENQUEUE"


def test_nightly_is_on_the_templated_cron_and_scoring_has_no_schedule(config):
    by_name = {d.name: d for d in config.deployments}
    (schedule,) = by_name["nightly"].schedules
    assert schedule.cron == "{{ $ENCORE_CRON }}"
    assert schedule.timezone == "{{ $ENCORE_TIMEZONE }}"
    assert by_name["manual"].schedules == []
    (tuning,) = by_name["weekly"].schedules
    assert (tuning.cron, tuning.timezone) == ("{{ $ENCORE_TUNE_CRON }}", "{{ $ENCORE_TIMEZONE }}")


@pytest.mark.parametrize(
    ("entrypoint", "parameters"),
    [
        ("flows/nightly.py:nightly_retrain", {}),
        ("flows/nightly.py:nightly_retrain", {"params": {"gat_bpr": {"epochs": 20}}}),
        ("flows/batch_score.py:batch_score", {}),
        ("flows/batch_score.py:batch_score", {"dataset": "sample-listens"}),
        ("flows/tune.py:tune", {}),
        ("flows/tune.py:tune", {"params": {"trials": 5, "datasets": ["sample-listens"]}}),
    ],
)
def test_entrypoints_load_as_flows_and_accept_their_run_parameters(entrypoint, parameters):
    flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
    assert isinstance(flow, Flow)
    flow.validate_parameters(parameters)


def test_a_mistyped_parameter_is_refused_before_the_run():
    flow = load_flow_from_entrypoint(str(ROOT / "flows/nightly.py:nightly_retrain"))
    with pytest.raises(Exception, match="epoch"):
        flow.validate_parameters({"params": {"gat_bpr": {"epoch": 20}}})


# --- The Docker and Kubernetes variants (deployments/README.md, "Moving to Docker or Kubernetes").
# No Docker daemon or cluster here: each check below uses the code that would read the file for
# real (Prefect's models and templating, the installed workers' schemas and job configurations).

DOCKERFILE = ROOT / "deployments" / "Dockerfile"
K8S_TEMPLATE = ROOT / "deployments" / "kubernetes-base-job-template.json"
VARIANTS = {
    "docker": (ROOT / "deployments" / "prefect-docker.yaml", "encore-docker"),
    "kubernetes": (ROOT / "deployments" / "prefect-kubernetes.yaml", "encore-kubernetes"),
}
BUILD_STEP = "prefect_docker.deployments.steps.build_docker_image"
PUSH_STEP = "prefect_docker.deployments.steps.push_docker_image"
PULL_STEP = "prefect.deployments.steps.set_working_directory"
IMAGE_WORKDIR = "/opt/encore"
# What `prefect deploy` would see: the environment make deploy-docker / deploy-kubernetes sets,
# and the build step's output for that image name and tag.
DEPLOY_ENV = {
    "ENCORE_IMAGE": "registry.example.com/team/encore",
    "ENCORE_IMAGE_TAG": "1a2b3c4",
    "ENCORE_DATA_VOLUME": "encore-data",
    "ENCORE_NAMESPACE": "encore",
    "ENCORE_CRON": "0 2 * * *",
    "ENCORE_TUNE_CRON": "0 8 * * 6",
    "ENCORE_TIMEZONE": "UTC",
}
IMAGE = "registry.example.com/team/encore:1a2b3c4"
STEP_OUTPUTS = {
    "build-image": {
        "image_name": "registry.example.com/team/encore",
        "tag": "1a2b3c4",
        "image": IMAGE,
        "image_id": "sha256:" + "0" * 64,
        "additional_tags": [],
    }
}


def _raw(variant: str) -> dict:
    return yaml.safe_load(VARIANTS[variant][0].read_text())


def _base_job_template(variant: str) -> dict:
    """The pool's base job template: the Docker worker's default, the saved one for Kubernetes."""
    if variant == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker.get_default_base_job_template()
    return json.loads(K8S_TEMPLATE.read_text())


def _rendered_job_variables(variant: str, monkeypatch) -> dict[str, dict]:
    """Each deployment's job_variables templated the way `prefect deploy` does it: environment
    placeholders first, then the build and push steps' outputs."""
    for name, value in DEPLOY_ENV.items():
        monkeypatch.setenv(name, value)
    rendered = {}
    for deployment in _raw(variant)["deployments"]:
        job_variables = deployment["work_pool"]["job_variables"]
        job_variables = apply_values(job_variables, os.environ, remove_notset=False)
        job_variables = apply_values(
            job_variables, STEP_OUTPUTS, warn_on_notset=True, skip_prefixes=["ctx."]
        )
        rendered[deployment["name"]] = job_variables
    return rendered


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


def test_variants_validate_and_mirror_the_process_deployments(variant, config):
    path, pool = VARIANTS[variant]
    raw = _raw(variant)
    model = PrefectYamlModel.model_validate(raw)
    # PrefectYamlModel ignores unknown keys: a misspelled one would vanish without this.
    for deployment in raw["deployments"]:
        assert set(deployment) <= set(DeploymentConfig.model_fields), path.name
        assert set(deployment["work_pool"]) <= set(WorkPoolConfig.model_fields), path.name
    assert model.prefect_version == config.prefect_version
    process = {d.name: d for d in config.deployments}
    assert {d.name for d in model.deployments} == set(process) == {"nightly", "manual", "weekly"}
    for deployment in model.deployments:
        twin = process[deployment.name]
        assert deployment.entrypoint == twin.entrypoint
        assert deployment.schedules == twin.schedules
        assert deployment.concurrency_limit == twin.concurrency_limit
        assert deployment.concurrency_limit.limit == 1
        assert (deployment.tags, deployment.parameters) == (twin.tags, twin.parameters)
        assert deployment.work_pool.name == pool
        assert deployment.work_pool.job_variables["image"] == "{{ build-image.image }}"
        assert deployment.work_pool.job_variables["env"]["ENCORE_HOME"] == "/data"
    (schedule,) = next(d for d in model.deployments if d.name == "nightly").schedules
    assert (schedule.cron, schedule.timezone) == ("{{ $ENCORE_CRON }}", "{{ $ENCORE_TIMEZONE }}")


def test_variants_build_push_and_pull_steps_exist_and_take_their_inputs(variant):
    from prefect_docker.deployments.steps import BuildDockerImageResult

    model = PrefectYamlModel.model_validate(_raw(variant))
    (build,), (push,), (pull,) = model.build, model.push, model.pull
    assert list(build) == [BUILD_STEP]
    assert list(push) == [PUSH_STEP]
    assert list(pull) == [PULL_STEP]
    assert build[BUILD_STEP]["id"] == "build-image"
    assert build[BUILD_STEP]["image_name"] == "{{ $ENCORE_IMAGE }}"
    assert build[BUILD_STEP]["tag"] == "{{ $ENCORE_IMAGE_TAG }}"
    assert (ROOT / build[BUILD_STEP]["dockerfile"]) == DOCKERFILE
    assert pull[PULL_STEP] == {"directory": IMAGE_WORKDIR}
    for step in (build, push, pull):
        ((name, inputs),) = step.items()
        function = import_object(name)
        assert callable(function)
        if requires := inputs.get("requires"):
            # what Prefect imports before deciding whether to pip install `requires`
            import_module(_strip_version(requires).replace("-", "_"))
        # the step's inputs are the function's arguments (what Prefect calls it with)
        arguments = {k: v for k, v in inputs.items() if k not in ("id", "requires")}
        bound = inspect.signature(function).bind(**arguments)
        # build_docker_image passes what it does not name on to docker-py's build()
        extra = bound.arguments.get("build_kwargs", {})
        assert set(extra) <= set(inspect.signature(docker.APIClient.build).parameters), extra
    # every `{{ build-image.X }}` names an output of the build step
    outputs = set(BuildDockerImageResult.__annotations__)
    text = VARIANTS[variant][0].read_text()
    used = {p.name.split(".", 1)[1] for p in find_placeholders(text) if "build-image." in p.name}
    assert used == {"image_name", "tag", "image"} and used <= outputs


def test_variants_job_variables_are_the_workers_variables(variant, monkeypatch):
    template = _base_job_template(variant)
    properties = template["variables"]["properties"]
    for name, job_variables in _rendered_job_variables(variant, monkeypatch).items():
        assert set(job_variables) <= set(properties), (variant, name)
        assert "{{" not in json.dumps(job_variables), (variant, name)
        # the check the server runs on `prefect deploy` (validate_job_variables_for_deployment)
        validate(
            job_variables,
            template["variables"],
            raise_on_error=True,
            preprocess=True,
            ignore_required=True,
            allow_none_with_default=True,
        )
        assert job_variables["image"] == IMAGE
        assert job_variables["env"] == {"ENCORE_HOME": "/data", "PREFECT_HOME": "/data/prefect"}
        if variant == "docker":
            assert job_variables["volumes"] == ["encore-data:/data"]
        else:
            assert job_variables["namespace"] == "encore"


@pytest.mark.parametrize(
    ("variant", "bad"),
    [
        ("docker", {"volumes": "encore-data:/data"}),  # a string, not a list
        ("docker", {"env": {"ENCORE_HOME": ["/data"]}}),
        ("kubernetes", {"namespace": ["encore"]}),
        ("kubernetes", {"data_claim": 7}),
    ],
)
def test_the_job_variables_check_refuses_what_the_worker_would(variant, bad):
    template = _base_job_template(variant)
    with pytest.raises(ValidationError):
        validate(bad, template["variables"], raise_on_error=True, preprocess=True)


def test_docker_job_configuration_mounts_the_data_home(monkeypatch):
    from prefect_docker.worker import DockerWorkerJobConfiguration

    template = _base_job_template("docker")
    job_variables = _rendered_job_variables("docker", monkeypatch)["nightly"]
    values = {**_defaults(template), **job_variables}
    configuration = DockerWorkerJobConfiguration(
        **apply_values(template["job_configuration"], values)
    )
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="quiet-otter"))
    assert configuration.image == IMAGE
    assert configuration.volumes == ["encore-data:/data"]
    # the deployment's env wins over the worker's own (its PREFECT_HOME is a path on its host)
    assert configuration.env["ENCORE_HOME"] == "/data"
    assert configuration.env["PREFECT_HOME"] == "/data/prefect"


def test_kubernetes_template_is_the_workers_default_plus_the_data_home():
    from prefect_kubernetes.worker import KubernetesWorker

    saved = json.loads(K8S_TEMPLATE.read_text())
    # what `prefect work-pool create --base-job-template` sends is accepted by the server
    WorkPoolCreate(name="encore-kubernetes", type="kubernetes", base_job_template=saved)
    is_valid_schema(saved["variables"], preprocess=False)  # raises when it is not
    assert saved["variables"]["properties"]["data_claim"]["default"] == "encore-data"
    # remove the three additions: what is left is the installed worker's default, unchanged
    stripped = json.loads(K8S_TEMPLATE.read_text())
    del stripped["variables"]["properties"]["data_claim"]
    pod = stripped["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod.pop("volumes") == [
        {"name": "encore-data", "persistentVolumeClaim": {"claimName": "{{ data_claim }}"}}
    ]
    (container,) = pod["containers"]
    assert container.pop("volumeMounts") == [{"name": "encore-data", "mountPath": "/data"}]
    assert stripped == KubernetesWorker.get_default_base_job_template()
    # the default template's sizing variables, for job_variables or the run form
    assert {"cpu_request", "cpu_limit", "memory_request", "memory_limit"} <= set(
        saved["variables"]["properties"]
    )


@pytest.mark.parametrize(("override", "claim"), [({}, "encore-data"), ({"data_claim": "x"}, "x")])
def test_kubernetes_job_manifest_mounts_the_claim_at_data(monkeypatch, override, claim):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = _base_job_template("kubernetes")
    job_variables = _rendered_job_variables("kubernetes", monkeypatch)["nightly"]
    values = {**_defaults(template), **job_variables, **override}
    rendered = apply_values(template["job_configuration"], values)
    manifest = rendered["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/data"
    assert volume["name"] == mount["name"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim}
    assert container["image"] == IMAGE
    assert manifest["metadata"]["namespace"] == "encore"
    # the worker accepts the manifest and keeps the volume when it prepares a run
    configuration = KubernetesWorkerJobConfiguration(**rendered)
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="quiet-otter"))
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim}
    assert container["volumeMounts"] == [{"name": "encore-data", "mountPath": "/data"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ENCORE_HOME"] == "/data"
    assert env["PREFECT_HOME"] == "/data/prefect"


def _defaults(template: dict) -> dict:
    """The variables' defaults, as the worker fills them in before the deployment's values."""
    return BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])


def test_dockerfile_installs_the_pinned_cpu_torch_before_the_project():
    # one instruction per logical line (backslash continuations joined), comments dropped
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    installs = [i for i, line in enumerate(instructions) if re.match(r"RUN pip install ", line)]
    torch_line, project_line = (instructions[i] for i in installs)
    assert re.search(r"[\"']?torch==2\.13\.0[\"']?", torch_line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line
    assert project_line.split() == ["RUN", "pip", "install", "."]
    # the same pin as the project and the Makefile
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in dependencies
    assert "TORCH_PIN := torch==2.13.0" in (ROOT / "Makefile").read_text()
    # the sources `pip install .` needs are copied before it, into the pull step's folder
    before = instructions[installs[0] : installs[1]]
    assert f"WORKDIR {IMAGE_WORKDIR}" in before
    copied = " ".join(line for line in before if line.startswith("COPY "))
    for source in ("pyproject.toml", "README.md", "flows/", "tasks/", "models_src/"):
        assert source in copied
    assert "ENV ENCORE_HOME=/data" in instructions
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", ".git"} <= set(ignored)
