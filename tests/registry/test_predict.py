"""Predictions for new patients as a content-keyed stage: where they go and what decides their key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from survival_model.registry.predict import PREDICTION_FILES, Predict


def stage(tmp_path: Path, **changes: object) -> Predict:
    table = SimpleNamespace(folder=tmp_path / "features" / "table" / "0123456789abcdef")
    base = Predict(tmp_path / "registry" / "models" / "m" / "3-abc", "brain-mets-survival", 3, "champion",
                   "package-key", "cohort-fingerprint", table, {"p1": tmp_path / "p1.npy"},  # type: ignore[arg-type]
                   (), None, False, tmp_path)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_predictions_go_to_a_content_keyed_folder_named_by_the_model_and_the_inputs(tmp_path: Path) -> None:
    predict = stage(tmp_path)
    assert predict.folder() == tmp_path / "predictions" / predict.key()[:16]
    assert predict.info() == {"model": "brain-mets-survival", "version": 3,
                              "model_uri": "models:/brain-mets-survival/3", "requested": "champion",
                              "package_key": "package-key", "cohort": "cohort-fingerprint", "gradcam": False}
    others = [stage(tmp_path, version=4), stage(tmp_path, gradcam=True), stage(tmp_path, cohort="another"),
              stage(tmp_path, image_paths={"p1": tmp_path / "other.npy"}),
              stage(tmp_path, table=SimpleNamespace(folder=tmp_path / "features" / "table" / "another"))]
    assert len({predict.key(), *(o.key() for o in others)}) == 1 + len(others)
    # where the registered version was downloaded to does not decide it (its version does)
    assert stage(tmp_path, package=tmp_path / "elsewhere").key() == predict.key()


def test_a_prediction_loads_only_when_every_file_is_there(tmp_path: Path) -> None:
    predict = stage(tmp_path)
    folder = predict.folder()
    folder.mkdir(parents=True)
    for name in PREDICTION_FILES[:-1]:
        (folder / name).write_text("x", encoding="utf-8")
    assert predict.load(folder) is None
    (folder / PREDICTION_FILES[-1]).write_text("{}", encoding="utf-8")
    assert predict.load(folder) == folder
