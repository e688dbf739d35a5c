"""Stage progress: counts from the flows, bars and a log file on the command line, the UI's progress artifact."""

from __future__ import annotations

import logging
import re
from itertools import pairwise
from pathlib import Path

import pytest
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.logging.handlers import PrefectConsoleHandler
from rich.progress import Progress

from flows.progress import PROGRESS_LOGGER, StageProgress, tracked
from flows.render import StageBars, run_display

pytestmark = pytest.mark.usefixtures("prefect_harness")


@task
def square(x: int) -> int:
    return x * x


@flow
def counted(n: int) -> list[int]:
    progress = StageProgress("squares for the test", n, "numbers")
    futures = [square.submit(i) for i in range(n)]
    done = [f.result() for f in tracked(futures, progress)]
    return sorted(done)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, int, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.stage, record.done, record.total, record.unit))  # type: ignore[attr-defined]


def test_a_flow_counts_its_futures_as_they_complete_and_the_ui_gets_a_progress_artifact() -> None:
    counts = logging.getLogger(PROGRESS_LOGGER)
    records, level = Records(), counts.level
    counts.addHandler(records)
    counts.setLevel(logging.INFO)
    try:
        assert counted(4) == [0, 1, 4, 9]
    finally:
        counts.removeHandler(records)
        counts.setLevel(level)
    assert records.seen == [("squares for the test", d, 4, "numbers") for d in range(5)]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-squares-for-the-test"])))
    assert artifacts and artifacts[0].type == "progress" and float(artifacts[0].data) == 100.0  # type: ignore[arg-type]


def test_the_bars_follow_the_counts_one_per_stage() -> None:
    progress = Progress(disable=True)
    bars = StageBars(progress)
    logger = logging.getLogger("tests.progress.bars")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(bars)
    try:
        for stage, done, total in [("ingestion", 0, 3), ("ingestion", 2, 3), ("features", 1, 5), ("ingestion", 3, 3)]:
            logger.info("count", extra={"stage": stage, "done": done, "total": total, "unit": "patients"})
        logger.info("a plain line without a count")  # ignored
    finally:
        logger.removeHandler(bars)
    tasks = {t.description: t for t in progress.tasks}
    assert set(tasks) == {"ingestion", "features"}
    assert (tasks["ingestion"].completed, tasks["ingestion"].total) == (3, 3)
    features = tasks["features"]
    assert (features.completed, features.total, features.fields["unit"]) == (1, 5, "patients")


@flow
def noisy() -> None:
    logger = get_run_logger()
    logger.info("every task state, for the log file")
    logger.warning("a quarantined patient, for the terminal too")


def test_a_run_logs_everything_to_its_file_and_only_warnings_to_the_terminal(tmp_path: Path) -> None:
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert consoles, "Prefect's console handler is on the root logger"
    before = [h.level for h in consoles]
    log = tmp_path / "logs" / "run.log"
    import mlflow  # noqa: F401 - its loggers are set up on import (run_display imports it too)

    mlflow_handlers = logging.getLogger("mlflow").handlers[:]
    with run_display(log, verbose=False):
        assert all(h.level >= logging.WARNING for h in consoles)
        noisy()
        logging.getLogger("survival_model.training.folds").info("fold-1 epoch 3/30, for the file")
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables, for the file")
    assert [h.level for h in consoles] == before  # restored
    assert logging.getLogger("mlflow").handlers == mlflow_handlers
    text = log.read_text(encoding="utf-8")
    assert "every task state, for the log file" in text and "a quarantined patient" in text
    assert "fold-1 epoch 3/30" in text and "MLflow database tables" in text  # the library's and MLflow's INFO
    assert re.search(r"\| INFO +\| Flow run '[\w-]+' - every task state", text)  # Prefect's format, run name
    with run_display(tmp_path / "verbose.log", verbose=True):
        assert [h.level for h in consoles] == before  # --verbose: the terminal keeps every line
        noisy()
    assert "every task state" in (tmp_path / "verbose.log").read_text(encoding="utf-8")


def test_the_ui_artifact_moves_in_steps_while_every_item_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import flows.progress as progress_module

    updates: list[float] = []
    monkeypatch.setattr(progress_module, "create_progress_artifact", lambda *a, **k: uuid.uuid4())
    monkeypatch.setattr(progress_module, "update_progress_artifact", lambda _id, pct: updates.append(pct))
    counts = logging.getLogger(PROGRESS_LOGGER)
    records, level = Records(), counts.level
    counts.addHandler(records)
    counts.setLevel(logging.INFO)
    try:
        progress = StageProgress("many", 148, "patients")
        for _ in range(148):
            progress.advance()
    finally:
        counts.removeHandler(records)
        counts.setLevel(level)
    assert len(records.seen) == 149  # the terminal sees every patient
    assert updates[-1] == 100.0 and len(updates) <= 100 / progress_module.ARTIFACT_STEP + 1
    assert all(b - a >= progress_module.ARTIFACT_STEP for a, b in pairwise([0.0, *updates[:-1]]))
