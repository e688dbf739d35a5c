"""One fold per CUDA device: device claims never overlap, and are made only when folds train in parallel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from survival_model.config import FitParams
from survival_model.training import devices
from survival_model.training.devices import claim_cuda_device, fold_device


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


def test_folds_take_a_device_each_only_when_they_train_in_parallel_on_several(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_devices", lambda: 2)
    parallel = FitParams(device="auto", parallel_folds=True)
    assert devices.parallel_devices(parallel) == 2
    with fold_device(parallel, tmp_path) as first, fold_device(parallel, tmp_path) as second:
        assert {first, second} == {0, 1}  # two folds at once: one device each, never shared
    for one_at_a_time in (FitParams(device="auto", parallel_folds=False), FitParams(device="cpu", parallel_folds=True)):
        assert devices.parallel_devices(one_at_a_time) == 0
        with fold_device(one_at_a_time, tmp_path) as index:
            assert index is None  # the default device, no claim
    monkeypatch.setattr(devices, "cuda_devices", lambda: 1)
    assert devices.parallel_devices(parallel) == 0
    with fold_device(parallel, tmp_path) as index:
        assert index is None
