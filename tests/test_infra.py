"""The production topology's files (infra/docker, infra/kubernetes, prefect.yaml's container deployments)
checked with the engines' own tools where they run here (`docker compose config` / Debian's `docker-compose
config`, Prefect's template validation and rendering) and against each other: images cannot be built or
pulled on this machine, so nothing here starts a container (docs/deployment.md says what was validated how).

`docker compose` (or `docker-compose`) must be installed: `apt-get install -y docker-compose`. Without it the
compose tests fail, unless SURVIVAL_MODEL_SKIP_COMPOSE=1 says to skip them."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "infra" / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / "env.example"
K8S_TEMPLATE = REPO / "infra" / "kubernetes" / "base-job-template.json"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
#: The images' code and working directory (the container deployments' `pull` step sets it).
WORKDIR = "/opt/survival-model"
#: The services people use: the only ones that publish a port.
PUBLISHED = {"prefect-server", "mlflow"}
#: Names of settings that hold a credential (upper case: environment variables).
CREDENTIAL = re.compile(r"(?<![${\w])([A-Z][A-Z0-9_]*(?:PASSWORD|SECRET_KEY|SECRET|AUTH_STRING|ACCESS_KEY|TOKEN|"
                        r"ROOT_USER))\b[\"']?[ \t]*[:=][ \t]*(\S*)")
#: A URL with a password in it: ``scheme://user:password@host``.
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s@]+)@")


# --- docker compose


def compose_command() -> list[str]:
    """`docker compose` (the plugin) or Debian's `docker-compose`; a failure saying how to install it when
    neither exists (a skip only when SURVIVAL_MODEL_SKIP_COMPOSE=1 opts out)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if found := shutil.which("docker-compose"):
        return [found]
    if os.environ.get("SURVIVAL_MODEL_SKIP_COMPOSE") == "1":
        pytest.skip("docker compose is not installed (SURVIVAL_MODEL_SKIP_COMPOSE=1)")
    pytest.fail("neither `docker compose` nor `docker-compose` is installed: install Debian's with "
                "`apt-get install -y docker-compose` (or set SURVIVAL_MODEL_SKIP_COMPOSE=1 to skip these tests)")


def env_example_names() -> dict[str, bool]:
    """The settings env.example lists: name -> whether it is to be filled in (``NAME=`` with no value)."""
    names: dict[str, bool] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            names[match[1]] = not line.startswith("#") and match[2] == ""
    return names


def dummy_env(tmp_path: Path, drop: str | None = None) -> tuple[Path, dict[str, str]]:
    """An env file as an operator fills env.example in (a dummy value for every blank), with the key file
    as a dummy secret file; ``drop`` leaves one setting out."""
    values = {name: f"dummy-{name.lower().replace('_', '-')}" for name, blank in env_example_names().items()
              if blank and name != drop}
    key = tmp_path / "secrets" / "pseudonym.key"
    key.parent.mkdir(exist_ok=True)
    key.write_text("0123456789abcdef0123456789abcdef\n")
    values["SURVIVAL_MODEL_PSEUDONYM_KEY_FILE"] = str(key)
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return env_file, values


