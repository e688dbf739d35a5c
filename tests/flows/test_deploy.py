"""Deployments: scheduled retraining and on-demand prediction applied to a Prefect test server and read
back, prefect.yaml kept equal to params.yaml, and `serve` refusing servers that cannot run schedules."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows import cli, deploy
from flows.pipeline import pipeline
from survival_model import local_servers
from survival_model.config import Params, load_params
from survival_model.errors import ConfigError
from tests.conftest import REPO

HAS_PREDICT = (REPO / "flows" / "predict.py").is_file()
needs_predict = pytest.mark.skipif(not HAS_PREDICT, reason="flows/predict.py is not written yet")


def read_back(name: str) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def applied_retraining(**overrides: Any) -> tuple[Any, Path]:
    """Build the retraining deployment from params.yaml (with overrides), apply it, read it back."""
    params_path = REPO / "params.yaml"
    params = load_params(params_path, overrides)
    deployment = deploy.retrain_deployment(params, params_path, overrides)
    deployment.apply()
    return read_back(deploy.full_name(deployment)), params_path


@pytest.mark.usefixtures("prefect_harness")
def test_the_retraining_deployment_has_the_schedule_of_params_yaml() -> None:
    schedule = load_params(REPO / "params.yaml").registry.schedule
    found, params_path = applied_retraining()
    assert found.name == "retrain" and found.entrypoint == "flows.pipeline.pipeline"
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in found.schedules] == [
        (schedule.cron, schedule.timezone, True)]
    assert found.paused is False
    assert found.parameters == {"params_path": str(params_path.resolve())}
    assert set(found.tags) == {"survival-model", "retrain"}
    # one retraining at a time: a run started beside a running one waits (two registry flows at once race)
    assert found.global_concurrency_limit is not None and found.global_concurrency_limit.limit == 1
    assert deploy.RETRAIN_CONCURRENCY == 1


@pytest.mark.usefixtures("prefect_harness")
def test_overrides_change_the_schedule_and_reach_the_runs_but_the_schedule_does_not() -> None:
    applied_retraining()
    found, _ = applied_retraining(**{"registry.schedule.cron": "*/5 * * * *",
                                     "registry.schedule.timezone": "Europe/Berlin", "training.fit.epochs": 3})
    # applied again: the schedule is replaced, not added
    assert [(s.schedule.cron, s.schedule.timezone) for s in found.schedules] == [("*/5 * * * *", "Europe/Berlin")]
    assert found.parameters["overrides"] == {"training.fit.epochs": 3}


@pytest.mark.usefixtures("prefect_harness")
def test_an_inactive_schedule_gives_a_paused_deployment_and_serving_again_resumes_it() -> None:
    found, _ = applied_retraining(**{"registry.schedule.active": False})
    assert found.paused is True and [s.active for s in found.schedules] == [False]
    found, _ = applied_retraining()
    assert found.paused is False and [s.active for s in found.schedules] == [True]


def test_next_run_and_bad_schedules() -> None:
    from datetime import UTC, datetime

    from survival_model.config import ScheduleParams
    from survival_model.errors import ConfigError

    monday = deploy.next_run(ScheduleParams(cron="0 3 * * 1", timezone="UTC"), datetime(2026, 1, 1, tzinfo=UTC))
    assert monday is not None and (monday.year, monday.month, monday.day, monday.hour) == (2026, 1, 5, 3)
    assert deploy.next_run(ScheduleParams(active=False)) is None
    with pytest.raises(ConfigError, match=r"registry\.schedule\.timezone: 'Mars/Base' is not an IANA time zone"):
        deploy.retrain_schedule(ScheduleParams(timezone="Mars/Base"))
    with pytest.raises(ConfigError, match=r"registry\.schedule\.cron: Invalid cron string"):
        deploy.retrain_schedule(ScheduleParams(cron="0 25 * * *"))


@needs_predict
@pytest.mark.usefixtures("prefect_harness")
def test_the_prediction_deployment_runs_on_demand_only() -> None:
    params_path = REPO / "params.yaml"
    deployment = deploy.predict_deployment(params_path)
    deployment.apply()
    found = read_back("brain-mets-predict/predict")
    assert found.schedules == [] and found.paused is False
    assert found.entrypoint == "flows.predict.predict"
    assert found.parameters == {"params_path": str(params_path.resolve())}


# prefect.yaml: the work-pool route declares the same deployments


def prefect_yaml() -> dict[str, Any]:
    from prefect.cli.deploy._models import PrefectYamlModel  # what `prefect deploy` validates it with

    data = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    PrefectYamlModel.model_validate(data)
    return {d["name"]: d for d in data["deployments"]}


def flow_at(entrypoint: str) -> Any:
    path, name = entrypoint.split(":")
    assert (REPO / path).is_file(), entrypoint
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


#: Each topology's pair of deployments in prefect.yaml and its work pool (docs/deployment.md).
TOPOLOGIES = {"": "survival-model", "-compose": "survival-model-compose", "-k8s": "survival-model-k8s"}


def test_prefect_yaml_deployments_read_the_pseudonym_key_where_the_deployment_keeps_it_and_never_create_one(
        ) -> None:
    from tasks.privacy import resolve_key

    for name, entry in prefect_yaml().items():
        overrides = entry["parameters"]["overrides"]
        assert overrides["privacy.create_key_if_missing"] is False, name
        privacy = load_params(REPO / entry["parameters"]["params_path"], overrides).privacy
        if entry["work_pool"]["name"] == "survival-model":  # a Prefect Secret block on the server
            assert privacy.key_secret_block == "survival-model-pseudonym-key", name
        elif name.endswith("-compose"):  # the compose secret, mounted in the worker's container
            assert privacy.key_secret_block is None and privacy.key_file == Path("/run/secrets/pseudonym_key")
        else:  # Kubernetes: the job's environment, from the Secret the job template names
            assert name.endswith("-k8s") and privacy.key_secret_block is None, name
            assert privacy.key_env == "SURVIVAL_MODEL_PSEUDONYM_KEY"
        # where the key is missing, a deployment's run stops: nothing is created
        with pytest.raises(ConfigError, match=r"no pseudonymisation key: .*from a Prefect deployment"):
            resolve_key(privacy.model_copy(update={"key_secret_block": None, "key_file": Path("/nonexistent/k")}),
                        deployment=True, environ={})
        # job variables say where things are, never what a secret is
        assert not {k for k in entry["work_pool"].get("job_variables", {}) if "key" in k or "secret" in k}, name
    text = (REPO / "prefect.yaml").read_text(encoding="utf-8")
    assert "Secret(value=" in text


def test_serve_refuses_when_its_runs_would_find_no_pseudonym_key(project: Path) -> None:
    (project / "pseudonym.key").unlink()
    params = load_params(project / "params.yaml")
    with pytest.raises(ConfigError, match=r"no pseudonymisation key: .*from a Prefect deployment"):
        deploy.deployments(params, project / "params.yaml")
    assert not (project / "pseudonym.key").exists()  # and none was created


def test_prefect_yaml_schedules_the_pipeline_as_params_yaml_does() -> None:
    data = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    assert list(data["pull"][0]) == ["prefect.deployments.steps.set_working_directory"]
    declared = prefect_yaml()
    assert set(declared) == {f"{name}{suffix}" for suffix in TOPOLOGIES for name in (deploy.RETRAIN, deploy.PREDICT)}
    schedule = load_params(REPO / "params.yaml").registry.schedule
    for suffix, pool in TOPOLOGIES.items():
        retrain = declared[deploy.RETRAIN + suffix]
        assert flow_at(retrain["entrypoint"]) is pipeline
        assert set(retrain["parameters"]) <= set(pipeline.parameters.properties)
        assert (REPO / retrain["parameters"]["params_path"]).is_file()
        assert [(s["cron"], s["timezone"], s["active"]) for s in retrain["schedules"]] == [
            (schedule.cron, schedule.timezone, schedule.active)]
        assert retrain["concurrency_limit"] == deploy.RETRAIN_CONCURRENCY == 1  # as `serve` deploys it
        assert retrain["work_pool"]["name"] == declared[deploy.PREDICT + suffix]["work_pool"]["name"] == pool


@needs_predict
def test_prefect_yaml_predicts_with_the_prediction_flow() -> None:
    from flows.predict import predict

    for suffix in TOPOLOGIES:
        predict_entry = prefect_yaml()[deploy.PREDICT + suffix]
        assert flow_at(predict_entry["entrypoint"]) is predict
        assert set(predict_entry["parameters"]) <= set(predict.parameters.properties)
        assert not predict_entry.get("schedules")
    assert predict.name == "brain-mets-predict"


# the `serve` command


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of params.yaml with private servers home; Prefect's environment restored afterwards."""
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    data.setdefault("privacy", {})["key_file"] = str(tmp_path / "pseudonym.key")
    (tmp_path / "pseudonym.key").write_text("0123456789abcdef0123456789abcdef\n")  # as a first local run leaves it
    data.setdefault("servers", {})["home"] = str(tmp_path / "servers")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(REPO / "infra", tmp_path / "infra")
    monkeypatch.delenv("SURVIVAL_MODEL_PSEUDONYM_KEY", raising=False)
    # `serve` sets Prefect's environment for its process: recorded here so that it is restored
    monkeypatch.setenv("PREFECT_HOME", os.environ.get("PREFECT_HOME", str(tmp_path / "prefect")))
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.delenv("PREFECT_API_URL")
    return tmp_path


