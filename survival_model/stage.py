"""The stage protocol: every persisted step of the pipeline is one :class:`Stage` (DESIGN.md section 4).

A stage is a small frozen object holding its inputs. It names itself (``name``, ``label``), derives its
content key from those inputs (``key``: digests of what it reads, the params it uses and the code
version; never a path or a time), places its output folder from the key (``folder``), lists the files
whose presence means it finished (``outputs``), writes its outputs into a temporary folder
(``compute``) and reads a finished folder back (``load``). :func:`run` is the one function that loads
a finished stage or otherwise computes it atomically, so a killed worker never leaves a half-written
folder behind and two workers computing the same key agree (content-keyed outputs are identical).

The Prefect layer adds nothing to this but orchestration: ``tasks.stage`` turns any stage into a task
whose cache key *is* :meth:`Stage.key`, so the cache and the folder cannot disagree.

A whole stage (all patients' preprocessing and features, all folds) is reusable as one
:class:`WholeStage`: its key is built from the per-item keys and the settings the stage reads, and its
record lists every file its result needs; a later run with the same key loads the result without
submitting a single per-item task (a warm run would otherwise pay Prefect's per-task cost for each
patient). Records are small JSON files under ``<work_dir>/cache/stages/<stage>/`` with paths relative
to the work directory, so a moved work directory keeps them.

Stages run wherever the task runner sends them (threads, processes, Dask workers on other hosts), all on one
work directory at one absolute path. :func:`work_dir_id` names a work directory once; a stage task checks it
sees that same directory (:func:`check_work_dir`) before it reads or writes anything, so a worker without the
shared mount fails with a clear error instead of writing its outputs to a local folder of the same name.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from survival_model.errors import ConfigError
from survival_model.imageio import atomic_directory, read_json, write_json
from survival_model.owners import remove_orphans

log = logging.getLogger(__name__)

R = TypeVar("R")

#: How many hex digits of a key name a stage's folder (the key itself is kept in the stage's files).
FOLDER_KEY_LENGTH = 16
#: How many hex digits of a whole stage's key name its record.
RECORD_KEY_LENGTH = 32
#: The file naming a work directory (:func:`work_dir_id`), relative to it.
WORK_DIR_ID = Path("cache") / "work-dir-id"


def relative_to(path: Path, work_dir: Path) -> str:
    """``path`` relative to the work directory (so that a moved or copied work directory keeps working), or
    absolute when it lies outside it (e.g. a site's own brain mask)."""
    try:
        return str(Path(path).resolve().relative_to(Path(work_dir).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def short(key: str) -> str:
    """The part of a content key that names its folder."""
    return key[:FOLDER_KEY_LENGTH]


def work_dir_id(work_dir: Path) -> str:
    """The id of ``work_dir``, created by the first run that asks (exclusively: two first runs at once get one id)."""
    marker = Path(work_dir) / WORK_DIR_ID
    if not marker.is_file():
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.parent / f".{marker.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(f"{uuid.uuid4().hex}\n", encoding="utf-8")
            os.link(tmp, marker)  # atomic and exclusive, NFS included (a rename would replace a racing run's id)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return marker.read_text(encoding="utf-8").strip()


def check_work_dir(work_dir: Path, expected_id: str) -> None:
    """A :class:`ConfigError` unless ``work_dir`` here is the work directory whose id is ``expected_id`` (where
    the flow runs): on another host, the same shared directory mounted at the same path."""
    try:
        found = (Path(work_dir) / WORK_DIR_ID).read_text(encoding="utf-8").strip()
    except OSError:
        found = None
    if found != expected_id:
        seen = "does not exist" if not Path(work_dir).is_dir() else (
            "is another directory (no work-directory id)" if found is None else "is another directory (another id)")
        raise ConfigError(
            f"the work directory {work_dir} {seen} on host {socket.gethostname()}, where a task of this run was sent: "
            "every worker must see the flow's work directory, on shared storage mounted at the same path on every "
            "host (docs/running.md, Across machines)")


class StageOutputMissingError(RuntimeError):
    """A stage computed without error but its folder does not load (a bug in the stage)."""


class Stage(ABC, Generic[R]):
    """One content-keyed, persisted step (module docstring). Subclasses are frozen dataclasses with a
    ``work_dir`` field and the inputs their key is made of."""

    #: The stage's name: the first folder under the work directory and the Prefect task's name.
    name: ClassVar[str]
    work_dir: Path

    @abstractmethod
    def make_key(self) -> str:
        """The content key of this stage's inputs (computed once per stage object, see :meth:`key`)."""

    @abstractmethod
    def compute(self, tmp: Path) -> None:
        """Write the outputs into ``tmp`` (renamed to :meth:`folder` when this returns)."""

    @abstractmethod
    def load(self, folder: Path) -> R | None:
        """The result held in a finished ``folder``; None when it is not (completely) there."""

    def key(self) -> str:
        """:meth:`make_key`, memoised on the object: keys can hash file digests, and the cache policy, the
        folder and the logs all ask for it."""
        key: str | None = self.__dict__.get("_key")
        if key is None:
            key = self.make_key()
            object.__setattr__(self, "_key", key)  # frozen dataclasses: the memo is not a field
        return key

    def label(self) -> str:
        """What one run of this stage is called in logs and the Prefect UI (e.g. ``preprocess-<case>``)."""
        return self.name

    def place(self) -> tuple[str, ...]:
        """Folders between the work directory and the keyed folder (default: the stage's name)."""
        return (self.name,)

    def folder(self) -> Path:
        """``<work_dir>/<place...>/<key[:16]>``."""
        return self.work_dir.joinpath(*self.place(), short(self.key()))

    def outputs(self, folder: Path) -> list[Path]:
        """The files whose presence means the stage finished (a cache hit without them is a miss)."""
        return [folder]


def run(stage: Stage[R]) -> R:
    """Load ``stage`` when its folder is complete, otherwise compute it atomically and load it."""
    folder = stage.folder()
    done = stage.load(folder)
    if done is not None:
        return done
    # A run killed while computing this stage left its temporary folder behind: removed now that its owner is dead
    # (a live concurrent run's is kept). Only on a miss, so a warm run lists no folders.
    remove_orphans(folder.parent, folder.name)
    # A folder that exists but does not load lost a file after it was finished (content-keyed folders are
    # only ever renamed into place whole): it is replaced, not kept.
    with atomic_directory(folder, replace=folder.exists()) as tmp:
        stage.compute(tmp)
    result = stage.load(folder)
    if result is None:
        raise StageOutputMissingError(f"{stage.label()}: computed, but {folder} does not load")
    return result


# --------------------------------------------------------------------------------------------------
# Whole-stage reuse
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WholeStage(Generic[R]):
    """A whole stage (e.g. all patients' imaging) as one reusable unit: recorded under a key made of its
    items' keys and its settings, loaded by ``loader`` from the folder of its result."""

    name: str
    stage_key: str
    work_dir: Path
    loader: Callable[[Path], R | None]

    def key(self) -> str:
        return self.stage_key

    def record(self) -> Path:
        return self.work_dir / "cache" / "stages" / self.name / f"{self.stage_key[:RECORD_KEY_LENGTH]}.json"

    def load(self) -> R | None:
        """The recorded result when the record exists for this key and every file it lists is present."""
        path = self.record()
        if not path.is_file():
            return None
        try:
            record = read_json(path)
            if record.get("key") != self.stage_key or record.get("stage") != self.name:
                return None
            outputs = [self.work_dir / p for p in record["outputs"]]
            folder = self.work_dir / record["folder"]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("stage record %s is unreadable (%s); running the stage's tasks", path, exc)
            return None
        missing = next((p for p in outputs if not p.exists()), None)
        if missing is not None:
            log.info("stage %s: recorded output %s is missing; running the stage's tasks", self.name, missing)
            return None
        return self.loader(folder)

    def save(self, folder: Path, outputs: Iterable[Path]) -> Path:
        """Record that this stage produced ``folder``, and the files its reuse needs."""
        entries = sorted({relative_to(p, self.work_dir) for p in [folder, *outputs]})
        return write_json({"stage": self.name, "key": self.stage_key, "folder": relative_to(folder, self.work_dir),
                           "outputs": entries}, self.record())
