"""`predict --out DIR`: the run's predictions copied out of the content-keyed work directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.predict import PredictionResult
from survival_model.errors import ConfigError


def result_in(folder: Path) -> PredictionResult:
    (folder / "gradcam").mkdir(parents=True)
    (folder / "predictions.csv").write_text("case_id,risk\np1,0.5\n", encoding="utf-8")
    (folder / "not_predicted.csv").write_text("case_id,stage,reason,message\n", encoding="utf-8")
    (folder / "gradcam" / "p1.png").write_bytes(b"png")
    return PredictionResult(folder, "brain-mets-survival", 3, 1, 0, "runs:/abc")


def test_export_copies_every_file_and_keeps_what_else_is_there(tmp_path: Path) -> None:
    result = result_in(tmp_path / "work" / "predictions" / "0123")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "predictions.csv").write_text("stale", encoding="utf-8")
    assert result.export(out) == out
    assert (out / "predictions.csv").read_text(encoding="utf-8") == "case_id,risk\np1,0.5\n"  # replaced
    assert (out / "gradcam" / "p1.png").read_bytes() == b"png" and (out / "not_predicted.csv").is_file()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"  # left alone
    assert (result.folder / "predictions.csv").is_file()  # the cached run keeps its own copy
    assert result.export(tmp_path / "new" / "nested") == tmp_path / "new" / "nested"  # created when missing
    assert (tmp_path / "new" / "nested" / "predictions.csv").is_file()


def test_export_refuses_a_file_as_the_folder(tmp_path: Path) -> None:
    result = result_in(tmp_path / "run")
    target = tmp_path / "predictions.csv"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"--out .*predictions.csv: exists and is not a folder"):
        result.export(target)
    assert target.read_text(encoding="utf-8") == "x"