def serve(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["serve", "--params", str(project / "params.yaml"), "--no-generate", *args],
                                catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


def test_serve_refuses_prefects_temporary_server(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the local server is not up and its port is taken by another program: the run command would fall
    # back to Prefect's temporary server, which cannot run schedules
    monkeypatch.setattr(local_servers, "endpoints", lambda params: {})
    monkeypatch.setattr(local_servers, "port_in_use", lambda host, port: True)
    monkeypatch.setattr(local_servers, "launch", pytest.fail)
    code, out = serve(project)
    assert code == 1, out
    assert "Prefect's temporary server cannot run schedules" in out
    assert "--set servers.prefect_port=PORT" in out


def test_serve_refuses_a_prefect_api_url_that_does_not_answer(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    code, out = serve(project)
    assert code == 1, out
    assert "PREFECT_API_URL=http://127.0.0.1:9/api does not answer" in out


@needs_predict
@pytest.mark.usefixtures("prefect_harness")
def test_serve_prints_what_it_serves_and_how_to_predict(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value())
    monkeypatch.setenv("PREFECT_API_URL", api)
    served: list[tuple[Params, list[Any]]] = []
    monkeypatch.setattr(deploy, "serve_deployments",
                        lambda params, path, overrides, deployments: served.append((params, deployments)))
    code, out = serve(project, "--set", "registry.schedule.cron=30 4 * * *", "--set", "training.fit.epochs=3")
    assert code == 0, out
    assert "brain-mets-pipeline/retrain retraining, cron '30 4 * * *' (UTC), next run " in out
    assert "brain-mets-predict/predict prediction on demand" in out
    assert f"Prefect UI: {api.removesuffix('/api')}/deployments" in out
    assert "deployment run 'brain-mets-predict/predict' -p params_path=" in out
    [(params, (retrain, predict))] = served
    assert params.registry.schedule.cron == "30 4 * * *"
    assert retrain.parameters["overrides"] == predict.parameters["overrides"] == {"training.fit.epochs": 3}


# the container deployments, registered with Prefect's own `prefect deploy`


@pytest.mark.usefixtures("prefect_harness")
def test_prefect_deploy_registers_the_container_deployments_to_run_the_images_code() -> None:
    """The compose and Kubernetes pairs go through `prefect deploy` (the CLI, against the test server) onto a
    process pool and a Kubernetes pool made from infra/kubernetes/base-job-template.json (which the server
    validates), and read back with the image's folder as working directory and no secret stored."""
    import json
    import subprocess
    import sys

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    template = json.loads((REPO / "infra" / "kubernetes" / "base-job-template.json").read_text(encoding="utf-8"))
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="survival-model-compose", type="process"), overwrite=True)
        client.create_work_pool(WorkPoolCreate(name="survival-model-k8s", type="kubernetes",
                                               base_job_template=template), overwrite=True)
    names = [f"{name}{suffix}" for suffix in ("-compose", "-k8s") for name in (deploy.RETRAIN, deploy.PREDICT)]
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy",
                           *[arg for name in names for arg in ("--name", name)]],
                          cwd=REPO, env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    schedule = load_params(REPO / "params.yaml").registry.schedule
    for name in names:
        flow_name = "brain-mets-pipeline" if name.startswith(deploy.RETRAIN) else "brain-mets-predict"
        found = read_back(f"{flow_name}/{name}")
        assert found.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                     {"directory": "/opt/survival-model"}}], name
        assert found.work_pool_name == TOPOLOGIES["-" + name.split("-")[1]]
        assert found.parameters["overrides"]["privacy.create_key_if_missing"] is False
        if name.startswith(deploy.RETRAIN):
            assert [(s.schedule.cron, s.schedule.timezone) for s in found.schedules] == [
                (schedule.cron, schedule.timezone)]
            assert found.global_concurrency_limit is not None and found.global_concurrency_limit.limit == 1
    assert read_back("brain-mets-predict/predict-k8s").job_variables == {"gpus": 0}
    assert read_back("brain-mets-pipeline/retrain-k8s").job_variables == {}