def run_compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # a bare environment: compose prefers the caller's variables to the env file's
    return subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=120,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(env_file.parent)})


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    """The compose file as `docker compose config` resolves it with dummy credentials, and those values."""
    env_file, values = dummy_env(tmp_path_factory.mktemp("compose"))
    done = run_compose_config(env_file)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout), values


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, published port) of a resolved service, in the v1 (`ip:port:port/tcp`) or v2 (mapping) form."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", "0.0.0.0"), int(port["published"])))
        else:
            parts = str(port).split("/")[0].split(":")
            ports.append((parts[0] if len(parts) == 3 else "0.0.0.0", int(parts[-2])))
    return ports


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else {k: str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> str:
    cmd = service.get("command") or []
    return cmd if isinstance(cmd, str) else " ".join(cmd)


def test_compose_config_accepts_the_file_with_the_deployments_secrets(compose: tuple[dict[str, Any], Any]) -> None:
    config, _ = compose
    assert set(config["services"]) == {"prefect-db", "mlflow-db", "minio", "minio-init", "prefect-server", "mlflow",
                                       "mlflow-init", "worker"}


def test_compose_config_refuses_to_start_without_a_credential(tmp_path: Path) -> None:
    env_file, _ = dummy_env(tmp_path, drop="PREFECT_AUTH_STRING")
    done = run_compose_config(env_file)
    assert done.returncode != 0
    assert "set PREFECT_AUTH_STRING in infra/docker/.env" in done.stderr


def test_only_the_servers_people_use_publish_a_port_on_loopback_and_each_requires_authentication(
        compose: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, values = compose
    services = config["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == PUBLISHED
    for name in published:
        assert {host for host, _ in published_ports(services[name])} == {"127.0.0.1"}, name  # the default
    # Prefect: basic auth on the API and UI, from the deployment's secret
    assert environment(services["prefect-server"])["PREFECT_SERVER_API_AUTH_STRING"] == values["PREFECT_AUTH_STRING"]
    # MLflow: the basic-auth app, its admin password from the secrets, nobody sees what it was not granted
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in command(mlflow)
    assert environment(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    auth_ini = environment(mlflow)["MLFLOW_AUTH_CONFIG_PATH"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"] if isinstance(v, str)}
    ini = Path(mounted[auth_ini]).read_text(encoding="utf-8")
    assert re.search(r"^default_permission = NO_PERMISSIONS$", ini, re.M)
    assert not re.search(r"^\s*admin_password\s*=", ini, re.M)


def test_every_client_authenticates_and_every_store_has_a_password(
        compose: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, values = compose
    env = {name: environment(service) for name, service in config["services"].items()}
    assert env["prefect-db"]["POSTGRES_PASSWORD"] == values["PREFECT_DB_PASSWORD"]
    assert env["mlflow-db"]["POSTGRES_PASSWORD"] == values["MLFLOW_DB_PASSWORD"]
    prefect_db = env["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://")
    assert f":{values['PREFECT_DB_PASSWORD']}@prefect-db" in prefect_db
    assert f":{values['MLFLOW_DB_PASSWORD']}@mlflow-db" in env["mlflow"]["MLFLOW_BACKEND_STORE_URI"]
    assert env["minio"]["MINIO_ROOT_PASSWORD"] == values["MINIO_ROOT_PASSWORD"]
    # MLflow reaches S3 with its own key (the bucket job creates it), not MinIO's root credentials
    assert env["mlflow"]["AWS_SECRET_ACCESS_KEY"] == values["MLFLOW_S3_SECRET_KEY"] != values["MINIO_ROOT_PASSWORD"]
    assert "--artifacts-destination=s3://" in command(config["services"]["mlflow"])
    assert "--serve-artifacts" in command(config["services"]["mlflow"])
    # the worker: Prefect's auth string, and the pipeline's own MLflow user (not the admin)
    assert env["worker"]["PREFECT_API_AUTH_STRING"] == values["PREFECT_AUTH_STRING"]
    assert env["worker"]["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_PIPELINE_PASSWORD"]
    assert env["worker"]["MLFLOW_TRACKING_USERNAME"] != env["mlflow"]["MLFLOW_AUTH_ADMIN_USERNAME"]


def test_every_service_is_health_checked_and_started_after_what_it_needs(
        compose: tuple[dict[str, Any], Any]) -> None:
    services = compose[0]["services"]
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == {"minio-init", "mlflow-init"}
    for name, service in services.items():
        if name not in one_shot:
            assert service["healthcheck"]["test"], name
        for needed, how in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if needed in one_shot else "service_healthy"
            assert how["condition"] == expected, (name, needed)
    assert set(services["worker"]["depends_on"]) == {"prefect-server", "mlflow", "mlflow-init"}


def test_the_worker_runs_the_compose_deployments_with_the_key_as_a_mounted_secret(
        compose: tuple[dict[str, Any], dict[str, str]]) -> None:
    config, values = compose
    worker = config["services"]["worker"]
    pool = command(worker).split("--pool ")[1].split()[0]
    deployments = {d["name"]: d for d in container_deployments() if d["work_pool"]["name"] == pool}
    assert set(deployments) == {"retrain-compose", "predict-compose"}
    [secret] = worker["secrets"]
    assert config["secrets"][secret["source"]]["file"] == values["SURVIVAL_MODEL_PSEUDONYM_KEY_FILE"]
    mlflow_port = command(config["services"]["mlflow"]).split("--port=")[1].split()[0]
    for deployment in deployments.values():
        overrides = deployment["parameters"]["overrides"]
        assert overrides["privacy.key_file"] == f"/run/secrets/{secret['target']}"
        assert overrides["tracking.tracking_uri"] == f"http://mlflow:{mlflow_port}"
    mounts = {v.split(":")[1] for v in worker["volumes"]}
    assert {f"{WORKDIR}/work", f"{WORKDIR}/data"} <= mounts


def test_env_example_lists_exactly_what_the_compose_file_asks_for_with_no_value() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    optional = set(re.findall(r"\$\{([A-Z0-9_]+):-", text))
    listed = env_example_names()
    assert {name for name, blank in listed.items() if blank} == required
    assert set(listed) == required | optional
    # the filled-in copies are never committed
    assert {".env", "secrets/"} <= set((DOCKER / ".gitignore").read_text(encoding="utf-8").split())


# --- no credential in a committed file


def committed_infra_files() -> list[Path]:
    ignored = {DOCKER / ".env", DOCKER / "secrets"}
    files = [p for p in (REPO / "infra").rglob("*")
             if p.is_file() and not any(p == i or i in p.parents for i in ignored)]
    return [*files, REPO / "prefect.yaml", REPO / ".dockerignore"]


def test_no_literal_credential_in_any_committed_infra_file() -> None:
    checked = 0
    for path in committed_infra_files():
        text = path.read_text(encoding="utf-8")
        for match in CREDENTIAL.finditer(text):
            value = match[2].strip("\"'")
            assert value == "" or value.startswith(("${", "$$")), f"{path}: {match[0]}"
            checked += 1
        for match in URL_PASSWORD.finditer(text):
            assert match[1].startswith("${"), f"{path}: {match[0]}"
            checked += 1
    assert checked >= 20  # the scan saw the compose file's credentials


def test_the_scan_finds_a_literal_credential() -> None:
    found = CREDENTIAL.finditer("POSTGRES_PASSWORD: hunter2\nX_TOKEN=abc\nA_PASSWORD: ${A_PASSWORD:?set A}")
    assert [(m[1], m[2]) for m in found] == [("POSTGRES_PASSWORD", "hunter2"), ("X_TOKEN", "abc"),
                                             ("A_PASSWORD", "${A_PASSWORD:?set")]
    assert [m[1] for m in URL_PASSWORD.finditer("postgresql://u:hunter2@db/x postgresql://u:${P}@db/x")] == [
        "hunter2", "${P}"]


# --- the images



def test_the_dockerfiles_install_the_locked_environment_as_a_non_root_user_with_the_code_in_the_image() -> None:
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")]
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text(encoding="utf-8")
        assert "COPY requirements/lock.txt requirements/lock.txt" in text, dockerfile
        installs = [line for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.startswith("RUN") and "pip install" in line]
        assert any("-c requirements/lock.txt -r /tmp/requirements.in" in line for line in installs), dockerfile
        assert all("-c requirements/lock.txt" in line or "--no-deps ." in line for line in installs), dockerfile
        assert re.findall(r"^USER (\S+)$", text, re.M)[-1] not in {"root", "0"}
        assert f"WORKDIR {WORKDIR}" in text and "pip install -e" not in text
        for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):  # what the build context must let in
            assert source == "." or any(source == a or source.startswith(a + "/") for a in allowed), source
    cpu = DOCKERFILES[0].read_text(encoding="utf-8")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu
    assert "NVIDIA_VISIBLE_DEVICES" in DOCKERFILES[1].read_text(encoding="utf-8")


def test_the_build_context_keeps_out_the_work_data_environment_and_secrets() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert lines[lines.index("*")] == "*" and not lines[0].startswith("!")  # an allowlist
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for kept_out in ("work", "data", ".venv", ".git", "infra/docker", "infra", "tests"):
        assert kept_out not in allowed


@pytest.mark.skipif(not (REPO / "requirements" / "lock.txt").is_file(), reason="requirements/lock.txt not written yet")
def test_the_lock_pins_the_torch_the_images_are_built_with() -> None:
    lock = (REPO / "requirements" / "lock.txt").read_text(encoding="utf-8")
    assert re.search(r"^torch==2\.14\.1\b", lock, re.M) and re.search(r"^torchvision==0\.29\.1\b", lock, re.M)


# --- Kubernetes


def k8s_template() -> dict[str, Any]:
    template: dict[str, Any] = json.loads(K8S_TEMPLATE.read_text(encoding="utf-8"))
    return template


def render(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The job configuration as a worker fills it in: the variables' defaults, then the deployment's job
    variables (Prefect's own templating; the worker adds the command, env, name and labels of the run)."""
    from prefect.utilities.templating import apply_values

    properties = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    values |= {"name": "run", "command": "prefect flow-run execute", "env": {"PREFECT_API_URL": "http://x/api"},
               "labels": {}} | job_variables
    rendered: dict[str, Any] = apply_values(copy.deepcopy(template["job_configuration"]), values)
    return rendered


def test_the_k8s_template_is_a_valid_prefect_base_job_template_with_every_variable_declared_and_used() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import find_placeholders

    template = k8s_template()
    validate_base_job_template(template)  # Prefect's check: every {{ variable }} is declared
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used == set(template["variables"]["properties"])
    assert set(template["variables"]["required"]) <= {
        name for name, spec in template["variables"]["properties"].items() if "default" in spec}


def test_the_k8s_job_requests_one_gpu_mounts_the_shared_storage_and_takes_secrets_from_a_secret() -> None:
    template = k8s_template()
    job = render(template, {})["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # prefect-kubernetes' job configuration refuses a manifest without these (at the pod spec, as its default)
    assert pod["parallelism"] == pod["completions"] == 1 and job["spec"]["backoffLimit"] == 0
    assert container["envFrom"] == [{"secretRef": {"name": "survival-model"}}]
    assert container["env"] == {"PREFECT_API_URL": "http://x/api"}  # the worker's settings only (a list once run)
    assert {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]} == {
        f"{WORKDIR}/work": False, f"{WORKDIR}/data": True}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims == {"work": "survival-model-work", "data": "survival-model-data"}
    uid = re.search(r"^ARG UID=(\d+)$", DOCKERFILES[1].read_text(encoding="utf-8"), re.M)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid[1]) and pod["securityContext"]["runAsNonRoot"]
    assert job["metadata"]["namespace"] == "survival-model" and pod["serviceAccountName"] == "survival-model-jobs"
    assert "cpu" not in container["resources"]["limits"]  # an unset variable leaves its key out
    # the variables a team sets reach the job; prediction holds no GPU
    variables = {"image": "registry.example.org/sm:cuda-1", "namespace": "mlops", "work_volume_claim": "w",
                 "secret_name": "s"}
    job = render(template, {**variables, "gpus": 0})["job_manifest"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.org/sm:cuda-1" and job["metadata"]["namespace"] == "mlops"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert container["envFrom"] == [{"secretRef": {"name": "s"}}]
    assert {"prefect.deployments.steps.set_working_directory": {"directory": WORKDIR}} in next(
        d for d in container_deployments() if d["name"] == "predict-k8s")["pull"]
    assert next(d for d in container_deployments() if d["name"] == "predict-k8s")["work_pool"]["job_variables"] == {
        "gpus": 0}


def test_no_variable_of_the_k8s_template_has_a_credential_for_a_default() -> None:
    properties = k8s_template()["variables"]["properties"]
    assert "default" not in properties["env"]
    assert not [name for name in properties if re.search("password|token|auth|key", name, re.I)]


# --- prefect.yaml: the container deployments


def container_deployments() -> list[dict[str, Any]]:
    data = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    return [d for d in data["deployments"] if d["work_pool"]["name"] != "survival-model"]


def test_prefect_yaml_runs_the_container_deployments_from_the_images_code_not_from_pwd() -> None:
    deployments = container_deployments()
    assert {d["name"] for d in deployments} == {"retrain-compose", "predict-compose", "retrain-k8s", "predict-k8s"}
    for deployment in deployments:
        assert deployment["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": WORKDIR}}]
        assert "$PWD" not in json.dumps(deployment)
        path = deployment["entrypoint"].split(":")[0]
        assert (REPO / path).is_file() and (REPO / deployment["parameters"]["params_path"]).is_file()
        # both are in the image (.dockerignore lets them in)
        allowed = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
        assert f"!{path.split('/')[0]}/" in allowed and f"!{deployment['parameters']['params_path']}" in allowed
