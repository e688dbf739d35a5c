"""Faults (issue 15, section 3): what a killed, concurrent or cut-off run leaves behind never blocks or corrupts the
next one.

Unit level: temporaries and MLflow runs carry their owner (host, pid, start time); a dead owner's are cleaned, a live
one's and another host's never; MLflow's SQLite store is created under a lock (two processes at once); run creation is
idempotent. End to end (slow): the real command killed with SIGKILL mid-preprocessing and mid-training, then re-run;
two runs at once on one work directory; the MLflow and Prefect servers stopped mid-run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest

from benchmarks.faults import (
    Project,
    Server,
    kill_and_rerun,
    mlflow_outage,
    mlflow_server,
    prefect_restart,
    prefect_server,
    two_at_once,
)
from survival_model import owners
from survival_model.imageio import atomic_directory, write_text
from survival_model.stage import Stage, run
from survival_model.tracking import ENDED_BY_TAG, KEY_TAG, OWNER_TAG, Tracker
from tests.conftest import PIPELINE_SETTINGS, PipelineRun, overrides_for, params_for

FORK = multiprocessing.get_context("fork")


@pytest.fixture()
def dead_owner() -> owners.Owner:
    """A process of this host that has exited."""
    process = subprocess.Popen(["sleep", "30"])
    owner = owners.Owner(socket.gethostname(), process.pid, round(psutil.Process(process.pid).create_time() * 100))
    assert owner.alive() is True
    process.kill()
    process.wait()
    return owner


def test_an_owner_is_alive_while_its_process_runs_and_unknown_on_another_host(dead_owner: owners.Owner) -> None:
    me = owners.current()
    assert me.alive() is True and owners.Owner.parse(me.tag()) == me
    assert dead_owner.alive() is False
    reused = owners.Owner(me.host, me.pid, me.started - 500)  # this pid, but another process's start: pid reused
    assert reused.alive() is False
    assert owners.Owner("elsewhere.example.org", me.pid, me.started).alive() is None
    assert owners.Owner.parse("not-an-owner") is None


# --------------------------------------------------------------------------------------------------
# Stale temporaries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slow(Stage[str]):
    """A stage that writes one file, optionally blocking inside ``compute`` until ``release`` exists."""

    name: ClassVar[str] = "slow"
    work_dir: Path
    release: Path | None = None

    def make_key(self) -> str:
        return "0123456789abcdef0123"

    def compute(self, tmp: Path) -> None:
        write_text("done", tmp / "out.txt")
        (self.work_dir / "computing").touch()
        while self.release is not None and not self.release.exists():
            time.sleep(0.02)

    def load(self, folder: Path) -> str | None:
        out = folder / "out.txt"
        return out.read_text() if out.is_file() else None


def _run_in_child(stage: Slow) -> None:
    run(stage)
    os._exit(0)


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _temporaries(stage: Slow) -> list[Path]:
    return sorted(stage.folder().parent.glob(f".{stage.folder().name}.*.tmp"))


def test_a_killed_stages_temporary_folder_is_removed_by_the_next_run_a_live_ones_is_kept(tmp_path: Path) -> None:
    blocked = Slow(tmp_path, release=tmp_path / "never")
    child = FORK.Process(target=_run_in_child, args=(blocked,))
    child.start()
    _wait_for(tmp_path / "computing")
    (orphan,) = _temporaries(blocked)
    assert f".{child.pid}-" in orphan.name and f"@{socket.gethostname()}." in orphan.name  # the owner, in the name
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    (tmp_path / "computing").unlink()
    # the next run of the stage removes the orphan; it is still computing (alive) when a third one runs the stage:
    # the third's sweep keeps the live run's temporary folder
    live = FORK.Process(target=_run_in_child, args=(Slow(tmp_path, release=tmp_path / "release"),))
    live.start()
    _wait_for(tmp_path / "computing")
    (live_tmp,) = _temporaries(blocked)
    assert not orphan.exists() and f".{live.pid}-" in live_tmp.name
    assert run(Slow(tmp_path)) == "done"
    assert _temporaries(blocked) == [live_tmp]
    (tmp_path / "release").touch()
    live.join(30)
    assert live.exitcode == 0 and _temporaries(blocked) == []  # it finished, found the folder there, dropped its copy


def test_orphans_of_another_host_or_without_an_owner_are_left_alone(tmp_path: Path, dead_owner: owners.Owner) -> None:
    name = "0123456789abcdef"
    theirs = owners.Owner("elsewhere.example.org", dead_owner.pid, dead_owner.started)
    kept = [tmp_path / f".{name}.{theirs.tag()}.abcd1234.tmp", tmp_path / f".{name}.q1w2e3r4.tmp"]
    gone = tmp_path / f".{name}.{dead_owner.tag()}.abcd1234.tmp"
    for path in [*kept, gone]:
        path.mkdir()
    assert owners.remove_orphans(tmp_path, name) == [gone]
    assert all(p.is_dir() for p in kept) and not gone.exists()


def test_a_temporary_folder_is_named_after_its_owner(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "folder") as tmp:
        assert tmp.name.startswith(f".folder.{owners.current().tag()}.") and tmp.name.endswith(".tmp")
    assert (tmp_path / "folder").is_dir()


# --------------------------------------------------------------------------------------------------
# MLflow: runs left RUNNING, idempotent runs, the SQLite store created by two processes at once
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for this module's MLflow tests (creating one takes seconds); each test has its experiment."""
    return tmp_path_factory.mktemp("mlflow")


