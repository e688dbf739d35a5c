"""Content-based caching for Prefect tasks (DESIGN.md section 4).

:class:`ContentCache` is a Prefect ``CachePolicy`` whose key comes from a library function of the
task's inputs: the digests of the files it reads, the params section it uses and the library code
version, never a path, a timestamp or a flow-run id. Outputs live in content-keyed folders, so the
same key always means the same output paths.

A cache hit whose output files are missing must be a miss. When the outputs are gone *and* a record
for the key exists, the policy returns a one-off key so the task runs again; it rewrites the same
content-keyed outputs, after which the original record is valid again. On a first run (no record)
the plain key is returned, so the result is persisted under it and the next run is a hit.

Serializable isolation takes a file lock per key (:class:`OwnedLockManager`). Prefect's own
``FileSystemLockManager`` records only a random holder id and, since a transaction never passes a hold timeout,
no expiry: a lock left by a killed process blocks every later run on that key for ever (found when a benchmark
run was killed mid-preprocessing and the next run waited on 8 such locks). The subclass records the owning
host and process and treats a lock whose process is gone as released; locks from other hosts (a Dask worker
elsewhere) expire after ``hold_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.locking.filesystem import FileSystemLockManager

log = logging.getLogger(__name__)

#: A key function gets the task's bound inputs and returns (key, files that must exist on a hit).
KeyFn = Callable[[dict[str, Any]], tuple[str, list[Path]]]


@dataclass
class ContentCache(CachePolicy):
    """Cache policy computing keys with a library key function (see module docstring)."""

    key_fn: KeyFn | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if self.key_fn is None:
            return None
        key, outputs = self.key_fn(inputs)
        full_key = f"{task_ctx.task.name}-{key}"
        missing = [p for p in outputs if not Path(p).exists()]
        if missing and task_ctx.result_store is not None and task_ctx.result_store.exists(full_key):
            log.warning("%s: cached outputs missing (%s); recomputing", task_ctx.task.name, missing[0])
            return f"{full_key}-regen-{uuid.uuid4().hex[:8]}"
        return full_key


class OwnedLockManager(FileSystemLockManager):
    """A ``FileSystemLockManager`` whose locks name their process, so a dead owner's lock is released
    (module docstring). Why by hand: no Prefect lock manager detects a holder that died."""

    def __init__(self, lock_files_directory: Path, hold_seconds: float = 6 * 3600) -> None:
        super().__init__(lock_files_directory)
        self.hold_seconds = hold_seconds

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout,
                                        self.hold_seconds if hold_timeout is None else hold_timeout)
        if acquired:  # add the owner to the file Prefect wrote (the expiry and holder kept)
            path = Path(self._lock_path_for_key(key))
            info = json.loads(path.read_bytes() or b"{}")
            path.write_text(json.dumps({**info, "host": socket.gethostname(), "pid": os.getpid()}))
        return acquired

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        path = Path(self._lock_path_for_key(key))
        try:
            owner = json.loads(path.read_bytes() or b"{}")
        except (FileNotFoundError, ValueError):
            owner = {}  # gone, or being written by its owner this instant: Prefect's own reading decides
        dead = owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0)))
        legacy = bool(owner) and "host" not in owner and _age(path) > self.hold_seconds  # Prefect's, no owner
        if dead or legacy:
            log.warning("releasing the cache lock %s: %s", path.name,
                        f"its process {owner.get('pid')} is gone" if dead else "ownerless and older than the hold time")
            path.unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache)


def _age(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def content_cache(key_fn: KeyFn, work_dir: Path, *, serializable: bool) -> ContentCache:
    """A configured :class:`ContentCache` with file locks under the work directory."""
    policy = ContentCache(key_fn=key_fn)
    if serializable:
        locks = work_dir / "prefect" / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return policy.configure(isolation_level="SERIALIZABLE", lock_manager=OwnedLockManager(locks))
    return policy


def result_storage(work_dir: Path) -> Path:
    """Where persisted task results (one small JSON record per key) live: under the work directory.

    A path (not an unsaved ``LocalFileSystem`` block, which Prefect refuses) works without a server.
    """
    path = work_dir / "prefect" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
