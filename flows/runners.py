"""The task runner a flow uses, chosen in ``params.yaml`` (orchestration.task_runner)."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from survival_model.config import Params


def task_runner_for(params: Params) -> TaskRunner[Any]:
    """Threads by default (SimpleITK and NumPy release the GIL); a process pool when asked."""
    workers = params.orchestration.max_workers
    if params.orchestration.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    return ThreadPoolTaskRunner(max_workers=workers)
