"""The preprocessing stage for one patient: content-keyed, persisted, quarantined on QC failure.

:class:`Preprocess` (a :class:`survival_model.stage.Stage`) wraps
:func:`survival_model.preprocess.patient.preprocess_patient` the way ingestion wraps its validation: the
output folder
``<work_dir>/preprocess/<site>/<case id>/<key>/`` is named by a key made of the ingested images' key
(itself content-derived), the ``preprocess`` params section, the site's acquisition facts and the
version of this package's code. A finished folder holds ``qc.json`` and the images (with the label map
on the target grid, ``seg``, and at its native resolution, ``seg_native``: the loaded :class:`Patient`'s
``mask`` and ``native_mask``), or
``quarantine.json`` when the patient failed a QC threshold; either way it is reused, not recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import SimpleITK as sitk

from survival_model.config import SEQUENCES, Institution, Params, PreprocessParams
from survival_model.errors import PatientDataError
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import read_json, write_json
from survival_model.patient import Patient, PatientOutcome
from survival_model.preprocess.extractor import deepbet_fingerprint
from survival_model.preprocess.patient import SiteImaging, preprocess_patient
from survival_model.quarantine import QuarantineRecord
from survival_model.stage import Stage

log = logging.getLogger(__name__)

STAGE = "preprocess"
QC_FILE = "qc.json"
QUARANTINE_FILE = "quarantine.json"


def site_imaging(institution: Institution) -> SiteImaging:
    return SiteImaging(institution.images.mask_reference, institution.acquisition)


def ingested_patient(row: Mapping[Any, Any]) -> Patient:
    """The ingested patient of one canonical-cohort row (paths and key written by ingestion)."""
    images: dict[str, Path] = {s: Path(str(row[f"path_{s}"])) for s in SEQUENCES if _present(row.get(f"path_{s}"))}
    brain = row.get("path_brain_mask")
    mask = Path(str(row["path_mask"]))
    return Patient(
        site=str(row["site"]),
        case_id=str(row["case_id"]),
        folder=mask.parent,
        images=images,
        mask=mask,
        brain_mask=Path(str(brain)) if _present(brain) else None,
        key=str(row["images_key"]),
    )


def _present(value: Any) -> bool:
    return value is not None and str(value) not in {"", "nan", "None", "<NA>"}


def brain_extractor_fingerprint(site: SiteImaging, params: PreprocessParams) -> str:
    """The trained extractor's version and model hashes where it may run (a site with skull), else ``""``:
    a new model is a new preprocessing key."""
    if site.acquisition.skull_stripped or params.brain_mask.method != "deepbet":
        return ""
    return deepbet_fingerprint()


def preprocess_code_version() -> str:
    return code_version("survival_model.preprocess")


@dataclass(frozen=True)
class Preprocess(Stage[PatientOutcome]):
    """One patient preprocessed into ``<work_dir>/preprocess/<site>/<case id>/<key[:16]>/``."""

    name: ClassVar[str] = STAGE
    patient: Patient
    site: SiteImaging
    params: PreprocessParams
    work_dir: Path

    def label(self) -> str:
        return f"preprocess-{self.patient.case_id}"

    def make_key(self) -> str:
        return stable_hash(
            STAGE,
            preprocess_code_version(),
            self.patient.case_id,
            self.patient.key,
            sorted(self.patient.images),
            self.site.reference,
            self.site.acquisition.model_dump(mode="json"),
            self.params.model_dump(mode="json"),
            brain_extractor_fingerprint(self.site, self.params),
        )

    def place(self) -> tuple[str, ...]:
        return (STAGE, self.patient.site, self.patient.case_id)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / QC_FILE] if (folder / QC_FILE).exists() else [folder / QUARANTINE_FILE]

    def compute(self, tmp: Path) -> None:
        # The same ITK thread count for every preprocessing run in this worker: results then do not
        # depend on which patient ran beside which (see PreprocessParams.itk_threads).
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.params.itk_threads)
        try:
            qc = preprocess_patient(self.patient, self.site, self.params, tmp)
        except PatientDataError as exc:
            log.warning("quarantined (%s): %s", exc.reason, exc.message)
            for leftover in tmp.iterdir():  # no half-written images next to the quarantine record
                leftover.unlink()
            write_json({"reason": exc.reason, "message": exc.message}, tmp / QUARANTINE_FILE)
        else:
            write_json(qc, tmp / QC_FILE)

    def load(self, folder: Path) -> PatientOutcome | None:
        site, case_id, key = self.patient.site, self.patient.case_id, self.key()
        if (folder / QC_FILE).is_file():
            qc = read_json(folder / QC_FILE)
            files = qc["files"]
            patient = Patient(
                site=site,
                case_id=case_id,
                folder=folder,
                images={s: folder / name for s, name in files["sequences"].items()},
                mask=folder / files["mask"],
                brain_mask=folder / files["brain_mask"],
                key=key,
                qc=qc,
                native_mask=folder / files["mask_native"] if files.get("mask_native") else None,
            )
            return PatientOutcome(site, case_id, key, patient)
        if (folder / QUARANTINE_FILE).is_file():
            record = read_json(folder / QUARANTINE_FILE)
            q = QuarantineRecord(site, case_id, STAGE, record["reason"], record["message"])
            return PatientOutcome(site, case_id, key, None, (q,))
        return None


def preprocessed_patients(cohort_rows: Iterable[Mapping[Any, Any]], params: Params) -> dict[str, Patient]:
    """The preprocessed images of every cohort patient that passed preprocessing, by case id, found
    through the same stages the imaging flow ran (patients not preprocessed with the current settings,
    or quarantined, are absent)."""
    found: dict[str, Patient] = {}
    for row in cohort_rows:
        stage = Preprocess(ingested_patient(row), site_imaging(params.institutions[str(row["site"])]),
                           params.preprocess, params.work_dir)
        outcome = stage.load(stage.folder())
        if outcome is not None and outcome.patient is not None:
            found[outcome.case_id] = outcome.patient
    return found
