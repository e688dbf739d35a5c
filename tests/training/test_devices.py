"""One fold per CUDA device: device claims never overlap."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from survival_model.training.devices import claim_cuda_device


def test_concurrent_claims_get_different_devices_and_a_released_device_is_reused(tmp_path: Path) -> None:
    held: list[int] = []
    release = threading.Event()
    ready = threading.Barrier(3)

    def hold() -> None:
        with claim_cuda_device(tmp_path, 2, poll_seconds=0.01) as index:
            held.append(index)
            ready.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    assert sorted(held) == [0, 1]
    with pytest.raises(TimeoutError, match="no free CUDA device"), claim_cuda_device(tmp_path, 2, 0.01, 0.05):
        pass
    release.set()
    for t in threads:
        t.join()
    with claim_cuda_device(tmp_path, 2) as index:
        assert index == 0
    with pytest.raises(ValueError, match="no CUDA device"), claim_cuda_device(tmp_path, 0):
        pass
