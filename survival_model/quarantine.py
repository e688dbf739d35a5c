"""Quarantine: the record of a patient that failed validation, with a reason code and a sentence.

A patient that fails is never dropped silently and never stops the others. The reason codes are
stable (tests, dashboards and MLflow metrics key on them); the sentence is for a human and names the
pseudonymous case id, never an identifying value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pandas as pd

#: reason code -> what it means (shown in docs/data.md and the run summary).
REASONS: dict[str, str] = {
    "missing_sequence": "a declared MRI sequence is absent",
    "missing_segmentation": "the tumour segmentation (mask) is absent",
    "unreadable_image": "an image file or DICOM series cannot be read",
    "unsupported_image": "an image is not a 3D scalar volume",
    "image_too_large": "an image's header declares more data than ingest.max_image_mb (refused before reading)",
    "outside_source": "a declared file or folder links outside the institution's image folder (not read)",
    "non_finite": "an image contains NaN or infinite values",
    "empty_image": "an image is constant (e.g. all zeros)",
    "mask_grid_mismatch": "the mask is not on the physical grid of its reference sequence",
    "sequence_grid_mismatch": "a site declared co-registered has sequences on different grids",
    "unknown_label": "the mask contains label values outside the site's declared scheme",
    "empty_mask": "the mask contains no tumour (no NETC, SNFH or ET voxels)",
    "missing_clinical": "images present but no clinical row for the patient",
    "missing_images": "a clinical row but no images for the patient",
    "missing_id": "a clinical row without a patient identifier",
    "malformed_row": "a clinical table row whose cells do not line up with the header (ragged row)",
    "duplicate_id": "two records map to the same patient identifier",
    "duplicate_clinical_row": "the patient has several rows in a one-row-per-patient table",
    "inconsistent_rows": "a many-rows-per-patient table disagrees on a patient-level field",
    "missing_survival": "survival time or event status is missing",
    "invalid_survival_time": "survival time is not a positive number of days",
    "death_before_diagnosis": "the death (or last contact) date precedes the start date",
    "clinical_out_of_range": "a clinical value is outside its allowed range",
    "invalid_clinical_value": "a clinical value cannot be parsed or mapped to the canonical schema",
    "lesion_count_mismatch": "the clinical number of metastases disagrees with the mask",
    "clinical_table_error": "the site's clinical table could not be harmonised at all",
    "image_source_error": "the site's image folder could not be listed at all",
    "qc_brain_volume": "preprocessing: the brain mask's volume is implausible (skull stripping failed)",
    "qc_brain_mask_tumour": "preprocessing: the brain mask misses part of the tumour (a failed mask, or a "
                            "label map not on these images)",
    "qc_registration": "preprocessing: a sequence could not be registered to the reference well enough",
    "qc_resampling": "preprocessing: resampling changed the tumour volume beyond its partial-volume allowance, "
                     "or the tumour vanished (a label map off its images)",
    "preprocess_failed": "preprocessing failed numerically (e.g. registration or N4 raised an error)",
    "features_failed": "feature extraction failed for the patient",
}

QUARANTINE_COLUMNS = ["site", "case_id", "stage", "reason", "message"]


@dataclass(frozen=True)
class QuarantineRecord:
    """One reason one patient (or one unidentifiable clinical row) was kept out of the cohort."""

    site: str
    case_id: str
    stage: str
    reason: str
    message: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}; add it to REASONS")


def quarantine_frame(records: Iterable[QuarantineRecord]) -> pd.DataFrame:
    """The quarantine table, sorted by site, case and reason, one row per (patient, reason)."""
    rows = [asdict(r) for r in records]
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS).astype("string")
    return frame.drop_duplicates().sort_values(QUARANTINE_COLUMNS[:4]).reset_index(drop=True)
