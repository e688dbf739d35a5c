"""Stage progress: how many of a stage's items (cases, patients, folds) are done.

A flow counts its items with :class:`StageProgress` (or :func:`tracked`, over futures as they complete).
Each count is a record of the stdlib logger :data:`PROGRESS_LOGGER` carrying ``stage``, ``done``,
``total`` and ``unit``: the command line draws one bar per stage from them (``flows.render``); elsewhere the
logger is silent (its level is left to whoever runs the flows). The flow run's Prefect progress artifact
(the UI's Artifacts tab) follows the same count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

#: The logger whose records carry the counts (``record.stage``, ``record.done``, ``record.total``,
#: ``record.unit``).
PROGRESS_LOGGER = "survival_model.progress"

#: The UI's progress artifact moves in steps of this many percentage points (and at the end).
ARTIFACT_STEP = 5.0

R = TypeVar("R")


def _artifact_key(stage: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "progress-" + "".join(c if c.isalnum() else "-" for c in stage.lower()).strip("-")


class StageProgress:
    """The count of one stage: ``total`` items of ``unit``; :meth:`advance` as each finishes."""

    def __init__(self, stage: str, total: int, unit: str) -> None:
        self.stage, self.total, self.unit, self.done = stage, total, unit, 0
        self._reported = 0.0
        self._logger = logging.getLogger(PROGRESS_LOGGER)
        artifact = create_progress_artifact(0.0, key=_artifact_key(stage), description=f"{stage}: {unit} done") \
            if total else None
        self._artifact = artifact if isinstance(artifact, UUID) else None  # our flows are synchronous
        self._emit()

    def advance(self, items: int = 1) -> None:
        self.done = min(self.total, self.done + items)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        # the artifact is an API call (~20 ms, and the server's CPU): every ARTIFACT_STEP points and at the end
        if self._artifact is not None and (percent - self._reported >= ARTIFACT_STEP or self.done == self.total):
            update_progress_artifact(self._artifact, percent)
            self._reported = percent
        self._emit()

    def finish(self) -> None:
        """Everything done (e.g. the stage was reused whole)."""
        self.advance(self.total - self.done)

    def _emit(self) -> None:
        self._logger.info("%s: %d/%d %s", self.stage, self.done, self.total, self.unit,
                          extra={"stage": self.stage, "done": self.done, "total": self.total, "unit": self.unit})


def tracked(futures: Iterable[PrefectFuture[R]], progress: StageProgress) -> Iterator[PrefectFuture[R]]:
    """``futures`` as they complete, counting each on ``progress``."""
    for future in as_completed(list(futures)):
        yield future
        progress.advance()
