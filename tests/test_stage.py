"""The stage protocol (survival_model.stage): run loads a complete stage or computes it atomically; whole-stage
records are found only for the same key with every output present."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from survival_model.fingerprint import stable_hash
from survival_model.stage import Stage, StageOutputMissingError, WholeStage, run, short


@dataclass(frozen=True)
class Square(Stage[int]):
    """A toy stage: the square of ``value`` written to ``out.txt``."""

    name: ClassVar[str] = "square"
    value: int
    work_dir: Path
    fail: bool = False
    write: bool = True

    def make_key(self) -> str:
        return stable_hash(self.name, self.value)

    def label(self) -> str:
        return f"square-{self.value}"

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / "out.txt"]

    def compute(self, tmp: Path) -> None:
        (tmp / "partial.txt").write_text("half")
        if self.fail:
            raise RuntimeError("boom")
        if self.write:
            (tmp / "out.txt").write_text(str(self.value**2))

    def load(self, folder: Path) -> int | None:
        out = folder / "out.txt"
        return int(out.read_text()) if out.is_file() else None


def test_a_stage_computes_once_into_its_keyed_folder_and_then_loads(tmp_path: Path) -> None:
    stage = Square(7, tmp_path)
    assert stage.folder() == tmp_path / "square" / short(stage.key())
    assert run(stage) == 49
    (stage.folder() / "out.txt").write_text("50")  # a finished folder is loaded, never recomputed
    assert run(Square(7, tmp_path)) == 50
    assert run(Square(8, tmp_path)) == 64 and Square(8, tmp_path).folder() != stage.folder()


def test_a_failed_compute_leaves_no_folder_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        run(Square(3, tmp_path, fail=True))
    assert not Square(3, tmp_path).folder().exists()
    assert list((tmp_path / "square").iterdir()) == []  # no temporary folder either
    assert run(Square(3, tmp_path)) == 9


def test_a_stage_that_computes_nothing_loadable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StageOutputMissingError, match=r"square-4: computed, but .* does not load"):
        run(Square(4, tmp_path, write=False))


def test_the_key_is_computed_once_per_stage_object(tmp_path: Path) -> None:
    calls = []

    @dataclass(frozen=True)
    class Counted(Square):
        def make_key(self) -> str:
            calls.append(1)
            return super().make_key()

    stage = Counted(2, tmp_path)
    assert stage.key() == stage.key() == Square(2, tmp_path).key()
    stage.folder()
    assert len(calls) == 1


@pytest.fixture()
def recorded(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    work = tmp_path / "work"
    folder = work / "features" / "table" / "abc"
    folder.mkdir(parents=True)
    outputs = [folder / "features.parquet", work / "preprocess" / "p1" / "t1c.nii.gz"]
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    whole(work, "k" * 64).save(folder, outputs)
    return work, folder, outputs


def whole(work: Path, key: str, name: str = "imaging") -> WholeStage[Path]:
    return WholeStage(name, key, work, lambda folder: folder)


def test_a_recorded_stage_is_found_for_its_key_only(recorded: tuple[Path, Path, list[Path]]) -> None:
    work, folder, _ = recorded
    assert whole(work, "k" * 64).load() == folder
    assert whole(work, "j" * 64).load() is None
    assert whole(work, "k" * 64, name="ingest").load() is None


def test_paths_are_kept_relative_so_a_moved_work_directory_still_reuses(
    recorded: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    work, _, _ = recorded
    assert str(work) not in whole(work, "k" * 64).record().read_text()
    moved = tmp_path / "moved"
    shutil.move(str(work), str(moved))
    assert whole(moved, "k" * 64).load() == moved / "features" / "table" / "abc"


def test_a_missing_output_or_a_broken_record_is_a_miss(
    recorded: tuple[Path, Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    work, _, outputs = recorded
    outputs[1].unlink()
    with caplog.at_level("INFO", logger="survival_model.stage"):
        assert whole(work, "k" * 64).load() is None
    assert "t1c.nii.gz is missing" in caplog.text
    outputs[1].write_bytes(b"x")
    whole(work, "k" * 64).record().write_text("{not json")
    with caplog.at_level("WARNING", logger="survival_model.stage"):
        assert whole(work, "k" * 64).load() is None
    assert "unreadable" in caplog.text


def test_a_finished_folder_that_lost_a_file_is_computed_again(tmp_path: Path) -> None:
    stage = Square(5, tmp_path)
    assert run(stage) == 25
    (stage.folder() / "out.txt").unlink()
    assert run(Square(5, tmp_path)) == 25
    assert sorted(p.name for p in stage.folder().iterdir()) == ["out.txt", "partial.txt"]


def test_a_worker_that_does_not_see_the_flows_work_directory_is_refused(tmp_path: Path) -> None:
    from survival_model.errors import ConfigError
    from survival_model.stage import WORK_DIR_ID, check_work_dir, work_dir_id

    shared = tmp_path / "shared" / "work"
    first = work_dir_id(shared)  # created once, by the first run
    assert work_dir_id(shared) == first and (shared / WORK_DIR_ID).read_text().strip() == first
    check_work_dir(shared, first)  # a worker mounting the shared directory at the same path
    with pytest.raises(ConfigError, match=r"does not exist on host .*same path on every host"):
        check_work_dir(tmp_path / "not-mounted" / "work", first)
    local = tmp_path / "local" / "work"  # a folder of that name, but not the shared one (e.g. made by a lock)
    local.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"is another directory \(no work-directory id\)"):
        check_work_dir(local, first)
    assert work_dir_id(local) != first  # now with an id of its own (a stale local copy, another work directory)
    with pytest.raises(ConfigError, match=r"is another directory \(another id\)"):
        check_work_dir(local, first)
