"""The preprocessing stage for one patient: content-keyed, persisted, quarantined on QC failure.

:func:`run_preprocess` wraps :func:`survival_model.preprocess.patient.preprocess_patient` the way
ingestion wraps its validation: the output folder
``<work_dir>/preprocess/<site>/<case id>/<key>/`` is named by a key made of the ingested images' key
(itself content-derived), the ``preprocess`` params section, the site's acquisition facts and the
version of this package's code. A finished folder holds ``qc.json`` and the images, or
``quarantine.json`` when the patient failed a QC threshold; either way it is reused, not recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survival_model.config import SEQUENCES, Institution, PreprocessParams
from survival_model.errors import PatientDataError
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json
from survival_model.ingest.quarantine import QuarantineRecord
from survival_model.preprocess.patient import PatientInput, preprocess_patient

log = logging.getLogger(__name__)

STAGE = "preprocess"
QC_FILE = "qc.json"
QUARANTINE_FILE = "quarantine.json"


@dataclass(frozen=True)
class PreprocessedPatient:
    """A patient's preprocessed images: one grid, normalised, cropped; plus QC values."""

    site: str
    case_id: str
    folder: Path
    images: dict[str, Path]
    mask: Path
    brain_mask: Path
    key: str
    qc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreprocessOutcome:
    site: str
    case_id: str
    key: str
    patient: PreprocessedPatient | None
    quarantine: tuple[QuarantineRecord, ...] = ()


def patient_input(row: Mapping[str, Any], institution: Institution) -> PatientInput:
    """The preprocessing input of one canonical-cohort row (paths written by ingestion)."""
    images: dict[str, Path] = {s: Path(str(row[f"path_{s}"])) for s in SEQUENCES if _present(row.get(f"path_{s}"))}
    brain = row.get("path_brain_mask")
    return PatientInput(
        site=str(row["site"]),
        case_id=str(row["case_id"]),
        images=images,
        mask=Path(str(row["path_mask"])),
        brain_mask=Path(str(brain)) if _present(brain) else None,
        reference=institution.images.mask_reference,
        acquisition=institution.acquisition,
    )


def _present(value: Any) -> bool:
    return value is not None and str(value) not in {"", "nan", "None", "<NA>"}


def preprocess_code_version() -> str:
    return code_version("survival_model.preprocess")


def preprocess_key(inp: PatientInput, images_key: str, params: PreprocessParams) -> str:
    return stable_hash(
        STAGE,
        preprocess_code_version(),
        inp.case_id,
        images_key,
        sorted(inp.images),
        inp.reference,
        inp.acquisition.model_dump(mode="json"),
        params.model_dump(mode="json"),
    )


def preprocess_folder(work_dir: Path, site: str, case_id: str, key: str) -> Path:
    return work_dir / "preprocess" / site / case_id / key[:16]


def expected_output(work_dir: Path, site: str, case_id: str, key: str) -> list[Path]:
    folder = preprocess_folder(work_dir, site, case_id, key)
    return [folder / QC_FILE] if (folder / QC_FILE).exists() else [folder / QUARANTINE_FILE]


def run_preprocess(inp: PatientInput, images_key: str, params: PreprocessParams, work_dir: Path) -> PreprocessOutcome:
    """Preprocess one patient into its content-keyed folder (reused when it exists)."""
    key = preprocess_key(inp, images_key, params)
    folder = preprocess_folder(work_dir, inp.site, inp.case_id, key)
    existing = load_outcome(folder, inp.site, inp.case_id, key)
    if existing is not None:
        return existing
    with atomic_directory(folder) as tmp:
        try:
            qc = preprocess_patient(inp, params, tmp)
        except PatientDataError as exc:
            log.warning("quarantined (%s): %s", exc.reason, exc.message)
            for leftover in tmp.iterdir():  # no half-written images next to the quarantine record
                leftover.unlink()
            write_json({"reason": exc.reason, "message": exc.message}, tmp / QUARANTINE_FILE)
        else:
            write_json(qc, tmp / QC_FILE)
    outcome = load_outcome(folder, inp.site, inp.case_id, key)
    if outcome is None:  # pragma: no cover - atomic_directory guarantees the folder
        raise RuntimeError(f"{inp.case_id}: preprocessing output missing in {folder}")
    return outcome


def load_outcome(folder: Path, site: str, case_id: str, key: str) -> PreprocessOutcome | None:
    if (folder / QC_FILE).is_file():
        qc = read_json(folder / QC_FILE)
        files = qc["files"]
        patient = PreprocessedPatient(
            site=site,
            case_id=case_id,
            folder=folder,
            images={s: folder / name for s, name in files["sequences"].items()},
            mask=folder / files["mask"],
            brain_mask=folder / files["brain_mask"],
            key=key,
            qc=qc,
        )
        return PreprocessOutcome(site, case_id, key, patient)
    if (folder / QUARANTINE_FILE).is_file():
        record = read_json(folder / QUARANTINE_FILE)
        q = QuarantineRecord(site, case_id, "preprocess", record["reason"], record["message"])
        return PreprocessOutcome(site, case_id, key, None, (q,))
    return None
