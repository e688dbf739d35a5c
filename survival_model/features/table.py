"""One patient's feature row, and the cohort's feature table (one row per patient, namespaced columns).

Column families (DESIGN.md 3.4): ``vol_*`` volumetric (:mod:`.volumetric`), ``int_<region>_<seq>_<stat>``
intensity statistics, ``rad_<region>_<seq>_*`` / ``rad_<region>_shape_*`` pyradiomics (:mod:`.radiomics`).
``vol_*`` and ``rad_<region>_shape_*`` are measured on the label map at its native resolution when the
patient has one (:attr:`Patient.native_mask`: resampling to a coarser grid distorts lesions of a few
target voxels), the others on the label map of the resampled images.
The table puts them after the canonical clinical fields:
``site, case_id, <clinical fields>, time_days, event, vol_*, int_*, rad_*``; every feature is float64.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import SimpleITK as sitk

from survival_model.config import FeaturesParams
from survival_model.features.radiomics import radiomics_from_images
from survival_model.features.volumetric import (
    intensity_from_images,
    read_label_map,
    read_sequence,
    volumetric_from_image,
)

log = logging.getLogger(__name__)

#: Feature column families, in table order.
FEATURE_PREFIXES: tuple[str, ...] = ("vol_", "int_", "rad_")
#: Outcome columns, placed after the clinical fields when present.
OUTCOME_COLUMNS: tuple[str, ...] = ("time_days", "event")
ID_COLUMNS: tuple[str, ...] = ("site", "case_id")


def feature_row(case_id: str, site: str, images: dict[str, Path], seg: Path, params: FeaturesParams,
                native_seg: Path | None = None) -> dict[str, Any]:
    """All features of one patient: ``site``, ``case_id``, then ``vol_*``, ``int_*`` and (when
    ``params.radiomics.enabled``) ``rad_*``. Each image is read once; images must be on the label map's grid.

    Label-map sources: ``vol_*`` and ``rad_<region>_shape_*`` measure ``native_seg`` (the label map at its
    native resolution, where preprocessing wrote one) and ``seg`` without it; ``int_*`` and the texture
    ``rad_*`` need the images, so they measure ``seg`` (the label map on the images' grid).

    Bad inputs raise :class:`~survival_model.errors.PatientDataError` (the stage quarantines the patient).
    """
    labels = read_label_map(seg)
    native = read_label_map(native_seg) if native_seg is not None else None
    wanted = set(params.intensity_sequences)
    if params.radiomics.enabled:
        wanted |= set(params.radiomics.sequences)
    loaded: dict[str, sitk.Image] = {s: read_sequence(path, labels, s) for s, path in images.items() if s in wanted}
    row: dict[str, Any] = {"site": site, "case_id": case_id}
    row.update(volumetric_from_image(native if native is not None else labels, params))
    row.update(intensity_from_images(loaded, labels, params))
    if params.radiomics.enabled:
        row.update(radiomics_from_images(loaded, labels, params.radiomics, native))
    return row


def _feature_order(rows: list[dict[str, Any]]) -> list[str]:
    """Feature columns by family; within a family in the first row's order (others appended, sorted)."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith(FEATURE_PREFIXES):
                seen.setdefault(key, None)
    first = [k for k in rows[0] if k in seen] if rows else []
    rest = sorted(set(seen) - set(first))
    keys = first + rest
    return [k for prefix in FEATURE_PREFIXES for k in keys if k.startswith(prefix)]


def feature_table(rows: list[dict[str, Any]], clinical: pd.DataFrame) -> pd.DataFrame:
    """Join the patients' feature rows with the clinical columns, one row per patient.

    ``clinical`` holds ``site``, ``case_id``, the clinical fields and, for training, ``time_days`` and
    ``event``. Rows and clinical records are joined on ``case_id`` (their ``site`` must agree); a patient
    without a feature row (quarantined) or without a clinical record is left out and counted in the log.
    Columns: ``site, case_id, <clinical fields in their order>, time_days, event, vol_*, int_*, rad_*``;
    rows sorted by site then case id; features are float64 (NaN where missing).
    """
    for column in ID_COLUMNS:
        if column not in clinical.columns:
            raise ValueError(f"the clinical table has no {column!r} column (columns: {list(clinical.columns)})")
    clashing = [c for c in clinical.columns if c.startswith(FEATURE_PREFIXES)]
    if clashing:
        raise ValueError(f"clinical columns {clashing[:5]} use a feature prefix {FEATURE_PREFIXES}; rename them")
    if clinical["case_id"].duplicated().any():
        dups = sorted(clinical.loc[clinical["case_id"].duplicated(), "case_id"].astype(str))[:5]
        raise ValueError(f"the clinical table has several rows for case(s) {dups}")
    unexpected = sorted({k for row in rows for k in row if k not in ID_COLUMNS and not k.startswith(FEATURE_PREFIXES)})
    if unexpected:
        raise ValueError(f"feature rows hold keys that are neither ids nor features: {unexpected[:5]}")
    missing_id = [i for i, row in enumerate(rows) if "case_id" not in row]
    if missing_id:
        raise ValueError(f"feature row(s) {missing_id[:5]} have no 'case_id'")

    feature_columns = _feature_order(rows)
    features = pd.DataFrame.from_records(
        [{"case_id": str(r["case_id"]), "_site": r.get("site"), **{c: r.get(c) for c in feature_columns}}
         for r in rows],
        columns=["case_id", "_site", *feature_columns],
    )
    if features["case_id"].duplicated().any():
        dups = sorted(features.loc[features["case_id"].duplicated(), "case_id"])[:5]
        raise ValueError(f"several feature rows for case(s) {dups}")
    for row in rows:
        absent = [c for c in feature_columns if c not in row]
        if absent:
            log.warning("feature row of %s lacks %d column(s) (e.g. %s): NaN there; were the rows made with "
                        "different params?", row["case_id"], len(absent), absent[0])
    for column in feature_columns:
        features[column] = pd.to_numeric(features[column], errors="raise").astype("float64")

    left = clinical.assign(_key=clinical["case_id"].astype(str))  # the clinical columns keep their dtypes
    merged = left.merge(features.rename(columns={"case_id": "_key"}), on="_key", how="inner",
                        validate="one_to_one")
    disagree = merged["_site"].notna() & (merged["_site"].astype(str) != merged["site"].astype(str))
    if disagree.any():
        raise ValueError(f"site differs between the feature rows and the clinical table for case(s) "
                         f"{sorted(merged.loc[disagree, 'case_id'])[:5]}")
    no_features = len(left) - len(merged)
    no_clinical = len(features) - len(merged)
    if no_features or no_clinical:
        log.info("feature table: %d patient(s) without features and %d feature row(s) without a clinical "
                 "record left out", no_features, no_clinical)

    outcomes = [c for c in OUTCOME_COLUMNS if c in clinical.columns]
    clinical_fields = [c for c in clinical.columns if c not in ID_COLUMNS and c not in OUTCOME_COLUMNS]
    order = [*ID_COLUMNS, *clinical_fields, *outcomes, *feature_columns]
    table = merged[order].sort_values(list(ID_COLUMNS), kind="stable").reset_index(drop=True)
    return table


def table_schema(frame: pd.DataFrame) -> dict[str, str]:
    """Column name -> dtype string (e.g. ``float64``, ``string``), in column order, for logging."""
    return {str(column): str(dtype) for column, dtype in frame.dtypes.items()}
