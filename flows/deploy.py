"""Deployments: scheduled retraining (``registry.schedule``) and prediction on demand.

``survival-model serve`` serves both from one process (:func:`serve_deployments`) against the
long-lived Prefect server: Prefect's temporary server cannot run schedules. ``prefect.yaml`` declares
the same two deployments for a work pool and a worker instead.

The deployments carry the absolute ``params.yaml`` path and the command line's ``--set`` overrides as
parameters, so a scheduled run uses the settings the deployment was served with.

One retraining runs at a time (``concurrency_limit`` 1, :data:`RETRAIN_CONCURRENCY`): a run started while
another is running (a manual ``prefect deployment run`` beside the schedule) waits in the queue (Prefect's
default ``ENQUEUE`` collision strategy), since two registry flows at once would read and write the same model
registry. Runs started outside the deployment (``survival-model run``) are not counted by that limit: on one
machine and work directory, the registry flow's file lock (``survival_model.registry.registry.registry_lock``)
makes their registering and gating take turns with the deployment's.

The pseudonymisation key is part of a deployment: a run from a deployment never creates one (a new key
would give every patient a new id and hide which patients a registered model trained on). It comes from
``privacy`` in the params (``tasks.privacy``): a Prefect Secret block named by ``privacy.key_secret_block``
(what ``prefect.yaml``'s work-pool deployments use: it is loaded at run time, so the key is never stored in
the deployment), the environment variable named by ``privacy.key_env`` (``SURVIVAL_MODEL_PSEUDONYM_KEY``;
for ``serve``, the serving process's environment), or an existing ``privacy.key_file``. :func:`deployments`
checks that the serving environment has the key before anything is served, so a scheduled run does not
fail on it at 3 a.m.; never put the key itself in a deployment's parameters or job variables.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron, Schedule
from prefect.server.schemas.schedules import CronSchedule
from prefect.types.entrypoint import EntrypointType

from flows.pipeline import pipeline
from flows.predict import predict
from survival_model.config import Params, ScheduleParams
from survival_model.errors import ConfigError
from tasks.privacy import check_key_available

RETRAIN = "retrain"
PREDICT = "predict"
TAGS = ["survival-model"]
#: Retraining runs of the deployment at once (a Prefect deployment concurrency limit; more wait their turn).
RETRAIN_CONCURRENCY = 1
#: Overrides of the schedule itself shape the deployment, not the runs: kept out of the run parameters.
_SCHEDULE_KEY = "registry.schedule"


def full_name(deployment: RunnerDeployment) -> str:
    """``<flow name>/<deployment name>``, as ``prefect deployment run`` takes it."""
    return f"{deployment.flow_name}/{deployment.name}"


def run_parameters(params_path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flows' parameters: the params file (absolute) and the overrides that are run settings."""
    parameters: dict[str, Any] = {"params_path": str(Path(params_path).resolve())}
    settings = {k: v for k, v in (overrides or {}).items() if not k.startswith(_SCHEDULE_KEY)}
    if settings:
        parameters["overrides"] = settings
    return parameters


def retrain_schedule(schedule: ScheduleParams) -> Schedule:
    """The retraining cron in its timezone (``to_deployment`` takes no timezone: it goes on the schedule)."""
    if schedule.timezone not in available_timezones():  # what Prefect's cron schedule accepts
        raise ConfigError(f"registry.schedule.timezone: {schedule.timezone!r} is not an IANA time zone "
                          "(e.g. UTC, Europe/Berlin)")
    try:
        return Cron(schedule.cron, timezone=schedule.timezone, active=schedule.active)
    except ValueError as exc:  # e.g. an hour of 25
        raise ConfigError(f"registry.schedule.cron: {exc}") from None


def next_run(schedule: ScheduleParams, after: datetime | None = None) -> datetime | None:
    """When the retraining schedule fires next (None when it is inactive), computed as Prefect's
    scheduler computes it."""
    if not schedule.active:
        return None
    retrain_schedule(schedule)  # the timezone, checked
    dates = asyncio.run(CronSchedule(cron=schedule.cron, timezone=schedule.timezone).get_dates(n=1, start=after))
    return dates[0] if dates else None


def _made(deployment: object) -> RunnerDeployment:
    """``to_deployment`` is async-dispatched: it returns a coroutine when called inside an event loop."""
    if not isinstance(deployment, RunnerDeployment):
        raise TypeError("build the deployments outside a running event loop (or await Flow.ato_deployment)")
    return deployment


def retrain_deployment(
    params: Params, params_path: str | Path, overrides: dict[str, Any] | None = None
) -> RunnerDeployment:
    """The end-to-end pipeline on ``registry.schedule``; paused, with an inactive schedule, when
    ``registry.schedule.active`` is false (it can still be run on demand); one run at a time."""
    schedule = params.registry.schedule
    return _made(pipeline.to_deployment(
        name=RETRAIN,
        schedules=[retrain_schedule(schedule)],
        paused=not schedule.active,
        concurrency_limit=RETRAIN_CONCURRENCY,
        parameters=run_parameters(params_path, overrides),
        tags=[*TAGS, RETRAIN],
        description=f"Scheduled retraining: the whole pipeline (ingest -> evaluate -> register and gate), "
                    f"cron {schedule.cron!r} ({schedule.timezone}).",
        entrypoint_type=EntrypointType.MODULE_PATH,  # importable wherever the package is installed
    ))


def predict_deployment(params_path: str | Path, overrides: dict[str, Any] | None = None) -> RunnerDeployment:
    """Prediction with a registered model (alias ``champion`` by default), on demand: no schedule."""
    return _made(predict.to_deployment(
        name=PREDICT,
        parameters=run_parameters(params_path, overrides),
        tags=[*TAGS, PREDICT],
        description="Prediction on demand for the patients in params.yaml with a registered model "
                    "(parameters: model, default champion; gradcam).",
        entrypoint_type=EntrypointType.MODULE_PATH,
    ))


def deployments(
    params: Params, params_path: str | Path, overrides: dict[str, Any] | None = None
) -> list[RunnerDeployment]:
    """Both deployments: retraining first, then prediction (a :class:`ConfigError` when their runs would
    find no pseudonymisation key in this environment: they never create one)."""
    check_key_available(params.privacy)
    return [retrain_deployment(params, params_path, overrides), predict_deployment(params_path, overrides)]


def serve_deployments(
    params: Params, params_path: str | Path, overrides: dict[str, Any] | None = None,
    served: list[RunnerDeployment] | None = None,
) -> None:
    """Register both deployments and run their flow runs from this process until it is stopped (blocks).

    Stopping (Ctrl+C, SIGTERM) pauses the deployments, so no scheduled runs pile up while nothing
    serves them; serving again resumes them.
    """
    serve(*(served or deployments(params, params_path, overrides)), print_starting_message=False)
