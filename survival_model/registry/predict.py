"""Predictions for new patients with a packaged model, and the inputs a packaged model needs.

The inputs are computed exactly as when the model was trained: the package's preprocessing, feature and
image-input parameters replace the run's (:func:`package_params`), so the same content-keyed stages
(cached) produce them. A patient is predicted only when every input is there; the others are listed with
a reason (ingestion, preprocessing and feature quarantine, an image input that cannot be built, a missing
feature) in ``not_predicted``.

The predictions are a content-keyed stage (:class:`Predict`): ``<work_dir>/predictions/<key[:16]>/``, keyed by
the registered model (name, version, package key), the new patients' cohort, their feature table and image
inputs and whether Grad-CAM figures are made. ``predict --out DIR`` copies that folder out (``flows.predict``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from survival_model.config import ImageInputParams
from survival_model.errors import PatientDataError
from survival_model.fingerprint import stable_hash
from survival_model.imageio import write_json, write_parquet, write_text
from survival_model.models.inputs import ImageInput, load_image_input, region_planes
from survival_model.patient import Patient
from survival_model.registry.package import IMAGE_COLUMN, PackagedModel, package_code_version
from survival_model.stage import Stage, run

if TYPE_CHECKING:
    from survival_model.features.stage import FeatureTable

log = logging.getLogger(__name__)

NOT_PREDICTED_COLUMNS = ["site", "case_id", "stage", "reason", "message"]
#: The files of a finished prediction (``gradcam/<case id>.png`` beside them when asked for).
PREDICTION_FILES = ("predictions.parquet", "predictions.csv", "not_predicted.csv", "model.json")


def image_inputs(patients: Mapping[str, Patient], params: ImageInputParams | None,
                 work_dir: Path) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """Each patient's image input made with ``params`` (a package's; None: the model takes no images),
    content-keyed and reused, and the patients it failed for."""
    paths: dict[str, Path] = {}
    failed: list[dict[str, str]] = []
    if params is None:
        return paths, failed
    for case_id, patient in sorted(patients.items()):
        try:
            paths[case_id] = run(ImageInput(patient, params, work_dir))
        except PatientDataError as exc:
            failed.append({"site": patient.site, "case_id": case_id, "stage": "inputs", "reason": exc.reason,
                           "message": str(exc)})
    return paths, failed


def predict_patients(model: PackagedModel, table: pd.DataFrame, image_paths: Mapping[str, Path],
                     quarantine: pd.DataFrame, failed: Sequence[Mapping[str, str]] = ()
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions for every feature-table patient with all its inputs, and the patients not predicted."""
    not_predicted = [quarantine.reindex(columns=NOT_PREDICTED_COLUMNS), pd.DataFrame(list(failed),
                                                                                      columns=NOT_PREDICTED_COLUMNS)]
    lost = {f["case_id"] for f in failed}
    rows = table[~table["case_id"].isin(lost)].reset_index(drop=True)
    if model.uses_images:
        without = rows[~rows["case_id"].isin(image_paths)]
        if len(without):
            not_predicted.append(pd.DataFrame({"site": without["site"], "case_id": without["case_id"],
                                               "stage": "inputs", "reason": "missing_image_input",
                                               "message": "no image input for this patient"}))
            rows = rows[rows["case_id"].isin(image_paths)].reset_index(drop=True)
    frame = model.model_input(rows, image_paths)
    predictions = model.predict(frame) if len(frame) else pd.DataFrame(columns=["case_id", "risk"])
    predictions.insert(1, "site", rows["site"].to_numpy() if len(rows) else [])
    missing = pd.concat([f for f in not_predicted if len(f)], ignore_index=True) if any(
        len(f) for f in not_predicted) else pd.DataFrame(columns=NOT_PREDICTED_COLUMNS)
    return predictions, missing.drop_duplicates(subset=["case_id", "reason"]).reset_index(drop=True)


