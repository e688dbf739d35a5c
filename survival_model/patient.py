"""The one patient noun carried through the imaging stages, and what a per-patient stage produced.

Ingestion writes a patient's canonical images, preprocessing writes them again on one grid, and the
features and network inputs read them: at every step a patient is the same thing, images by sequence, a
segmentation, maybe a brain mask, in the folder of the stage that wrote them (named by that stage's key),
with that stage's QC values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survival_model.quarantine import QuarantineRecord


@dataclass(frozen=True)
class Patient:
    """One patient's images as a stage wrote them."""

    site: str
    case_id: str
    #: The stage's folder holding the files.
    folder: Path
    #: Image per sequence name (``t1``, ``t1c``, ``t2``, ``flair``; a site may declare fewer).
    images: dict[str, Path]
    #: The label map (segmentation), on the grid of the images.
    mask: Path
    brain_mask: Path | None
    #: The content key of the stage that wrote the files.
    key: str
    qc: dict[str, Any] = field(default_factory=dict)
    #: The label map at its native resolution (the reference sequence's own grid, reoriented), where the
    #: images were resampled onto a coarser grid: volumes, lesions and shape are measured on it. None where
    #: the stage wrote none (ingestion: ``mask`` is native already; a work directory of an older version).
    native_mask: Path | None = None


@dataclass(frozen=True)
class PatientOutcome:
    """What a per-patient stage produced: the patient, or the reasons it was quarantined."""

    site: str
    case_id: str
    key: str
    patient: Patient | None
    quarantine: tuple[QuarantineRecord, ...] = ()

    @property
    def ok(self) -> bool:
        return self.patient is not None
