"""The registry's identity of a package (what it is, not which code built it) and its count of the gate
decisions each locked test set has served."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from survival_model.config import TabularParams
from survival_model.imageio import write_json
from survival_model.models.tabular import build_tabular_pipeline, survival_target
from survival_model.registry.package import FORMAT, _skops_dump, _skops_load
from survival_model.registry.registry import (
    Registry,
    decisions_on_test_set,
    package_identity,
    skops_digest,
)
from survival_model.tracking import Tracker


def fitted_pipeline(shift: float = 0.0) -> object:
    frame = pd.DataFrame({"case_id": [f"p{i}" for i in range(8)], "age": np.arange(8) + 50.0 + shift,
                          "sex": ["m", "f"] * 4, "vol_wt_mm3": np.arange(8) * 100.0,
                          "time_days": np.arange(8) * 30.0 + 10, "event": [1, 0] * 4})
    pipeline = build_tabular_pipeline(TabularParams(clinical=["age", "sex"], volumetric=True, scores=[]))
    return pipeline.fit(frame, survival_target(frame))


def make_package(folder: Path, *, weight: float = 1.0) -> Path:
    from safetensors.numpy import save_file

    fold = folder / "folds" / "fold-1"
    fold.mkdir(parents=True)
    save_file({"head.0.weight": np.full((2, 3), weight, dtype=np.float32), "head.0.bias": np.zeros(2, np.float32)},
              str(fold / "model.safetensors"), metadata={"written": str(time.time())})
    write_json({"fold": "fold-1", "key": "fold-key-of-code-v1", "network": {"variant": "tabular"}, "centre": 0.1,
                "summary": {"seconds": 12.5, "device": "cpu"}}, fold / "config.json")
    _skops_dump(fitted_pipeline(), fold / "tabular.skops")
    write_json({"format": FORMAT, "code_version": "code-v1", "training_key": "training-key-of-code-v1",
                "folds": ["fold-1"], "horizons_months": [6, 12],
                "breslow": {"times": [1.0], "cumulative_hazard": [0.1]},
                "test_metrics": {"cindex": {"value": 0.7}}, "pseudonym_key_fingerprint": "abc"},
               folder / "package.json")
    return folder


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_dumping_the_same_pipeline_twice_gives_other_bytes_but_the_same_digest(tmp_path: Path) -> None:
    """Why the identity does not hash skops files' bytes: member timestamps and object ids change per dump."""
    pipeline = fitted_pipeline()
    _skops_dump(pipeline, tmp_path / "a.skops")
    time.sleep(2.1)  # zip timestamps have a 2 s resolution
    _skops_dump(pipeline, tmp_path / "b.skops")
    _skops_dump(_skops_load(tmp_path / "a.skops"), tmp_path / "c.skops")  # a loaded copy: all object ids new
    assert (tmp_path / "a.skops").read_bytes() != (tmp_path / "b.skops").read_bytes()
    digests = {skops_digest(tmp_path / f"{name}.skops") for name in "abc"}
    assert len(digests) == 1
    _skops_dump(fitted_pipeline(shift=1.0), tmp_path / "d.skops")
    assert skops_digest(tmp_path / "d.skops") != skops_digest(tmp_path / "a.skops")


def test_the_identity_ignores_the_code_version_and_sees_a_real_change(tmp_path: Path) -> None:
    original = package_identity(make_package(tmp_path / "a"))
    time.sleep(0.01)
    assert package_identity(make_package(tmp_path / "b")) == original  # rebuilt: new skops bytes, new metadata
    refactored = shutil.copytree(tmp_path / "a", tmp_path / "refactored")
    edit_json(refactored / "package.json", code_version="code-v2", training_key="training-key-of-code-v2",
              test_metrics={"cindex": {"value": 0.7, "resamples": 999}})
    edit_json(refactored / "folds/fold-1/config.json", key="fold-key-of-code-v2", summary={"seconds": 9.0})
    assert package_identity(refactored) == original
    assert package_identity(make_package(tmp_path / "weights", weight=1.001)) != original
    settings = shutil.copytree(tmp_path / "a", tmp_path / "settings")
    edit_json(settings / "package.json", horizons_months=[6, 24])
    assert package_identity(settings) != original
    keyed = shutil.copytree(tmp_path / "a", tmp_path / "keyed")
    edit_json(keyed / "package.json", pseudonym_key_fingerprint="def")
    assert package_identity(keyed) != original
    pipeline = shutil.copytree(tmp_path / "a", tmp_path / "pipeline")
    _skops_dump(fitted_pipeline(shift=1.0), pipeline / "folds/fold-1/tabular.skops")
    assert package_identity(pipeline) != original


def test_the_registry_counts_decisions_per_test_set(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", tmp_path / "artifacts")
    reg = Registry(tracker.client, "counted")
    assert reg.test_set_decisions("aaaa") == 0 and reg.test_sets() == {}  # no model yet
    assert [reg.record_test_set_decision("aaaa") for _ in range(3)] == [1, 2, 3]
    assert reg.record_test_set_decision("bbbb") == 1
    assert decisions_on_test_set(tracker.client, "counted", "aaaa") == 3
    assert decisions_on_test_set(tracker.client, "counted", "bbbb") == 1
    assert decisions_on_test_set(tracker.client, "counted", "cccc") == 0
    assert list(reg.test_sets()) == ["aaaa", "bbbb"]  # most recently used last
    assert reg.record_test_set_decision("aaaa") == 4 and list(reg.test_sets()) == ["bbbb", "aaaa"]


def test_the_count_tag_stays_within_mlflows_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from survival_model.registry import registry as registry_lib

    monkeypatch.setattr(registry_lib, "_HISTORY_CHARS", 200)  # about 8 test sets instead of about 200
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", tmp_path / "artifacts")
    reg = Registry(tracker.client, "many")
    for i in range(20):
        reg.record_test_set_decision(f"{i:016x}")
    kept = reg.test_sets()
    assert len(json.dumps(kept)) <= 200 and f"{19:016x}" in kept and f"{0:016x}" not in kept


def test_registry_runs_take_turns_under_the_lock(tmp_path: Path) -> None:
    """Two registry runs on one work directory: the second waits (told who holds the lock) until the first
    is done; concurrent read-modify-writes of the count then lose nothing."""
    import threading

    from survival_model.registry.registry import lock_file, registry_lock

    path = lock_file(tmp_path / "work", "brain/mets survival")
    assert path == tmp_path / "work" / "registry" / "locks" / "brain_mets_survival.lock"
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e", tmp_path / "artifacts")
    held, release, told = threading.Event(), threading.Event(), []

    def first() -> None:
        with registry_lock(path):
            Registry(tracker.client, "locked").record_test_set_decision("aaaa")
            held.set()
            release.wait(10)
            Registry(tracker.client, "locked").record_test_set_decision("aaaa")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.5, release.set).start()
    with registry_lock(path, told.append):  # blocks until the first run has left its block
        count = Registry(tracker.client, "locked").record_test_set_decision("aaaa")
    thread.join(10)
    assert told == [f"process {os.getpid()}"] and count == 3
    with registry_lock(path, told.append):  # free again: nobody to wait for
        pass
    assert len(told) == 1
