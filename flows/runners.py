"""The task runner a flow uses, chosen in ``params.yaml`` (orchestration.task_runner)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from prefect.settings import get_current_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from survival_model.config import Params

log = logging.getLogger(__name__)


def task_runner_for(params: Params) -> TaskRunner[Any]:
    """Threads by default (SimpleITK and NumPy release the GIL); a process pool; or Dask.

    ``dask``: ``prefect-dask``'s DaskTaskRunner on the cluster at ``orchestration.dask_address``, or on
    a LocalCluster of ``max_workers`` single-threaded worker processes when no address is given. The workers
    run the stage tasks themselves: they report to the flow's Prefect API and read and write the work directory
    at the flow's paths (docs/running.md, "Across machines").
    """
    orchestration = params.orchestration
    workers = orchestration.max_workers
    if orchestration.task_runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if orchestration.task_runner == "dask":
        from prefect_dask.task_runners import DaskTaskRunner  # prefect_dask, dask (~0.2 s): only when asked for

        if orchestration.dask_address:
            if (problem := unreachable_api(orchestration.dask_address, get_current_settings().api.url)) is not None:
                log.warning(problem)
            return DaskTaskRunner(address=orchestration.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=workers)


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def unreachable_api(dask_address: str, api_url: str | None) -> str | None:
    """Why Dask workers on other hosts could not report their task runs, or None: the scheduler is not on loopback
    (so its workers may be elsewhere) but the Prefect API is (or is Prefect's temporary server, ``api_url`` None),
    and each worker would look for it on its own host."""
    scheduler = urlsplit(dask_address if "://" in dask_address else f"tcp://{dask_address}").hostname
    if _loopback(scheduler) or (api_url is not None and not _loopback(urlsplit(api_url).hostname)):
        return None
    where = f"at {api_url}" if api_url else "Prefect's temporary server (no PREFECT_API_URL)"
    return (f"orchestration.dask_address {dask_address} may have workers on other hosts, but the Prefect API is "
            f"{where}, on this host's loopback: workers elsewhere cannot report their task runs there. Point "
            "PREFECT_API_URL at a Prefect server every worker can reach (docs/running.md, Across machines)")
