"""The task runner a flow uses, chosen in ``params.yaml`` (orchestration.task_runner)."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from survival_model.config import Params


def task_runner_for(params: Params) -> TaskRunner[Any]:
    """Threads by default (SimpleITK and NumPy release the GIL); a process pool; or Dask.

    ``dask``: ``prefect-dask``'s DaskTaskRunner on the cluster at ``orchestration.dask_address``, or on
    a LocalCluster of ``max_workers`` single-threaded worker processes when no address is given.
    """
    orchestration = params.orchestration
    workers = orchestration.max_workers
    if orchestration.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if orchestration.task_runner == "dask":
        from prefect_dask.task_runners import DaskTaskRunner  # prefect_dask, dask (~0.2 s): only when asked for

        if orchestration.dask_address:
            return DaskTaskRunner(address=orchestration.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=workers)
