"""One fold per CUDA device: device claims never overlap, are made only when folds may train at once, are per GPU
(not per index, which is another GPU on another host), and the flow never reads its own host's GPUs for Dask."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from flows.training import folds_at_once
from survival_model.config import FitParams, load_params
from survival_model.training import devices
from survival_model.training.devices import claim_cuda_device, fold_device
from tests.conftest import REPO


def test_concurrent_claims_get_different_devices_and_a_released_device_is_reused(tmp_path: Path) -> None:
    held: list[int] = []
    release = threading.Event()
    ready = threading.Barrier(3)
    gpus = ["GPU-a", "GPU-b"]

    def hold() -> None:
        with claim_cuda_device(tmp_path, gpus, poll_seconds=0.01) as index:
            held.append(index)
            ready.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    assert sorted(held) == [0, 1]
    with pytest.raises(TimeoutError, match="no free CUDA device"), claim_cuda_device(tmp_path, gpus, 0.01, 0.05):
        pass
    release.set()
    for t in threads:
        t.join()
    with claim_cuda_device(tmp_path, gpus) as index:
        assert index == 0
    with pytest.raises(ValueError, match="no CUDA device"), claim_cuda_device(tmp_path, []):
        pass


def test_device_zero_of_two_hosts_is_two_gpus_in_one_shared_lock_folder(tmp_path: Path) -> None:
    # two Dask workers on two hosts, one GPU each, locks in the shared work directory: neither waits for the other
    with claim_cuda_device(tmp_path, ["GPU-host-a"]) as first, \
            claim_cuda_device(tmp_path, ["GPU-host-b"], timeout_seconds=0) as second:
        assert first == second == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuda-GPU-host-a.lock", "cuda-GPU-host-b.lock"]


def test_folds_take_a_device_each_when_they_may_train_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_devices", lambda: 2)
    monkeypatch.setattr(devices, "cuda_device_ids", lambda: ["GPU-a", "GPU-b"])
    parallel = FitParams(device="auto", parallel_folds=True)
    assert devices.parallel_devices(parallel) == 2
    with fold_device(parallel, tmp_path) as first, fold_device(parallel, tmp_path) as second:
        assert {first, second} == {0, 1}  # two folds at once: one device each, never shared
    for one_at_a_time in (FitParams(device="auto", parallel_folds=False), FitParams(device="cpu", parallel_folds=True)):
        assert devices.parallel_devices(one_at_a_time) == 0
        with fold_device(one_at_a_time, tmp_path) as index:
            assert index is None  # the default device, no claim
    monkeypatch.setattr(devices, "cuda_devices", lambda: 1)
    monkeypatch.setattr(devices, "cuda_device_ids", lambda: ["GPU-a"])
    assert devices.parallel_devices(parallel) == 0  # this host alone trains one fold at a time...
    with fold_device(parallel, tmp_path) as first:  # ...but two worker processes of one host take turns on its GPU
        assert first == 0
        with pytest.raises(TimeoutError, match="no free CUDA device"), \
                claim_cuda_device(tmp_path, ["GPU-a"], 0.01, 0.05):
            pass


def test_on_dask_the_flow_submits_the_folds_without_looking_at_its_own_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    def flow_host_gpus() -> int:
        raise AssertionError("the flow read its own host's GPU count")

    monkeypatch.setattr(devices, "cuda_devices", flow_host_gpus)
    dask = {"orchestration.task_runner": "dask"}
    assert folds_at_once(load_params(REPO / "params.yaml", dask))  # each worker claims a GPU of its own host
    assert not folds_at_once(load_params(REPO / "params.yaml", {**dask, "training.fit.parallel_folds": False}))
    with pytest.raises(AssertionError, match="its own host"):
        folds_at_once(load_params(REPO / "params.yaml"))  # threads: the flow's host is where folds train
