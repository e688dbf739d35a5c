"""Which CUDA device a fold trains on when folds run in parallel, one per device.

The devices are those of the process that trains the fold, never the flow's: on a Dask cluster the flow's host
may have no GPU, or other ones. With ``training.fit.parallel_folds`` and a CUDA device here, each fold, as it starts
training (:func:`fold_device`), takes the first device whose lock file is free (:func:`claim_cuda_device`:
``fcntl.flock``, released when the fold ends or its process dies) and waits while every device is held, so at most
one fold trains per device and two folds never share one, across threads, worker processes and hosts alike.

A device's lock file is named by the GPU's UUID (:func:`cuda_device_ids`), not its index: index 0 is another GPU
on another host, or in a worker process given another ``CUDA_VISIBLE_DEVICES``, and those must not wait for each
other through the shared work directory.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from survival_model.config import FitParams


def cuda_devices() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    import torch  # torch: only when a fit may use CUDA (training.folds' keys import this module)

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_device_ids() -> list[str]:
    """The UUID of each visible CUDA device, by index (empty without CUDA): the same for every process that sees
    that GPU, whatever its host or ``CUDA_VISIBLE_DEVICES``."""
    import torch  # torch: only when a fold trains

    if not torch.cuda.is_available():
        return []
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def parallel_devices(fit: FitParams) -> int:
    """CUDA devices of *this* host that folds train in parallel on, one fold per device (0: one fold at a time)."""
    count = cuda_devices() if fit.device != "cpu" else 0
    return count if fit.parallel_folds and count > 1 else 0


@contextmanager
def fold_device(fit: FitParams, lock_dir: Path) -> Iterator[int | None]:
    """The CUDA device index one fold trains on, held for the block: with ``parallel_folds`` and CUDA here, a
    device no other fold holds (waiting for one); otherwise None (``training.loop.choose_device``'s default device).

    One device is claimed too: folds may run at once in several worker processes of one host (on Dask), and
    they then take turns on it instead of sharing it."""
    ids = cuda_device_ids() if fit.device != "cpu" and fit.parallel_folds else []
    if not ids:
        yield None
        return
    with claim_cuda_device(lock_dir, ids) as index:
        yield index


@contextmanager
def claim_cuda_device(lock_dir: Path, device_ids: Sequence[str], poll_seconds: float = 1.0,
                      timeout_seconds: float | None = None) -> Iterator[int]:
    """Hold a free device, by index into ``device_ids`` (:func:`cuda_device_ids`), for the duration of the block."""
    if not device_ids:
        raise ValueError("no CUDA device to claim")
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    while True:
        for index, device_id in enumerate(device_ids):
            fd = os.open(lock_dir / f"cuda-{device_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
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
            raise TimeoutError(f"no free CUDA device among {len(device_ids)} after {timeout_seconds} s")
        time.sleep(poll_seconds)
