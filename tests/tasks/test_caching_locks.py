"""The cache's file locks: a lock whose process died is released (a killed run must not block every later run
on the same key), a live owner's lock still serialises, Prefect's ownerless locks expire after the hold time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.caching import OwnedLockManager


def test_a_lock_whose_process_died_is_released(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead = int(child.stdout)
    locks = OwnedLockManager(tmp_path)
    assert locks.acquire_lock("k", "first")
    path = locks._lock_path_for_key("k")
    owner = json.loads(Path(path).read_text())
    assert owner["pid"] == os.getpid() and owner["holder"] == "first" and owner["expiration"]
    assert not OwnedLockManager(tmp_path).acquire_lock("k", "second", acquire_timeout=0.3)  # alive: held
    Path(path).write_text(json.dumps({**owner, "pid": dead}))  # as if the owner had been killed
    fresh = OwnedLockManager(tmp_path)
    assert not fresh.is_locked("k")
    assert fresh.acquire_lock("k", "second", acquire_timeout=0.3)
    fresh.release_lock("k", "second")
    assert not Path(path).exists()


def test_an_ownerless_lock_expires_after_the_hold_time(tmp_path: Path) -> None:
    locks = OwnedLockManager(tmp_path, hold_seconds=60)
    path = Path(locks._lock_path_for_key("old"))
    path.write_text(json.dumps({"holder": "x", "expiration": None}))  # what Prefect's own manager writes
    assert locks.is_locked("old")
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert not locks.is_locked("old") and not path.exists()