def test_runs_left_running_by_a_dead_owner_on_this_host_are_marked_killed(store: Path,
                                                                           dead_owner: owners.Owner) -> None:
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}", "orphans", store / "artifacts")
    live = tracker.start_run("live")
    assert tracker.client.get_run(live).data.tags[OWNER_TAG] == owners.current().tag()
    killed = tracker.start_run("killed")
    tracker.client.set_tag(killed, OWNER_TAG, dead_owner.tag())
    elsewhere = tracker.start_run("elsewhere")
    tracker.client.set_tag(elsewhere, OWNER_TAG, owners.Owner("elsewhere.example.org", 1, 1).tag())
    unowned = tracker.client.create_run(tracker.experiment_id, run_name="before owners").info.run_id
    finished = tracker.start_run("finished")
    tracker.client.set_tag(finished, OWNER_TAG, dead_owner.tag())
    tracker.end_run(finished)

    assert tracker.end_orphaned_runs() == [killed]
    status = {r: tracker.client.get_run(r).info.status for r in (live, killed, elsewhere, unowned, finished)}
    assert status == {live: "RUNNING", killed: "KILLED", elsewhere: "RUNNING", unowned: "RUNNING",
                      finished: "FINISHED"}
    assert tracker.client.get_run(killed).data.tags[ENDED_BY_TAG] == owners.current().tag()
    assert tracker.end_orphaned_runs() == []


def test_a_run_started_again_with_its_key_is_the_same_run(store: Path) -> None:
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}", "keys", store / "artifacts")
    first = tracker.start_run("pipeline", key="pipeline/abc-1")
    tracker.end_run(first, "FAILED")
    again = tracker.start_run("pipeline", key="pipeline/abc-1")
    other = tracker.start_run("pipeline", key="pipeline/abc-2")
    assert again == first != other
    run = tracker.client.get_run(first)
    assert run.info.status == "RUNNING" and run.data.tags[KEY_TAG] == "pipeline/abc-1"
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 2
    with pytest.raises(ValueError, match="a run key holds only"):
        tracker.start_run("bad", key="x' OR '1'='1")


def _open_store(uri: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        Tracker(uri, "faults", Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(repr(exc))


def test_two_processes_creating_the_sqlite_store_at_once_both_succeed(tmp_path: Path) -> None:
    """Without the lock, this failed in 3 of 3 tries (``table experiments already exists``, or alembic's
    ``Online migration expected to match one row``)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    barrier, results = FORK.Barrier(2), FORK.Queue()
    children = [FORK.Process(target=_open_store, args=(uri, barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
    assert outcomes == ["ok", "ok"]
    assert len(Tracker(uri, "faults").client.search_experiments()) == 2  # Default and ours: one each


# --------------------------------------------------------------------------------------------------
# End to end: the real command, killed, doubled, cut off from its servers (benchmarks/faults.py's scenarios)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Prefect server of this module's own (the scenarios restart it), with a private home."""
    server = prefect_server(tmp_path_factory.mktemp("prefect-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def project(tiny_cohort_master: Path, tmp_path: Path, prefect_api: Server) -> Iterator[Callable[..., Project]]:
    """Projects running the command on the tiny cohort with the session's pipeline settings (so that the session's
    pipeline run is the uninterrupted run to compare with), each from a warm work directory."""
    made: list[Project] = []

    def make(name: str = "project", **changes: Any) -> Project:
        settings = {**PIPELINE_SETTINGS, **changes}
        work = tmp_path / name / "work"
        params_for(tiny_cohort_master, work, **settings)
        made.append(Project(tmp_path / name, overrides_for(tiny_cohort_master, work, **settings),
                            prefect_api.health.removesuffix("/health")))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_killed_mid_preprocessing_and_mid_training_the_same_command_finishes_reusing_what_finished(
        project: Callable[..., Project], pipeline_run: PipelineRun) -> None:
    """The issue's hang: a re-run after ``kill -9`` waited for ever on the killed run's cache locks."""
    assert "outputs equal an uninterrupted run's" in kill_and_rerun(project(), pipeline_run.result.work_dir)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_runs_at_once_on_one_fresh_work_directory_both_finish_with_the_same_outputs(
        project: Callable[..., Project], pipeline_run: PipelineRun) -> None:
    assert "both finished" in two_at_once(project(), pipeline_run.result.work_dir)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_mlflow_server_stopped_mid_run_costs_neither_the_run_nor_duplicates(
        project: Callable[..., Project], tmp_path: Path) -> None:
    (tmp_path / "mlflow-server").mkdir()
    server = mlflow_server(tmp_path / "mlflow-server")
    server.start()
    try:
        uri = server.health.removesuffix("/health")
        assert "1 registered version" in mlflow_outage(project(**{"tracking.tracking_uri": uri}), server)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_prefect_server_restarted_mid_run_the_run_finishes(project: Callable[..., Project],
                                                                prefect_api: Server) -> None:
    assert "the run finished" in prefect_restart(project(), prefect_api)
