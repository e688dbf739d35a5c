"""Whole-stage reuse: a stage whose every input is unchanged returns its recorded result at once.

Per-item work (one patient's ingestion, preprocessing, features) is cached task by task with content
keys (``tasks/caching.py``). A warm run still pays Prefect's cost for every cached task (a run record,
a cache lookup under a lock, state events: 20-80 ms each here), which for a few hundred patients is
most of a warm run. So when a stage finishes, its result folder is recorded under a *stage key* built
from the same per-item content keys and the params it read; a later run computes the stage key first
(cheap: recorded file digests and hashes) and, when a record exists and every output file it lists is
still there, returns that result without submitting any per-item task. Any changed item or setting
gives another stage key, and the per-item tasks run as usual, each still cached on its own.

Records are small JSON files under ``<work_dir>/cache/stages/<stage>/``; paths in them are relative
to the work directory, so a moved work directory keeps its records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from survival_model.imageio import read_json, write_json

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StageHit:
    """A recorded stage result whose outputs are all present."""

    stage: str
    key: str
    folder: Path
    outputs: int


def record_path(work_dir: Path, stage: str, key: str) -> Path:
    return work_dir / "cache" / "stages" / stage / f"{key[:32]}.json"


def _relative(path: Path, work_dir: Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(work_dir.resolve()))
    except ValueError:  # outside the work directory (e.g. a given brain mask): keep it absolute
        return str(path.resolve())


def save_stage(work_dir: Path, stage: str, key: str, folder: Path, outputs: Iterable[Path]) -> Path:
    """Record that ``stage`` with ``key`` produced ``folder``, and the files its reuse needs."""
    entries = sorted({_relative(p, work_dir) for p in [folder, *outputs]})
    return write_json({"stage": stage, "key": key, "folder": _relative(folder, work_dir), "outputs": entries},
                      record_path(work_dir, stage, key))


def load_stage(work_dir: Path, stage: str, key: str) -> StageHit | None:
    """The recorded result of ``stage`` for ``key``, or None (no record, another key, or a missing output)."""
    path = record_path(work_dir, stage, key)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        if record.get("key") != key or record.get("stage") != stage:
            return None
        outputs = [work_dir / p for p in record["outputs"]]
        folder = work_dir / record["folder"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        log.warning("stage record %s is unreadable (%s); running the stage's tasks", path, exc)
        return None
    missing = next((p for p in outputs if not p.exists()), None)
    if missing is not None:
        log.info("stage %s: recorded output %s is missing; running the stage's tasks", stage, missing)
        return None
    return StageHit(stage, key, folder, len(outputs))


def reuse(work_dir: Path, stage: str, key: str, load: Callable[[Path], T | None]) -> T | None:
    """The recorded result of ``stage`` for ``key`` loaded from its folder by ``load``, or None."""
    hit = load_stage(work_dir, stage, key)
    return load(hit.folder) if hit is not None else None
