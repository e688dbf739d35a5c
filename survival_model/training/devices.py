"""Which CUDA device a fold trains on when folds run in parallel, one per device.

With several CUDA devices and ``training.fit.parallel_folds`` (:func:`parallel_devices`), the flow submits
every fold at once; each fold, as it starts training (:func:`fold_device`), takes the first device whose
lock file is free (:func:`claim_cuda_device`: ``fcntl.flock``, released when the fold ends or its process
dies) and waits while every device is held, so at most one fold trains per device and two folds never
share one, across threads and worker processes alike.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from survival_model.config import FitParams


def cuda_devices() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch  # torch: only when a fit may use CUDA (training.folds' keys import this module)

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parallel_devices(fit: FitParams) -> int:
    """CUDA devices folds train in parallel on, one fold per device (0: one fold at a time)."""
    count = cuda_devices() if fit.device != "cpu" else 0
    return count if fit.parallel_folds and count > 1 else 0


@contextmanager
def fold_device(fit: FitParams, lock_dir: Path) -> Iterator[int | None]:
    """The CUDA device index one fold trains on, held for the block: with :func:`parallel_devices`, a device no
    other fold holds (waiting for one); otherwise None (``training.loop.choose_device``'s default device)."""
    count = parallel_devices(fit)
    if count < 2:
        yield None
        return
    with claim_cuda_device(lock_dir, count) as index:
        yield index


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
