"""Preprocessing and features on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on
loopback (the project environment's CLI, each its own process, one thread each), as a team's cluster would run them.

The workers share nothing with the flow but the work directory (an absolute path, as a shared mount would be):
they start in another directory, with another home and without the pseudonymisation key, which only the flow's
environment holds; the clinical tables are harmonised on them with the key the flow passed. The feature table,
and every preprocessed and feature file, must be byte-identical to a threads run's on the same input, and every
stage task must have run in those two worker processes, none in the flow's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from flows.imaging import imaging
from flows.ingest import ingest
from flows.runners import task_runner_for
from survival_model.config import Params, load_params
from survival_model.features.stage import FeatureTable
from survival_model.ingest.discovery import discover_cases
from tests.conftest import REPO, params_for, warm_work
from tests.flows.test_ingest_flow import task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")

log = logging.getLogger(__name__)

#: The environment variable that holds the pseudonymisation key in the flow's process only.
KEY_ENV = "SURVIVAL_MODEL_DASK_TEST_KEY"
#: What the runs compute: the per-patient stages (ingestion's clinical tables are recomputed by the Dask run only).
COMPUTED = ("preprocess", "features")


@dataclass
class Cluster:
    address: str
    client: Client
    workers: list[subprocess.Popen[bytes]]
    cwd: Path


def _start(command: list[str], log_file: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture()
def dask_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """``dask scheduler`` on a free loopback port (``--port 0``, its address read from its scheduler file) and two
    ``dask worker`` processes (no nanny: the worker is the process started here), stopped afterwards."""
    elsewhere = tmp_path / "workers"  # not the flow's cwd, home or key
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"HOME": str(elsewhere)}
    scheduler_file = elsewhere / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    processes = [_start([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(scheduler_file), "--idle-timeout", "600"],
                        elsewhere / "scheduler.log", elsewhere, env)]
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file() and processes[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler_file.is_file(), (elsewhere / "scheduler.log").read_text()
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            processes.append(_start([*dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                     "--host", "127.0.0.1", "--name", f"worker-{i}", "--death-timeout", "60",
                                     "--local-directory", str(elsewhere / f"worker-{i}")],
                                    elsewhere / f"worker-{i}.log", elsewhere, env))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            yield Cluster(address, client, processes[1:], elsewhere)
    finally:
        for process in reversed(processes):  # only the processes started here, by their handles
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cold_copy(data_dir: Path, work_dir: Path, *, recompute_clinical: bool, **overrides: Any) -> Params:
    """``params_for`` on a copy of the session's warm work directory with the per-patient imaging removed (so it is
    computed), and the clinical tables too when ``recompute_clinical``."""
    params = params_for(data_dir, work_dir, **overrides)
    for stage in [*COMPUTED, *(["ingest/clinical"] if recompute_clinical else [])]:
        shutil.rmtree(work_dir / stage)
    return params


def run_imaging(params: Params) -> tuple[FeatureTable, float, dict[str, str]]:
    """Ingestion then the imaging flow, both on ``params``' task runner: the table, the imaging flow's wall time,
    the final state of every task run of both."""
    cohort_state = ingest.with_options(task_runner=task_runner_for(params))(params, return_state=True)
    started = time.perf_counter()
    state = imaging.with_options(task_runner=task_runner_for(params))(params, cohort_state.result(),
                                                                      return_state=True)
    seconds = time.perf_counter() - started
    table: FeatureTable = state.result()
    # task states reach the API asynchronously: wait for every case's (and each site's discovery and clinical table)
    cases = sum(len(discover_cases(site, i.images)) for site, i in params.institutions.items())
    states = {**task_states(cohort_state.state_details.flow_run_id, at_least=cases + 2 * len(params.institutions)),
              **task_states(state.state_details.flow_run_id, at_least=20)}
    return table, seconds, states


def outputs(work_dir: Path) -> dict[str, Any]:
    """Every file the computed stages wrote, by path in the work directory: its bytes (a QC record parsed, without
    its ``timings_s``: how long each step took here)."""
    found: dict[str, Any] = {}
    for path in sorted(p for stage in COMPUTED for p in (work_dir / stage).rglob("*") if p.is_file()):
        found[path.relative_to(work_dir).as_posix()] = path.read_bytes() if path.name != "qc.json" else {
            k: v for k, v in json.loads(path.read_text()).items() if k != "timings_s"}
    return found


def test_preprocessing_and_features_on_a_dask_scheduler_and_two_workers_equal_the_threads_run(
    tiny_cohort_master: Path, tmp_path: Path, dask_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = cold_copy(tiny_cohort_master, tmp_path / "threads" / "work", recompute_clinical=False)
    by_threads, threads_seconds, _ = run_imaging(threads)

    # the key is in the flow's environment only: no key file, none created, the workers' environment lacks it
    key = (warm_work(tiny_cohort_master) / "pseudonym.key").read_text()
    monkeypatch.setenv(KEY_ENV, key)
    shared = tmp_path / "shared" / "work"
    dask = cold_copy(tiny_cohort_master, shared, recompute_clinical=True, **{
        "orchestration.task_runner": "dask", "orchestration.dask_address": dask_cluster.address,
        "privacy.key_env": KEY_ENV, "privacy.create_key_if_missing": False})
    (shared.parent / "pseudonym.key").unlink()
    assert not dask.privacy.key_file.exists()
    by_dask, dask_seconds, states = run_imaging(dask)
    log.warning("imaging flow, cold, 10 patients: %.1f s on 2 Dask workers, %.1f s on threads",
                dask_seconds, threads_seconds)

    # the same table, byte for byte, at the same place in the work directory; every other output too
    assert by_dask.table_path.relative_to(shared) == by_threads.table_path.relative_to(threads.work_dir)
    assert by_dask.table_path.read_bytes() == by_threads.table_path.read_bytes()
    produced = outputs(shared)
    assert len(produced) > 20 and produced == outputs(threads.work_dir)

    # every stage task ran in the two worker processes (none in the flow's), started elsewhere and without the key
    client = dask_cluster.client
    submitted = [n for n in states if n.split("-")[0] in {"images", "clinical", *COMPUTED}]
    cases = sum(len(discover_cases(site, i.images)) for site, i in dask.institutions.items())
    assert sum(n.startswith("images-") for n in submitted) == cases
    assert sum(n.startswith("clinical-") for n in submitted) == 3 and all(states[n] == "Completed" for n in submitted)
    assert sum(n.startswith(("preprocess-", "features-")) for n in submitted) == 20
    executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert sum(executed.values()) == len(submitted) and min(executed.values()) > 0, executed
    assert set(client.run(os.getpid).values()) == {w.pid for w in dask_cluster.workers} and os.getpid() not in {
        w.pid for w in dask_cluster.workers}
    assert set(client.run(os.getcwd).values()) == {str(dask_cluster.cwd)} != {str(Path.cwd())}
    assert set(client.run(lambda: os.environ.get(KEY_ENV)).values()) == {None}  # (a bound method would carry ours)


def test_the_dask_runner_without_an_address_is_a_local_cluster_of_single_threaded_processes() -> None:
    from prefect_dask.task_runners import DaskTaskRunner

    runner = task_runner_for(load_params(REPO / "params.yaml", {"orchestration.task_runner": "dask",
                                                                "orchestration.max_workers": 3}))
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True,
                                     "dashboard_address": None}


@pytest.mark.parametrize(("scheduler", "api", "warned"), [
    ("tcp://127.0.0.1:8786", "http://127.0.0.1:4200/api", False),  # everything on this host (the test above)
    ("tcp://dask-scheduler:8786", "http://prefect.internal:4200/api", False),  # a team's cluster and server
    ("tcp://dask-scheduler:8786", "http://127.0.0.1:4200/api", True),
    ("10.0.0.5:8786", None, True),  # Prefect's temporary server lives on loopback too
])
def test_a_cluster_beyond_loopback_with_the_prefect_api_on_loopback_is_warned_about(
        scheduler: str, api: str | None, warned: bool) -> None:
    from flows.runners import unreachable_api

    problem = unreachable_api(scheduler, api)
    assert (problem is not None) == warned
    if warned:
        assert problem is not None and "workers elsewhere cannot report" in problem and "PREFECT_API_URL" in problem
