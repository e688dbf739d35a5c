"""Content-based caching for Prefect tasks (DESIGN.md section 4).

:class:`ContentCache` is a Prefect ``CachePolicy`` whose key comes from a library function of the
task's inputs: the digests of the files it reads, the params section it uses and the library code
version, never a path, a timestamp or a flow-run id. Outputs live in content-keyed folders, so the
same key always means the same output paths.

A cache hit whose output files are missing must be a miss. When the outputs are gone *and* a record
for the key exists, the policy returns a one-off key so the task runs again; it rewrites the same
content-keyed outputs, after which the original record is valid again. On a first run (no record)
the plain key is returned, so the result is persisted under it and the next run is a hit.

Serializable isolation takes a lock per key (:class:`KernelLockManager`), written by hand because Prefect
ships no lock manager that survives a killed holder: its ``FileSystemLockManager`` marks a lock by the mere
existence of a JSON file, so a process killed while holding one (or between creating the file and writing
it) blocks every later run on that key for ever, and any expiry would also end a live holder's lock. Here a
lock is the kernel's advisory ``flock`` on ``<locks>/<key>.lock``: it lasts exactly as long as the holding
process (the kernel drops it when the process exits or is killed), so there are no pids to check, no
expiry, and lock files are never deleted (unlinking a flock'ed file would let two processes lock two
different files under one name). What a lock file contains is for humans only (holder, host, pid) and is
never read to decide anything; old Prefect-format JSON lock files left in existing work directories are
therefore simply ignored. Across hosts the work directory needs storage with working file locks: on Linux,
``flock`` over NFSv4 (or NFSv3 with the lock manager) is emulated with POSIX byte-range locks and
excludes processes on all clients; on storage without cross-host locks (NFS mounted ``nolock`` or
``local_lock=...``, many FUSE/SMB mounts), locks only exclude processes on the same host, so use one host
per work directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

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


@dataclass(frozen=True)
class _Held:
    holder: str
    fd: int


#: Locks this process holds, by lock-file path, shared by every manager instance. Same-process exclusion
#: is decided here (not by the kernel: over NFS ``flock`` becomes a POSIX lock, which one process's fds
#: share). Every open/flock/close of a lock file happens under ``_MUTEX`` and only while this process does
#: not hold that file, so closing a probe's descriptor can never drop a POSIX-emulated lock that is held.
_HELD: dict[str, _Held] = {}
_MUTEX = threading.Lock()


def _before_fork() -> None:
    _MUTEX.acquire()


def _after_fork_in_parent() -> None:
    _MUTEX.release()


def _after_fork_in_child() -> None:
    """A forked child shares the parent's locked open files: close its copies (without ``LOCK_UN``, which
    would unlock the parent's) so the lock still ends with the parent, and hold nothing itself."""
    for held in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _HELD.clear()
    _MUTEX.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

_FIRST_POLL_S = 0.005
_MAX_POLL_S = 0.1


