"""Start, stop and find the local long-lived servers (Prefect server with its UI, MLflow UI).

The services are declared in ``infra/local/services.yaml``. Each runs detached (its own session, so
it outlives the command that started it), logs to ``<servers.home>/<name>.log`` and is recorded in
``<servers.home>/state.json``; later pipeline runs read that file to point at the servers. The Prefect
server's database is ``<servers.home>/prefect`` (its ``PREFECT_HOME``).

A recorded pid alone does not name a process: after a reboot, or once the server has exited, the number
may belong to anything. Each record therefore keeps the process's start time, and nothing is signalled
unless the process with that pid started at that time (:func:`is_running`). Prefect's own
``prefect server start --background`` / ``prefect server stop`` were considered: ``stop`` signals the pid
in ``PREFECT_HOME/server.pid`` with no such check, and a pid file left by a reboot makes the next
``start --background`` refuse to start; MLflow has no background mode at all. One launcher with an
identity check serves both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from survival_model import owners
from survival_model.config import Params, ServicesSpec
from survival_model.errors import SurvivalModelError
from survival_model.imageio import write_json
from survival_model.owners import Owner

log = logging.getLogger(__name__)


class ServerError(SurvivalModelError):
    """A local server did not start, or could not be stopped."""


@dataclass(frozen=True)
class RunningService:
    name: str
    pid: int
    ui_url: str
    health_url: str
    log: str
    #: The process as :class:`survival_model.owners.Owner` writes it (host, pid and start time): its identity.
    owner: str = ""


def state_file(params: Params) -> Path:
    return params.servers.home / "state.json"


def prefect_home(params: Params) -> Path:
    """``PREFECT_HOME`` of the local server (and of Prefect's temporary server): its SQLite database."""
    return params.servers.home / "prefect"


def _placeholders(params: Params) -> dict[str, str]:
    return {
        "python": sys.executable,
        "host": params.servers.host,
        "prefect_port": str(params.servers.prefect_port),
        "mlflow_port": str(params.servers.mlflow_port),
        "work_dir": str(params.work_dir),
        "prefect_home": str(prefect_home(params)),
        "mlflow_uri": params.mlflow_uri,
        "artifact_root": params.mlflow_artifact_root.resolve().as_uri(),
    }


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True if ``url`` answers 2xx within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URL from our spec
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(host: str, port: int) -> bool:
    """True if something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def read_state(params: Params) -> dict[str, RunningService]:
    path = state_file(params)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(RunningService)}  # a record of another version: its fields we know
    return {name: RunningService(**{k: v for k, v in entry.items() if k in known}) for name, entry in data.items()}


def is_running(service: RunningService) -> bool:
    """Whether the process this record names still runs: its pid exists *and* started when recorded (a
    pid reused by another process after the server exited or the machine rebooted is not the server)."""
    if service.pid <= 0 or not service.owner:
        return False
    owner = Owner.parse(service.owner)
    return owner is not None and owner.alive() is True


def start(params: Params, spec: ServicesSpec, only: Collection[str] | None = None) -> dict[str, RunningService]:
    """Start every declared service (or those named in ``only``) that is not already answering; wait
    until all are healthy."""
    running = launch(params, spec, only)
    wait_healthy(params, running)
    return running


def launch(params: Params, spec: ServicesSpec, only: Collection[str] | None = None) -> dict[str, RunningService]:
    """Start the services (all, or those in ``only``) that do not answer, without waiting for them:
    the caller can do other work while they boot, then :func:`wait_healthy`. Returns the services
    asked for (running or starting)."""
    values = _placeholders(params)
    params.servers.home.mkdir(parents=True, exist_ok=True)
    prefect_home(params).mkdir(parents=True, exist_ok=True)
    params.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    running = read_state(params)
    unknown = sorted(set(only or ()) - set(spec.services))
    if unknown:
        raise ServerError(f"no such service in the services file: {', '.join(unknown)}")
    for name, declared in spec.services.items():
        if only is not None and name not in only:
            continue
        health = declared.health_url.format(**values)
        if healthy(health):
            log.info("%s already answers at %s", name, health)
            if name not in running:
                running[name] = RunningService(name, -1, declared.ui_url.format(**values), health, "")
            continue
        log_path = params.servers.home / f"{name}.log"
        env = {**os.environ, **{k: v.format(**values) for k, v in declared.env.items()}}
        command = [part.format(**values) for part in declared.command]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - command from our own services file
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, cwd=params.servers.home,
            )
        running[name] = RunningService(name, process.pid, declared.ui_url.format(**values), health, str(log_path),
                                       owners.of_process(process.pid).tag())
    write_json({k: asdict(v) for k, v in running.items()}, state_file(params))
    return {n: s for n, s in running.items() if only is None or n in only}


def wait_healthy(params: Params, services: dict[str, RunningService]) -> None:
    """Wait until every service answers; :class:`ServerError` if one exits or the start-up timeout passes."""
    deadline = time.monotonic() + params.servers.startup_timeout_seconds
    pending = dict(services)
    while pending and time.monotonic() < deadline:
        for name, service in list(pending.items()):
            if healthy(service.health_url):
                pending.pop(name)
            elif service.pid > 0 and not is_running(service):
                raise ServerError(f"{name} exited during start-up; see its log {service.log}")
        if pending:
            time.sleep(0.25)
    if pending:
        names = ", ".join(pending)
        raise ServerError(f"{names} did not answer within {params.servers.startup_timeout_seconds:.0f} s; "
                          f"see the logs in {params.servers.home}")


def stop(params: Params, timeout: float = 20.0) -> list[str]:
    """Stop the services this work directory started and that still run; returns their names. A record
    whose process is gone (or whose pid now names another process) is dropped without signalling anything."""
    stopped = []
    for name, service in read_state(params).items():
        if not is_running(service):
            continue
        # The launcher made each server a session leader: its group holds the server's own children.
        with contextlib.suppress(ProcessLookupError):
            _killpg(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(service) and time.monotonic() < deadline:
            time.sleep(0.2)
        if is_running(service):
            with contextlib.suppress(ProcessLookupError):
                _killpg(service.pid, signal.SIGKILL)
        stopped.append(name)
    state_file(params).unlink(missing_ok=True)
    return stopped


def _killpg(pgid: int, sig: int) -> None:
    """``os.killpg``, and reap the child if this process started it (so it does not linger as a zombie)."""
    os.killpg(pgid, sig)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)


def status(params: Params) -> dict[str, tuple[RunningService, bool]]:
    return {name: (s, healthy(s.health_url)) for name, s in read_state(params).items()}


def endpoints(params: Params) -> dict[str, str]:
    """UI URLs of the running local servers that answer now (empty when none is up)."""
    return {name: s.ui_url for name, (s, ok) in status(params).items() if ok}
