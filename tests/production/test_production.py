"""The production-like run: the retraining deployment of ``prefect.yaml`` run by a real Prefect worker against
a Prefect server on PostgreSQL, tracked in an MLflow server on PostgreSQL whose artifacts live in an S3 store,
every server behind credentials (tests/production/stack.py). Asserted through the servers' own APIs."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PIPELINE_SETTINGS, REPO, overrides_for, params_for
from tests.production.stack import BUCKET, LOOPBACK, Stack, answers, production_stack

pytestmark = pytest.mark.slow

SECRET_BLOCK = "survival-model-pseudonym-key"
DEPLOYMENT = "brain-mets-pipeline/retrain"
RUN_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with production_stack(tmp_path_factory.mktemp("production")) as running:
        yield running


@pytest.fixture()
def client_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process as a client of the stack: Prefect's settings and MLflow's credentials."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = stack.client_env()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"):
        monkeypatch.setenv(name, env[name])
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"],
                             PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}):
        yield env


def deploy_retraining(stack: Stack, env: dict[str, str]) -> None:
    """``prefect deploy`` of the repository's retraining deployment, as a team would, with its weekly schedule
    switched off here (a run must not start on its own in the middle of the test)."""
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", DEPLOYMENT.split("/")[1]]
    result = subprocess.run(command, cwd=REPO, env={**stack_env(stack), **env}, capture_output=True,
                            encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def stack_env(stack: Stack) -> dict[str, str]:
    from tests.production.stack import base_environment

    return {**base_environment(stack.root), "PREFECT_HOME": str(stack.root / "deployer-home")}


async def pause_schedules() -> None:
    from prefect import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(DEPLOYMENT)
        for schedule in deployment.schedules:
            await client.update_deployment_schedule(deployment.id, schedule.id, active=False)


async def task_states(flow_run_id: Any) -> list[str]:
    """The state names of every task run of a flow run and of its subflow runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        runs, frontier = [flow_run_id], [flow_run_id]
        while frontier:
            children = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [child.id for child in children]
            runs.extend(frontier)
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))
        return [task.state.name for task in tasks if task.state is not None]


async def artifact_keys(flow_run_id: Any) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        return [str(artifact.key) for artifact in artifacts]


def test_unauthenticated_requests_are_refused(stack: Stack) -> None:
    import psycopg

    version = f"{stack.prefect_url}/api/admin/version"  # (only /api/health answers everyone, for probes)
    assert answers(version) == 401
    assert answers(version, auth=("admin", "wrong")) == 401
    assert answers(version, auth=stack.prefect_auth) == 200
    experiments = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert answers(experiments) == 401
    assert answers(experiments, auth=(stack.mlflow_auth[0], "wrong")) == 401
    assert answers(experiments, auth=stack.mlflow_auth) == 200
    # an unsigned S3 request is refused (moto answers it with 500: it fails on the missing header), and so is
    # one signed with an unknown key
    assert answers(f"{stack.s3.endpoint}/{BUCKET}") in (403, 500)
    from botocore.exceptions import ClientError

    from tests.production.stack import S3

    stranger = S3(stack.s3.endpoint, "AKIAUNKNOWNKEY000000", "wrong")
    with pytest.raises(ClientError, match=r"InvalidAccessKeyId|AccessDenied|403"):
        stranger.client().list_objects_v2(Bucket=BUCKET)
    assert stack.s3.client().list_objects_v2(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=LOOPBACK, port=stack.postgres.port, user="mlflow", password="wrong", dbname="mlflow")


def test_retraining_deployment_runs_through_the_worker(
        stack: Stack, client_env: dict[str, str], tiny_cohort_master: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from prefect.blocks.system import Secret
    from prefect.deployments import run_deployment
    from prefect.utilities.asyncutils import run_coro_as_sync

    work = tmp_path / "work"
    params = params_for(tiny_cohort_master, work, **PIPELINE_SETTINGS)  # the warm work directory, its key beside it
    key_file = params.privacy.key_file
    # The key reaches the run only through the server's Secret block: no key file on the worker's side.
    Secret(value=key_file.read_text().strip()).save(SECRET_BLOCK, overwrite=True)
    key_file.unlink()
    overrides = {**overrides_for(tiny_cohort_master, work, **PIPELINE_SETTINGS),
                 "tracking.tracking_uri": stack.mlflow_url,
                 "privacy.key_secret_block": SECRET_BLOCK, "privacy.create_key_if_missing": False}
    deploy_retraining(stack, client_env)
    run_coro_as_sync(pause_schedules())

    runs = []
    # The second run does not reuse whole stages, so each patient's tasks meet Prefect's cache (on this server)
    for reuse in (True, False):
        flow_run = run_deployment(DEPLOYMENT, parameters={
            "params_path": str(REPO / "params.yaml"),
            "overrides": {**overrides, "orchestration.reuse_unchanged_stages": reuse}}, timeout=RUN_TIMEOUT_S)
        assert flow_run.state is not None and flow_run.state.is_completed(), (flow_run.state, stack.logs())
        runs.append(flow_run)
    assert not key_file.exists()  # the deployment never creates a key

    second = run_coro_as_sync(task_states(runs[1].id))
    assert second.count("Cached") >= 3 * 10, second  # ingestion, preprocessing, features of the 10 patients
    assert run_coro_as_sync(artifact_keys(runs[0].id)), "no Prefect artifacts published"

    model_name = params.registry.model_name
    mlflow = MlflowClient(tracking_uri=stack.mlflow_url)
    versions = mlflow.search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 1, [v.version for v in versions]  # the second run reused the first: no new version
    assert "champion" in mlflow.get_registered_model(model_name).aliases
    # the artifacts are in the object store, proxied by the server; nothing of them on the local disk
    keys = stack.s3.keys("mlflow/")
    assert any(key.endswith("/MLmodel") for key in keys), keys[:20]
    local = [p for root in (work, REPO, stack.root / "worker") for p in root.rglob("MLmodel")
             if ".venv" not in p.parts]
    assert local == [], local
    assert not (work / "mlflow").exists()

    # the champion predicts in fresh processes in another directory, fetched from the S3-backed server through
    # its proxy with the client's credentials only, its code travelling with it (tests/registry/portable.py)
    import mlflow as mlflow_api
    import pandas as pd
    from mlflow.models import Model

    from tests.registry.portable import assert_portable

    champion = mlflow.get_model_version_by_alias(model_name, "champion")
    local = Path(mlflow_api.artifacts.download_artifacts(
        artifact_uri=mlflow.get_model_version_download_uri(model_name, str(champion.version)),
        dst_path=str(tmp_path / "downloaded"), tracking_uri=stack.mlflow_url))
    frame = Model.load(str(local)).load_input_example(str(local))
    assert isinstance(frame, pd.DataFrame) and len(frame) >= 1
    expected = mlflow_api.pyfunc.load_model(str(local)).predict(frame)
    credentials = {k: client_env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                              "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD")}
    assert_portable(f"models:/{model_name}@champion", frame, expected, tmp_path / "elsewhere",
                    tracking_uri=stack.mlflow_url, env=credentials)


def test_mlflow_ui_answers_behind_auth(stack: Stack) -> None:
    request = urllib.request.Request(stack.mlflow_url)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(request, timeout=10)
