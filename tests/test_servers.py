"""`survival-model ui start|status|stop`: real Prefect and MLflow servers on free local ports."""

from __future__ import annotations

import os
import socket
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
