"""Faults: the main command killed, doubled, or cut off from its servers, on a tiny cohort; does it survive?

    .venv/bin/python benchmarks/faults.py [--record]

Each scenario runs the real command (``survival-model run`` in a process group of its own, with its own Prefect
home and work directory) and does to it what a machine or an operator would:

- ``kill -9`` mid-preprocessing, then mid-training (a fold finished), then the same command again: it must finish,
  reuse the patients and the fold that finished (their folders keep their inodes), leave no temporary folder, mark
  the killed runs' MLflow runs KILLED, and give the outputs of an uninterrupted run (``compare_runs.compare``);
- two runs started together on one fresh work directory: both finish, with the same outputs;
- the MLflow server stopped and restarted while a run logs to it: the run finishes, with one MLflow run per pipeline
  run and fold and one registered version;
- the Prefect server restarted mid-run: the run finishes.

Prints one line per fault and ``faults: N, survived: M``; ``--record`` writes the block into RESULTS.md. The same
scenarios run in ``tests/reliability/test_faults.py`` (its slow part).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare_runs import compare
from benchmarks.results import record_block

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Reliability: faults survived"
#: The command: the installed entry point beside this interpreter.
COMMAND = Path(sys.executable).with_name("survival-model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes] | None = None,
               poll: float = 0.05) -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds or when ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Signal ``process``'s whole process group (it leads one: ``start_new_session``) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


# --------------------------------------------------------------------------------------------------
# Servers, started here (not survival_model.local_servers: the scenarios need to stop and restart them)
# --------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process on loopback that can be stopped and started again on the same port and database."""

    name: str
    argv: list[str]
    health: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_until(self.healthy, timeout, f"the {self.name} server to answer", self.process, poll=0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health, timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM)
            self.process = None


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return {**env, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_UI_ENABLED": "false"}


def prefect_server(home: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
            str(port), "--no-ui"]
    return Server("Prefect", argv, f"http://127.0.0.1:{port}/api/health", server_env(home), home / "prefect.log")


def mlflow_server(home: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", (home / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return Server("MLflow", argv, f"http://127.0.0.1:{port}/health", server_env(home), home / "mlflow.log")


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


@dataclass
class Project:
    """A work directory and the overrides of params.yaml that run the command on it."""

    root: Path
    overrides: dict[str, Any]
    prefect_api: str
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return Path(self.overrides["work_dir"])

    def start(self, **changes: Any) -> subprocess.Popen[bytes]:
        """``survival-model run`` in a process group of its own (what ``kill -9`` of the group ends)."""
        settings = {**self.overrides, "servers.home": str(self.root / "servers"), **changes}
        argv = [str(COMMAND), "run", "--params", str(REPO / "params.yaml"), "--no-generate",
                *[a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]]
        env = {**server_env(self.root), "PREFECT_API_URL": self.prefect_api, "PREFECT_LOGGING_LEVEL": "INFO"}
        log = self.root / f"run-{len(self.runs) + 1}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.runs.append(process)
        return process

    def finish(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
            raise AssertionError(f"the run did not finish in {timeout:.0f} s (a hang?): {self.tail(process)}") from None
        if process.returncode != 0:
            raise AssertionError(f"the run failed (exit {process.returncode}): {self.tail(process)}")

    def tail(self, process: subprocess.Popen[bytes], lines: int = 40) -> str:
        log = self.root / f"run-{self.runs.index(process) + 1}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        for process in self.runs:
            if process.poll() is None:
                stop_group(process)


def finished(work: Path, *place: str) -> list[Path]:
    """The finished (renamed into place) content-keyed folders under ``work/place/...``, by depth."""
    pattern = "/".join([*place, "*"])
    return sorted(p for p in work.glob(pattern) if p.is_dir() and not p.name.startswith("."))


def preprocessed(work: Path) -> list[Path]:
    return finished(work, "preprocess", "*", "*")


def trained_folds(work: Path) -> list[Path]:
    return finished(work, "training", "folds", "*")


def temporaries(work: Path) -> list[Path]:
    return sorted(p for p in work.rglob(".*.tmp") if "mlflow" not in p.parts)


def identity(paths: list[Path]) -> dict[Path, tuple[int, tuple[tuple[str, int], ...]]]:
    """Each folder's inode and its files' modification times: unchanged means reused, not recomputed (a recomputed
    folder is a new one renamed into place; a reused one may gain a file, e.g. a fold's MLflow record)."""
    return {p: (p.stat().st_ino, tuple((f.name, f.stat().st_mtime_ns) for f in sorted(p.iterdir()))) for p in paths}


def unchanged(before: dict[Path, tuple[int, tuple[tuple[str, int], ...]]]) -> set[Path]:
    """The folders of ``before`` (:func:`identity`) still there with the same inode and files."""
    now = identity([p for p in before if p.is_dir()])
    return {p for p, (inode, files) in before.items()
            if p in now and now[p][0] == inode and set(files) <= set(now[p][1])}


def differences(reference: Path, work: Path) -> list[str]:
    """``compare_runs`` rows that are not exactly equal (empty: the same outputs)."""
    return [f"{name}: {verdict}" for name, verdict, worst in compare(reference, work) if worst != 0.0]


def mlflow_runs(project: Project) -> list[Any]:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = project.overrides.get("tracking.tracking_uri") or f"sqlite:///{project.work / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000))


# --------------------------------------------------------------------------------------------------
# Scenarios: each raises AssertionError with what went wrong, or returns a line saying what it saw
# --------------------------------------------------------------------------------------------------

#: Seconds a run may take before it counts as hung (a warm tiny run takes 1-3 minutes on 2 busy cores).
RUN_TIMEOUT = 600.0


def kill_and_rerun(project: Project, reference: Path) -> str:
    """Kill -9 mid-preprocessing, then mid-training, then run to the end (the work directory starts with
    ingestion done and no imaging: the warm copy without ``preprocess``, ``features`` and the stage records)."""
    work = project.work
    for stage in ("preprocess", "features", "cache"):
        shutil.rmtree(work / stage, ignore_errors=True)
    first = project.start()
    wait_until(lambda: len(preprocessed(work)) >= 2, RUN_TIMEOUT, "two patients' preprocessing", first)
    stop_group(first)
    kept = identity(preprocessed(work))
    assert not (work / "features" / "table").exists(), "preprocessing had finished before the kill"
    second = project.start()
    wait_until(lambda: bool(trained_folds(work)), RUN_TIMEOUT, "a fold's training", second)
    stop_group(second)
    fold = identity(trained_folds(work))
    assert not list(work.glob("evaluation/*/comparison")), "the run had finished training before the kill"
    third = project.start()
    project.finish(third, RUN_TIMEOUT)
    recomputed = (set(kept) | set(fold)) - unchanged({**kept, **fold})
    assert not recomputed, f"recomputed instead of reused: {sorted(recomputed)}"
    left = temporaries(work)
    assert not left, f"temporary folders left: {left}"
    pipeline_runs = [r for r in mlflow_runs(project) if "mlflow.parentRunId" not in r.data.tags]
    statuses = sorted(r.info.status for r in pipeline_runs)
    assert statuses == ["FINISHED", "KILLED", "KILLED"], f"pipeline runs in MLflow: {statuses}"
    diff = differences(reference, work)
    assert not diff, f"outputs differ from an uninterrupted run's: {diff}"
    return (f"the re-run finished, reusing the {len(kept)} patients' preprocessing and the {len(fold)} fold(s) the "
            "killed runs had finished; no temporary folder left, both killed MLflow runs KILLED, outputs equal an "
            "uninterrupted run's")


def two_at_once(project: Project, reference: Path) -> str:
    """Two identical runs started together on one fresh work directory (no MLflow store yet)."""
    shutil.rmtree(project.work / "mlflow", ignore_errors=True)
    runs = [project.start(), project.start()]
    for process in runs:
        project.finish(process, RUN_TIMEOUT * 1.5)
    logs = " ".join(project.tail(p, 10_000) for p in runs)
    assert "already exists" not in logs, "a run met MLflow's table race"
    statuses = sorted(r.info.status for r in mlflow_runs(project) if "mlflow.parentRunId" not in r.data.tags)
    assert statuses == ["FINISHED", "FINISHED"], f"pipeline runs in MLflow: {statuses}"
    diff = differences(reference, project.work)
    assert not diff, f"outputs differ from a single run's: {diff}"
    return "both finished, no MLflow table race, outputs equal a single run's"


def mlflow_outage(project: Project, server: Server, outage_s: float = 15.0) -> str:
    """The MLflow server stopped just after the run made its MLflow run, started again ``outage_s`` later."""
    process = project.start()
    wait_until(lambda: bool(mlflow_runs(project)), RUN_TIMEOUT, "the run's MLflow run", process, poll=0.5)
    stopped = time.monotonic()
    server.stop()
    time.sleep(outage_s)
    server.start()
    down = time.monotonic() - stopped
    assert process.poll() is None, "the run had finished before the server came back: nothing was cut off"
    project.finish(process, RUN_TIMEOUT)
    runs = mlflow_runs(project)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    folds = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    names = sorted(r.info.run_name for r in folds)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", f"pipeline runs: {len(parents)}"
    assert len(names) == len(set(names)), f"fold runs duplicated: {names}"
    from mlflow import MlflowClient

    versions = MlflowClient(project.overrides["tracking.tracking_uri"]).search_model_versions()
    assert len(versions) == 1, f"registered versions: {len(versions)}"
    return (f"the run finished after the server was down {down:.0f} s (MLflow's client retried); 1 pipeline run, "
            f"{len(folds)} fold runs, 1 registered version")


def prefect_restart(project: Project, server: Server) -> str:
    """The Prefect server stopped when the run starts training and started again on the same port and database."""
    for stage in ("training", "evaluation", "registry"):
        shutil.rmtree(project.work / stage, ignore_errors=True)
    process = project.start()
    wait_until(lambda: (project.work / "training").exists(), RUN_TIMEOUT, "training to start", process)
    stopped = time.monotonic()
    server.stop()
    server.start()
    down = time.monotonic() - stopped
    assert process.poll() is None, "the run had finished before the server came back: nothing was cut off"
    project.finish(process, RUN_TIMEOUT)
    return f"the run finished; the server was down {down:.0f} s while it trained"


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def benchmark_projects() -> Iterator[tuple[Callable[..., Project], Server]]:
    """Projects on a tiny generated cohort, each starting from one warm work directory; a Prefect server for all."""
    from survival_model.synthetic.cohort import generate_cohort
    from tests.conftest import PIPELINE_SETTINGS, overrides_for, params_for, tiny_config

    root = Path(tempfile.mkdtemp(prefix="faults-"))
    cohort = root / "synthetic"
    generate_cohort(tiny_config(cohort))
    prefect = prefect_server(root)
    prefect.start()
    made: list[Project] = []

    def make(name: str, **changes: Any) -> Project:
        folder = root / name
        overrides = overrides_for(cohort, folder / "work", **{**PIPELINE_SETTINGS, **changes})
        params_for(cohort, folder / "work", **{**PIPELINE_SETTINGS, **changes})
        made.append(Project(folder, overrides, prefect.health.removesuffix("/health")))
        return made[-1]

    try:
        yield make, prefect
    finally:
        for project in made:
            project.close()
        prefect.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--record", action="store_true", help="record the result in RESULTS.md")
    args = parser.parse_args()
    rows: list[tuple[str, bool, str]] = []

    def attempt(name: str, scenario: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = scenario()
            ok = True
        except AssertionError as exc:
            detail, ok = str(exc).splitlines()[0], False
        rows.append((name, ok, f"{detail} ({time.monotonic() - started:.0f} s)"))
        print(f"{'survived' if ok else 'FAILED  '}  {name}: {rows[-1][2]}", flush=True)

    with benchmark_projects() as (make, prefect):
        reference = make("reference")
        reference.finish(reference.start(), RUN_TIMEOUT)
        attempt("kill -9 mid-preprocessing and mid-training, then re-run",
                lambda: kill_and_rerun(make("kill"), reference.work))
        attempt("two runs at once on one fresh work directory", lambda: two_at_once(make("two"), reference.work))
        mlflow = mlflow_server(reference.root.parent / "mlflow-server")
        mlflow.log.parent.mkdir(parents=True, exist_ok=True)
        mlflow.start()
        try:
            attempt("MLflow server stopped mid-run",
                    lambda: mlflow_outage(make("mlflow", **{"tracking.tracking_uri": mlflow.health.removesuffix(
                        "/health")}), mlflow))
        finally:
            mlflow.stop()
        attempt("Prefect server restarted mid-run", lambda: prefect_restart(make("prefect"), prefect))
    survived = sum(ok for _, ok, _ in rows)
    summary = f"faults: {len(rows)}, survived: {survived}"
    print(summary)
    if args.record:
        table = "\n".join(["| fault | survived | what happened |", "| --- | --- | --- |",
                           *[f"| {name} | {'yes' if ok else '**no**'} | {detail} |" for name, ok, detail in rows]])
        record_block("faults", HEADING, f"`python benchmarks/faults.py --record` on the tiny cohort: **{summary}**"
                                        f"\n\n{table}")


if __name__ == "__main__":
    main()
