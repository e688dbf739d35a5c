"""The one adapter from a library stage (``survival_model.stage``) to a Prefect task.

The task's cache key is the stage's own key and a hit needs the stage's output files, so Prefect's cache
and the stage's folder always agree; retries are for transient errors only (``tasks.common``). A run is
named by the stage's label (``preprocess-<case id>``, ``train-fold-2``) and the task by the stage's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar, cast

from prefect import Task, task
from prefect.futures import PrefectFuture

from survival_model import stage as stage_lib
from survival_model.config import Params
from tasks.common import configure

R = TypeVar("R")


@task(name="stage", task_run_name="{label}")
def run_stage(label: str, stage: stage_lib.Stage[Any], work_dir_id: str) -> Any:
    """Load the stage when it is complete, otherwise compute it (``survival_model.stage.run``), after checking that
    wherever this runs (a Dask worker on another host) sees the flow's work directory (``work_dir_id``)."""
    stage_lib.check_work_dir(stage.work_dir, work_dir_id)
    return stage_lib.run(stage)


def stage_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    """The cache key of a :func:`run_stage` call: its stage's key and the files a hit needs."""
    stage: stage_lib.Stage[Any] = inputs["stage"]
    return stage.key(), stage.outputs(stage.folder())


class StageTasks:
    """Runs stages as Prefect tasks configured for one run's params (one configured task per stage name)."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self._tasks: dict[str, Task[..., Any]] = {}
        self._work_dir_ids: dict[Path, str] = {}

    def work_dir_id(self, stage: stage_lib.Stage[Any]) -> str:
        """The id of ``stage``'s work directory, read (or created) here, where the flow runs."""
        if stage.work_dir not in self._work_dir_ids:
            self._work_dir_ids[stage.work_dir] = stage_lib.work_dir_id(stage.work_dir)
        return self._work_dir_ids[stage.work_dir]

    def task(self, stage: stage_lib.Stage[Any]) -> Task[..., Any]:
        """:func:`run_stage` named after ``stage``, with this run's retries, timeout, storage and the
        stage's cache key."""
        if stage.name not in self._tasks:
            self._tasks[stage.name] = configure(run_stage.with_options(name=stage.name), self.params, stage_key)
        return self._tasks[stage.name]

    def submit(self, stage: stage_lib.Stage[R]) -> PrefectFuture[R]:
        """Submit ``stage`` to the flow's task runner."""
        future: PrefectFuture[R] = self.task(stage).submit(stage.label(), stage, self.work_dir_id(stage))
        return future

    def __call__(self, stage: stage_lib.Stage[R]) -> R:
        """Run ``stage`` as a task in this thread and return its result."""
        return cast(R, self.task(stage)(stage.label(), stage, self.work_dir_id(stage)))
