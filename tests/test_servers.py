"""`survival-model ui start|status|stop`: real Prefect and MLflow servers on free local ports."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from flows.cli import prefect_environment
from survival_model import local_servers
from survival_model.config import load_params, load_services

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ui_start_points_runs_at_the_servers_and_stop_ends_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = load_params(REPO / "params.yaml", {
        "work_dir": str(tmp_path / "work"),
        "servers.prefect_port": free_port(),
        "servers.mlflow_port": free_port(),
        "servers.startup_timeout_seconds": 240,
        "servers.home": str(tmp_path / "servers"),
    })
    spec = load_services(REPO / "infra/local/services.yaml")
    try:
        # `run` starts the local Prefect server alone when none answers, and leaves it running
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        where = prefect_environment(params, REPO / "infra/local/services.yaml")
        assert "started now and left running" in where
        assert set(local_servers.endpoints(params)) == {"prefect"}
        first_pid = local_servers.read_state(params)["prefect"].pid
        running = local_servers.start(params, spec)
        assert set(running) == {"prefect", "mlflow"}
        assert running["prefect"].pid == first_pid  # what answers is reused
        assert local_servers.healthy(running["prefect"].health_url)
        assert local_servers.healthy(running["mlflow"].health_url)
        assert (tmp_path / "servers/prefect/prefect.db").is_file()  # the database lives in servers.home
        for service in running.values():  # the UIs themselves answer with a page
            with urllib.request.urlopen(service.ui_url, timeout=10) as response:
                assert response.status == 200 and b"<html" in response.read(4096).lower()
        endpoints = local_servers.endpoints(params)
        assert endpoints["prefect"] == f"http://127.0.0.1:{params.servers.prefect_port}"
        # a second start reuses what answers
        again = local_servers.start(params, spec)
        assert again["prefect"].pid == running["prefect"].pid
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        where = prefect_environment(params)
        assert os.environ["PREFECT_API_URL"] == f"{endpoints['prefect']}/api"
        assert "(local; `survival-model ui stop` stops it)" in where
    finally:
        stopped = local_servers.stop(params)
    assert set(stopped) == {"prefect", "mlflow"}
    assert not local_servers.healthy(running["prefect"].health_url)
    assert local_servers.endpoints(params) == {}


def _record(params_home: Path, process: subprocess.Popen[bytes], started: float) -> None:
    import json
    import socket

    params_home.mkdir(parents=True, exist_ok=True)
    owner = f"{process.pid}-{round(started * 100)}@{socket.gethostname()}"
    entry = {"name": "mlflow", "pid": process.pid, "ui_url": "", "health_url": "http://127.0.0.1:1/", "log": "",
             "owner": owner}
    (params_home / "state.json").write_text(json.dumps({"mlflow": entry}))


def test_stop_never_signals_a_pid_that_now_names_another_process(tmp_path: Path) -> None:
    """A recorded pid whose process started at another time (the server exited, or the machine rebooted, and
    the number was reused) is not the server: ``stop`` leaves it alone and drops the record."""
    import psutil

    params = load_params(REPO / "params.yaml", {"work_dir": str(tmp_path / "work"),
                                                "servers.home": str(tmp_path / "servers")})
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = psutil.Process(bystander.pid).create_time()
        _record(params.servers.home, bystander, started - 3600)  # same pid, another process's start time
        assert local_servers.stop(params) == []
        assert bystander.poll() is None  # still running: not signalled
        assert not local_servers.state_file(params).exists()
        _record(params.servers.home, bystander, started)  # the process the record names: stopped
        assert local_servers.stop(params) == ["mlflow"]
        bystander.wait(10)  # ended (stop reaps it, so its status is not told here)
        assert not local_servers.state_file(params).exists()
    finally:
        bystander.kill()
        bystander.wait()
