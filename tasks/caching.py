"""Content-based caching for Prefect tasks (DESIGN.md section 4).

:class:`ContentCache` is a Prefect ``CachePolicy`` whose key comes from a library function of the
task's inputs: the digests of the files it reads, the params section it uses and the library code
version, never a path, a timestamp or a flow-run id. Outputs live in content-keyed folders, so the
same key always means the same output paths.

A cache hit whose output files are missing must be a miss. When the outputs are gone *and* a record
for the key exists, the policy returns a one-off key so the task runs again; it rewrites the same
content-keyed outputs, after which the original record is valid again. On a first run (no record)
the plain key is returned, so the result is persisted under it and the next run is a hit.
"""

from __future__ import annotations

import logging
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


def content_cache(key_fn: KeyFn, work_dir: Path, *, serializable: bool) -> ContentCache:
    """A configured :class:`ContentCache` with file locks under the work directory."""
    policy = ContentCache(key_fn=key_fn)
    if serializable:
        locks = work_dir / "prefect" / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return policy.configure(isolation_level="SERIALIZABLE", lock_manager=FileSystemLockManager(locks))
    return policy


def result_storage(work_dir: Path) -> Path:
    """Where persisted task results (one small JSON record per key) live: under the work directory.

    A path (not an unsaved ``LocalFileSystem`` block, which Prefect refuses) works without a server.
    """
    path = work_dir / "prefect" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
