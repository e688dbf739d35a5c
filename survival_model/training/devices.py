"""Which CUDA device a fold trains on when folds run in parallel, one per device.

The flow lets at most as many fold tasks run as there are devices (a Prefect global concurrency
limit); inside a running task, :func:`claim_cuda_device` takes the first device whose lock file is free
(``fcntl.flock``, released when the task ends or its process dies), so two folds never share a device
even across worker processes.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cuda_devices() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def claim_cuda_device(lock_dir: Path, count: int, poll_seconds: float = 1.0,
                      timeout_seconds: float | None = None) -> Iterator[int]:
    """Hold a free device index in ``range(count)`` for the duration of the block."""
    if count < 1:
        raise ValueError("no CUDA device to claim")
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        for index in range(count):
            fd = os.open(lock_dir / f"cuda-{index}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield index
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise TimeoutError(f"no free CUDA device among {count} after {timeout_seconds} s")
        time.sleep(poll_seconds)
