"""The cache's locks (KernelLockManager): a live holder in another process blocks, a holder killed with SIGKILL
leaves the key free at once, holders in one process exclude each other, only the holder may release, and an
old Prefect-format lock file (or a half-written one) is ignored."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.process import BaseProcess
from pathlib import Path

import anyio
import pytest
from prefect.filesystems import LocalFileSystem
from prefect.locking.protocol import LockManager
from prefect.results import ResultStore
from prefect.transactions import IsolationLevel, transaction

from tasks.caching import KernelLockManager, content_cache

FORK = multiprocessing.get_context("fork")  # another process without re-importing Prefect: fast


def _hold(directory: str, key: str, report: int, with_grandchild: bool) -> None:
    """In a child process: take the lock, optionally fork a grandchild that lives on, report a line, keep it."""
    assert KernelLockManager(Path(directory)).acquire_lock(key, "child", acquire_timeout=10)
    line = f"locked {os.getpid()}"
    if with_grandchild:  # as a DataLoader worker would be: it inherits the open lock file
        grandchild = FORK.Process(target=time.sleep, args=(60,))
        grandchild.start()
        line += f" {grandchild.pid}"
    os.write(report, f"{line}\n".encode())
    time.sleep(60)


@contextmanager
def holding_child(directory: Path, key: str = "k", *, with_grandchild: bool = False
                  ) -> Iterator[tuple[BaseProcess, list[int]]]:
    """Another process holding the lock on ``key``; yields it and its pid (and its grandchild's)."""
    read, write = os.pipe()
    child = FORK.Process(target=_hold, args=(str(directory), key, write, with_grandchild))
    child.start()
    os.close(write)
    pids: list[int] = []
    try:
        with os.fdopen(read) as lines:
            ready, _, _ = select.select([lines], [], [], 30)
            words = lines.readline().split() if ready else []
        assert words[:1] == ["locked"], "the child did not take the lock"
        pids = [int(w) for w in words[1:]]
        yield child, pids
    finally:
        for pid in reversed(pids):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.join(10)


def test_a_lock_held_by_a_live_process_blocks(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path)
    with holding_child(tmp_path) as (_, (pid,)):
        assert locks.is_locked("k") and not locks.is_lock_holder("k", "child")  # "child" holds it elsewhere
        assert not locks.acquire_lock("k", "parent", acquire_timeout=0.3)
        assert not locks.acquire_lock("k", "parent", acquire_timeout=0)
        assert not locks.wait_for_lock("k", timeout=0.1)
        assert f"pid={pid}" in locks.lock_path("k").read_text()  # the description, for humans


@pytest.mark.parametrize("with_grandchild", [False, True], ids=["alone", "with-a-forked-grandchild"])
def test_a_lock_whose_process_was_killed_is_free_at_once(tmp_path: Path, with_grandchild: bool) -> None:
    locks = KernelLockManager(tmp_path)
    with holding_child(tmp_path, with_grandchild=with_grandchild) as (child, pids):
        assert not locks.acquire_lock("k", "parent", acquire_timeout=0)
        os.kill(child.pid, signal.SIGKILL)  # the grandchild, if any, lives on: it must not keep the lock
        deadline = time.monotonic() + 10  # until it is gone: the kernel drops its locks as it exits (ms, longer
        while child.exitcode is None and time.monotonic() < deadline:  # on a starved machine); not join(), which
            time.sleep(0.005)  # waits for a pipe that the grandchild also holds
        assert child.exitcode == -signal.SIGKILL
        assert locks.acquire_lock("k", "parent", acquire_timeout=0.3)
        locks.release_lock("k", "parent")
        if with_grandchild:
            os.kill(pids[1], 0)  # it was alive all along
    assert not locks.is_locked("k") and locks.lock_path("k").exists()  # released, never unlinked


def test_only_the_holder_may_release(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path)
    assert locks.acquire_lock("k", "a")
    assert locks.acquire_lock("k", "a", acquire_timeout=0)  # the same holder again: it has it
    with pytest.raises(ValueError, match=r"No lock held by 'b' for key 'k'.*another holder \('a'\)"):
        locks.release_lock("k", "b")
    assert locks.is_lock_holder("k", "a")
    locks.release_lock("k", "a")
    with pytest.raises(ValueError, match=r"No lock held by 'a' for key 'k'.*nobody in this process"):
        locks.release_lock("k", "a")  # twice


def test_a_hold_timeout_is_refused(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path)
    with pytest.raises(ValueError, match="cannot honour hold_timeout=60"):
        locks.acquire_lock("k", "a", hold_timeout=60)
    with pytest.raises(ValueError, match="cannot honour hold_timeout=60"):
        anyio.run(lambda: locks.aacquire_lock("k", "a", hold_timeout=60))
    assert not locks.is_locked("k")


def test_two_threads_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first, second = KernelLockManager(tmp_path), KernelLockManager(tmp_path)  # two instances, as two policies
    assert first.acquire_lock("k", "first")
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(second.acquire_lock("k", "second", acquire_timeout=0.2)))
    thread.start()
    thread.join()
    assert got == [False] and second.is_locked("k") and not second.is_lock_holder("k", "second")
    first.release_lock("k", "first")

    counter = [0]

    def increment(worker: int) -> None:
        locks = KernelLockManager(tmp_path)
        for n in range(200):
            assert locks.acquire_lock("k", f"t{worker}-{n}", acquire_timeout=30)
            value = counter[0]
            time.sleep(0)
            counter[0] = value + 1
            locks.release_lock("k", f"t{worker}-{n}")

    threads = [threading.Thread(target=increment, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter[0] == 400


def _increment_file(directory: str, counter: str, worker: int, times: int) -> None:
    locks = KernelLockManager(Path(directory))
    fd = os.open(counter, os.O_RDWR)
    for n in range(times):
        holder = f"p{worker}-{n}"
        assert locks.acquire_lock("counter", holder, acquire_timeout=30)
        value = int(os.pread(fd, 16, 0))
        time.sleep(0)
        os.pwrite(fd, b"%016d" % (value + 1), 0)
        locks.release_lock("counter", holder)
    os.close(fd)


def test_processes_incrementing_a_counter_under_the_lock_lose_no_update(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_bytes(b"%016d" % 0)
    workers = [FORK.Process(target=_increment_file, args=(str(tmp_path / "locks"), str(counter), i, 50))
               for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert int(counter.read_bytes()) == 200


def test_an_old_prefect_lock_file_or_a_half_written_one_does_not_block(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path)
    for key, content in [("old", '{"holder": "x", "expiration": null}'), ("empty", "")]:
        path = locks.lock_path(key)
        path.write_text(content)  # what Prefect's FileSystemLockManager leaves (or its touch before the write)
        assert not locks.is_locked(key)
        assert locks.acquire_lock(key, "new", acquire_timeout=0)
        locks.release_lock(key, "new")
        assert path.exists()


def test_async_variants(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path)

    async def main() -> None:
        assert locks.acquire_lock("k", "sync")
        assert not await locks.aacquire_lock("k", "async", acquire_timeout=0.1)
        assert not await locks.await_for_lock("k", timeout=0.1)
        locks.release_lock("k", "sync")
        assert await locks.await_for_lock("k", timeout=0)
        assert await locks.aacquire_lock("k", "async", acquire_timeout=0)
        locks.release_lock("k", "async")

    anyio.run(main)


def test_a_serializable_prefect_transaction_takes_and_releases_it(tmp_path: Path) -> None:
    locks = KernelLockManager(tmp_path / "locks")
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path / "results")), lock_manager=locks)
    for expect_cached in (False, True):  # a first run, then a cache hit (begin finds the record: committed)
        with transaction(key="k", store=store, isolation_level=IsolationLevel.SERIALIZABLE) as txn:
            assert locks.is_locked("k") and locks.is_lock_holder("k", txn._holder)
            assert txn.is_committed() == expect_cached
            txn.stage(42)
        assert not locks.is_locked("k")
    assert store.read("k").result == 42


def test_it_is_a_prefect_lock_manager_and_the_cache_uses_it(tmp_path: Path) -> None:
    assert isinstance(KernelLockManager(tmp_path), LockManager)
    policy = content_cache(lambda inputs: ("key", []), tmp_path, serializable=True)
    assert isinstance(policy.lock_manager, KernelLockManager)
    assert policy.lock_manager.lock_files_directory == (tmp_path / "prefect" / "locks").resolve()
    with pytest.raises(ValueError, match="plain file name"):
        KernelLockManager(tmp_path).lock_path("../k")