class KernelLockManager:
    """Prefect ``LockManager`` (``prefect.locking.protocol``) on kernel advisory locks, one ``flock``'ed file
    per key: a lock lasts exactly as long as its holding process (module docstring).

    Within one process, holders (Prefect uses a fresh id per transaction) exclude each other through a
    shared table; re-acquiring by the same holder succeeds at once. ``acquire_timeout``/``timeout``: ``None``
    waits for ever, ``0`` tries once, otherwise polls until the deadline.
    """

    def __init__(self, lock_files_directory: Path) -> None:
        self.lock_files_directory = Path(lock_files_directory).expanduser().resolve()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.lock_files_directory)!r})"

    def lock_path(self, key: str) -> Path:
        """The lock file of ``key``: ``<directory>/<key>.lock``."""
        if not key or key in {".", ".."} or "/" in key or "\0" in key:
            raise ValueError(f"a lock key must be a plain file name, not {key!r}")
        return self.lock_files_directory / f"{key}.lock"

    # -- acquiring --------------------------------------------------------------------------------------

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        _refuse_hold_timeout(hold_timeout)
        waits = _waits(acquire_timeout)
        while not self._try_acquire(key, holder):
            if (wait := next(waits, None)) is None:
                return False
            time.sleep(wait)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        _refuse_hold_timeout(hold_timeout)
        waits = _waits(acquire_timeout)
        while not self._try_acquire(key, holder):
            if (wait := next(waits, None)) is None:
                return False
            await anyio.sleep(wait)
        return True

    def _try_acquire(self, key: str, holder: str) -> bool:
        path = str(self.lock_path(key))
        with _MUTEX:
            if (held := _HELD.get(path)) is not None:
                return held.holder == holder
            self.lock_files_directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                raise _no_locks(path, exc) from exc
            _HELD[path] = _Held(holder, fd)
            _describe(fd, holder)
            return True

    # -- releasing ----------------------------------------------------------------------------------------

    def release_lock(self, key: str, holder: str) -> None:
        path = str(self.lock_path(key))
        with _MUTEX:
            held = _HELD.get(path)
            if held is None or held.holder != holder:
                by = "nobody in this process" if held is None else f"another holder ({held.holder!r})"
                raise ValueError(f"No lock held by {holder!r} for key {key!r}: it is held by {by}")
            del _HELD[path]
            with contextlib.suppress(OSError):
                os.ftruncate(held.fd, 0)  # the description is stale from now on
            try:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            finally:
                os.close(held.fd)

    # -- inspecting ---------------------------------------------------------------------------------------

    def is_locked(self, key: str) -> bool:
        """Whether any holder, in this or another process, holds ``key``.

        For another process's lock this briefly takes a shared lock on the file, which can make a concurrent
        single try (``acquire_timeout=0``) elsewhere fail; polling acquirers only retry.
        """
        path = str(self.lock_path(key))
        with _MUTEX:
            if path in _HELD:
                return True
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError as exc:
                raise _no_locks(path, exc) from exc
            finally:
                os.close(fd)  # also drops the probe's shared lock
            return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with _MUTEX:
            held = _HELD.get(str(self.lock_path(key)))
        return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        waits = _waits(timeout)
        while self.is_locked(key):
            if (wait := next(waits, None)) is None:
                return False
            time.sleep(wait)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        waits = _waits(timeout)
        while self.is_locked(key):
            if (wait := next(waits, None)) is None:
                return False
            await anyio.sleep(wait)
        return True


def _refuse_hold_timeout(hold_timeout: float | None) -> None:
    if hold_timeout is not None:
        raise ValueError(
            f"KernelLockManager cannot honour hold_timeout={hold_timeout}: a kernel lock lasts exactly as long "
            "as its holding process and cannot expire while that process lives (pass None)"
        )


def _waits(timeout: float | None) -> Iterator[float]:
    """The sleeps between tries: doubling from ``_FIRST_POLL_S`` up to ``_MAX_POLL_S``, the last one cut at the
    deadline ``timeout`` seconds from now (``None``: for ever); exhausted once the deadline has passed."""
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    poll = _FIRST_POLL_S
    while deadline is None or (remaining := deadline - time.monotonic()) > 0:
        yield poll if deadline is None else min(poll, remaining)
        poll = min(2 * poll, _MAX_POLL_S)


def _describe(fd: int, holder: str) -> None:
    """Write who holds the lock into its file, for humans only (never read back to decide)."""
    since = datetime.now(UTC).isoformat(timespec="seconds")
    text = f"holder={holder} host={socket.gethostname()} pid={os.getpid()} since={since}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError as exc:  # the lock is held all the same
        log.debug("could not describe the lock holder: %s", exc)


def _no_locks(path: str, exc: OSError) -> OSError:
    if exc.errno in {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}:
        return OSError(exc.errno, f"cannot lock {path}: the file system of the work directory does not support "
                                  "file locks (use local disk, or NFS with locking, for cache isolation)")
    return exc


def content_cache(key_fn: KeyFn, work_dir: Path, *, serializable: bool) -> ContentCache:
    """A configured :class:`ContentCache` with file locks under the work directory."""
    policy = ContentCache(key_fn=key_fn)
    if serializable:
        locks = work_dir / "prefect" / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return policy.configure(isolation_level="SERIALIZABLE", lock_manager=KernelLockManager(locks))
    return policy


def result_storage(work_dir: Path) -> Path:
    """Where persisted task results (one small JSON record per key) live: under the work directory.

    A path (not an unsaved ``LocalFileSystem`` block, which Prefect refuses) works without a server.
    """
    path = work_dir / "prefect" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
