"""``survival-model models list|promote|rollback`` on a temporary SQLite registry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from survival_model.config import load_params
from survival_model.registry.registry import CHAMPION, Registry, lock_file, registry_lock
from survival_model.tracking import Tracker
from tests.conftest import REPO


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    text = (REPO / "params.yaml").read_text(encoding="utf-8").replace("work_dir: work", f"work_dir: {tmp_path}/work")
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def registry_with_versions(params_file: Path, count: int) -> Registry:
    params = load_params(params_file)
    tracker = Tracker.from_params(params)
    reg = Registry(tracker.client, params.registry.model_name)
    reg.ensure_model()
    for i in range(count):
        run_id = tracker.start_run(f"r{i}")
        source = tmp = params.work_dir / f"model{i}"
        tmp.mkdir(parents=True)
        reg.register(source.as_uri(), run_id, {"model": f"m{i}", "test.uno_c": 0.6 + i / 100})
    return reg


def test_list_promote_and_rollback(params_file: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["models", "list", "--params", str(params_file)])
    assert empty.exit_code == 0 and "has no version yet" in empty.output
    reg = registry_with_versions(params_file, 2)
    listed = runner.invoke(app, ["models", "list", "--params", str(params_file)])
    assert listed.exit_code == 0 and "challenger" in listed.output and "0.610" in listed.output

    promoted = runner.invoke(app, ["models", "promote", "1", "--reason", "reviewed by the tumour board",
                                   "--params", str(params_file)])
    assert promoted.exit_code == 0 and "version 1 is now champion" in promoted.output
    runner.invoke(app, ["models", "promote", "2", "-r", "newer", "--params", str(params_file)])
    assert reg.alias(CHAMPION).version == 2  # type: ignore[union-attr]
    back = runner.invoke(app, ["models", "rollback", "-r", "v2 mispredicts site_c", "--params", str(params_file)])
    assert back.exit_code == 0 and "rolled back to version 1" in back.output
    assert reg.alias(CHAMPION).version == 1  # type: ignore[union-attr]
    assert reg.version(1).tags["champion.reason"] == "rollback from 2: v2 mispredicts site_c"
    history = runner.invoke(app, ["models", "list", "--params", str(params_file)])
    assert "reviewed by the tumour board" in history.output and "rollback from 2" in history.output

    unknown = runner.invoke(app, ["models", "promote", "9", "-r", "x", "--params", str(params_file)])
    assert unknown.exit_code == 1 and "has no version 9" in unknown.output  # a failed operation, not usage
    no_reason = runner.invoke(app, ["models", "promote", "1", "--params", str(params_file)])
    assert no_reason.exit_code != 0 and "--reason" in no_reason.output


def test_rollback_needs_a_previous_champion(params_file: Path) -> None:
    registry_with_versions(params_file, 1)
    out = CliRunner().invoke(app, ["models", "rollback", "-r", "x", "--params", str(params_file)])
    assert out.exit_code == 1 and "no champion to roll back from" in out.output


def test_a_hand_promotion_waits_for_a_registry_run_holding_the_lock(params_file: Path) -> None:
    reg = registry_with_versions(params_file, 2)
    reg.set_champion(1, reason="first", by="test")
    lock = lock_file(load_params(params_file).work_dir, reg.name)
    held, seen = threading.Event(), {}

    def registry_run() -> None:  # what the registry flow does around registering and gating
        with registry_lock(lock):
            held.set()
            time.sleep(1.0)  # long enough for the promotion below to reach the lock
            seen["champion while held"] = reg.alias(CHAMPION).version  # type: ignore[union-attr]

    holder = threading.Thread(target=registry_run)
    holder.start()
    held.wait(10)
    promoted = CliRunner().invoke(app, ["models", "promote", "2", "-r", "after the gate", "--params",
                                        str(params_file)])
    holder.join()
    assert promoted.exit_code == 0 and "waiting for it to finish" in promoted.output
    assert seen["champion while held"] == 1 and reg.alias(CHAMPION).version == 2  # type: ignore[union-attr]