def gradcam_overlays(model: PackagedModel, frame: pd.DataFrame, seg_paths: Mapping[str, Path],
                     folder: Path) -> list[Path]:
    """One Grad-CAM figure per patient (T1c and FLAIR of the slice with the most tumour + edema, the map of
    the ensemble's risk over them, the regions outlined), ``<folder>/<case id>.png``."""
    from survival_model.evaluation import plots  # matplotlib: only when Grad-CAM figures are drawn
    from survival_model.evaluation.explain import EnsembleExplainer, explain_cam, panel_slices  # torch: likewise

    if not model.uses_images or not len(frame):
        return []
    case_ids = [str(c) for c in frame["case_id"]]
    images = np.stack([load_image_input(Path(p)) for p in frame[IMAGE_COLUMN]]).astype(np.float32)
    explainer = EnsembleExplainer(model.folds, model.info["objective"], float(model.info["centre"]),
                                  list(model.info["channels"]))
    regions = {c: region_planes(seg_paths[c], model.input_params(), ["tc", "wt"]) for c in case_ids}
    shares, cams = explain_cam(explainer, case_ids, model.features(frame), images, regions)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, case in enumerate(case_ids):
        share, area = shares.iloc[i][["cam_share_tumour_edema", "area_share_tumour_edema"]].to_numpy(dtype=float)
        panel = panel_slices(images[i], cams[i], regions[case], explainer.channels, case, float(share), float(area))
        paths.append(plots.gradcam_panel([panel], folder / f"{case}.png"))
    return paths


def write_predictions(folder: Path, predictions: pd.DataFrame, not_predicted: pd.DataFrame,
                      info: Mapping[str, Any]) -> list[Path]:
    """``predictions.parquet`` / ``.csv``, ``not_predicted.csv`` and ``model.json`` (which model, which version)."""
    return [write_parquet(predictions, folder / "predictions.parquet"),
            write_text(predictions.to_csv(index=False), folder / "predictions.csv"),
            write_text(not_predicted.to_csv(index=False), folder / "not_predicted.csv"),
            write_json(dict(info), folder / "model.json")]


@dataclass(frozen=True)
class Predict(Stage[Path]):
    """Per-patient predictions of a registered model for a feature table's patients (and, with ``gradcam``, one
    Grad-CAM figure per patient), in ``<work_dir>/predictions/<key[:16]>/``.

    The key is made of the model (:meth:`info`: its name, version, the alias or version asked for, its package
    key), the cohort's fingerprint, the feature table's key, every image input's path (content-keyed by the
    inputs stage) and ``gradcam``. ``package`` (the registered version's files), ``failed`` (the patients whose
    image input failed) and ``seg_paths`` follow from those."""

    name: ClassVar[str] = "predict-patients"
    package: Path
    model: str
    version: int
    requested: str
    package_key: str
    cohort: str
    table: FeatureTable
    image_paths: Mapping[str, Path]
    failed: tuple[Mapping[str, str], ...]
    seg_paths: Mapping[str, Path] | None
    gradcam: bool
    work_dir: Path

    def info(self) -> dict[str, Any]:
        """Which model made the predictions (``model.json``, the MLflow run's tags)."""
        return {"model": self.model, "version": self.version, "model_uri": f"models:/{self.model}/{self.version}",
                "requested": self.requested, "package_key": self.package_key, "cohort": self.cohort,
                "gradcam": self.gradcam}

    def make_key(self) -> str:
        return stable_hash("predictions", package_code_version(), self.info(), self.table.folder.name,
                           sorted((c, str(p)) for c, p in self.image_paths.items()))

    def place(self) -> tuple[str, ...]:
        return ("predictions",)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / n for n in PREDICTION_FILES]

    def load(self, folder: Path) -> Path | None:
        return folder if all(p.is_file() for p in self.outputs(folder)) else None

    def compute(self, tmp: Path) -> None:
        model = PackagedModel.load(self.package)
        table = self.table.table()
        quarantine = pd.read_parquet(self.table.quarantine_path) if self.table.quarantine_path.is_file() \
            else pd.DataFrame()
        predictions, not_predicted = predict_patients(model, table, self.image_paths, quarantine, self.failed)
        write_predictions(tmp, predictions, not_predicted, self.info())
        if self.gradcam and self.seg_paths is not None and len(predictions):
            frame = model.model_input(table.set_index("case_id", drop=False).loc[list(predictions["case_id"])]
                                      .reset_index(drop=True), self.image_paths)
            figures = gradcam_overlays(model, frame, self.seg_paths, tmp / "gradcam")
            log.info("Grad-CAM: %d figure(s)", len(figures))
        log.info("%d patient(s) predicted, %d not predicted (reasons in not_predicted.csv)", len(predictions),
                 len(not_predicted))
