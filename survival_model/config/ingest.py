"""The ``ingest`` section: validation thresholds and output settings of ingestion."""

from __future__ import annotations

from pydantic import Field, model_validator

from survival_model.config.base import StrictModel


class IngestParams(StrictModel):
    """Validation thresholds and output settings of ingestion."""

    age_range: tuple[float, float] = (18.0, 110.0)
    kps_range: tuple[float, float] = (0.0, 100.0)
    gpa_range: tuple[float, float] = (0.0, 4.0)
    max_time_days: float = 36500.0
    #: Image and mask count as the same grid if origins differ by at most this (mm) and directions by
    #: at most ``direction_tolerance`` per matrix entry; within it the mask takes the image's geometry.
    grid_tolerance_mm: float = Field(0.05, ge=0)
    direction_tolerance: float = Field(1e-3, ge=0)
    #: gzip the canonical images (``.nii.gz``); false (default) writes ``.nii``: read once per stage that needs
    #: them and several times faster; the BraTS-size overlay (``--realistic``) gzips (15 GB otherwise).
    compress_images: bool = False
    #: Check the clinical number of brain metastases against connected components of the tumour mask.
    check_lesion_count: bool = False
    #: An image whose header declares more voxel data than this (MiB) is refused from its header, before it is
    #: read (``image_too_large``): a corrupt or hostile header must not make ingestion allocate what it declares.
    #: A 1 mm brain volume is ~35 MiB in float32; a 0.5 mm one ~300 MiB.
    max_image_mb: float = Field(4096.0, gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> IngestParams:
        for name in ("age_range", "kps_range", "gpa_range"):
            lo, hi = getattr(self, name)
            if lo >= hi:
                raise ValueError(f"{name}: lower bound {lo} must be below upper bound {hi}")
        return self
