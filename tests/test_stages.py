"""Whole-stage reuse records (survival_model.stages): found only for the same key with every output present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from survival_model import stages


@pytest.fixture()
def recorded(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    work = tmp_path / "work"
    folder = work / "features" / "table" / "abc"
    folder.mkdir(parents=True)
    outputs = [folder / "features.parquet", work / "preprocess" / "p1" / "t1c.nii.gz"]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    stages.save_stage(work, "imaging", "k" * 64, folder, outputs)
    return work, folder, outputs


def test_a_recorded_stage_is_found_for_its_key_only(recorded: tuple[Path, Path, list[Path]]) -> None:
    work, folder, outputs = recorded
    hit = stages.load_stage(work, "imaging", "k" * 64)
    assert hit is not None and hit.folder == folder and hit.outputs == len(outputs) + 1
    assert stages.load_stage(work, "imaging", "j" * 64) is None
    assert stages.load_stage(work, "ingest", "k" * 64) is None


def test_paths_are_kept_relative_so_a_moved_work_directory_still_reuses(
    recorded: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    work, _, _ = recorded
    assert str(work) not in stages.record_path(work, "imaging", "k" * 64).read_text()
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))
    hit = stages.load_stage(moved, "imaging", "k" * 64)
    assert hit is not None and hit.folder == moved / "features" / "table" / "abc"


def test_a_missing_output_or_a_broken_record_is_a_miss(
    recorded: tuple[Path, Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    work, _, outputs = recorded
    outputs[1].unlink()
    with caplog.at_level("INFO", logger="survival_model.stages"):
        assert stages.load_stage(work, "imaging", "k" * 64) is None
    assert "t1c.nii.gz is missing" in caplog.text
    outputs[1].write_bytes(b"x")
    stages.record_path(work, "imaging", "k" * 64).write_text("{not json")
    with caplog.at_level("WARNING", logger="survival_model.stages"):
        assert stages.load_stage(work, "imaging", "k" * 64) is None
    assert "unreadable" in caplog.text
