"""The feature stage for one patient and the cohort's feature table: content-keyed and persisted.

One patient's features (volumetric, intensity, radiomics) go to
``<work_dir>/features/<site>/<case id>/<key>/features.json``, keyed by the preprocessed patient's key,
the ``features`` params section, the radiomics settings (YAML bytes, regions, sequences, pyradiomics
version) and this package's code version. The table joins every patient's row with the canonical
clinical fields into ``<work_dir>/features/table/<key>/features.parquet`` with its schema, a QC summary
and the combined quarantine (ingestion + preprocessing + features).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from survival_model.config import FeaturesParams
from survival_model.errors import PatientDataError
from survival_model.features.radiomics import pyradiomics_version, radiomics_settings_digest
from survival_model.features.table import feature_row, feature_table, table_schema
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import atomic_directory, read_json, write_json, write_parquet, write_text
from survival_model.ingest.quarantine import QuarantineRecord, quarantine_frame
from survival_model.preprocess.stage import PreprocessedPatient, PreprocessOutcome
from survival_model.preprocess.stage import expected_output as preprocess_expected_output

log = logging.getLogger(__name__)

STAGE = "features"
ROW_FILE = "features.json"


@dataclass(frozen=True)
class FeatureOutcome:
    site: str
    case_id: str
    key: str
    row_path: Path | None
    quarantine: tuple[QuarantineRecord, ...] = ()

    def row(self) -> dict[str, Any]:
        if self.row_path is None:
            raise ValueError(f"{self.case_id}: no features (quarantined)")
        data: dict[str, Any] = read_json(self.row_path)
        return {k: (math.nan if v is None else v) for k, v in data.items()}


@dataclass(frozen=True)
class FeatureTable:
    """Where the feature table and its companions are."""

    folder: Path
    table_path: Path
    quarantine_path: Path
    schema: dict[str, str]
    summary: dict[str, Any]

    def table(self) -> pd.DataFrame:
        return pd.read_parquet(self.table_path)

    def quarantine(self) -> pd.DataFrame:
        return pd.read_parquet(self.quarantine_path)

    def report_files(self) -> list[Path]:
        return [self.folder / n for n in ("schema.json", "qc_summary.json", "qc_table.csv", "quarantine.csv")]


def features_code_version() -> str:
    return code_version("survival_model.features")


def features_key(patient: PreprocessedPatient, params: FeaturesParams) -> str:
    return stable_hash(
        STAGE,
        features_code_version(),
        patient.key,
        params.model_dump(mode="json", exclude={"radiomics": {"params_file"}}),
        radiomics_settings_digest(params.radiomics),
    )


def features_folder(work_dir: Path, site: str, case_id: str, key: str) -> Path:
    return work_dir / "features" / site / case_id / key[:16]


def run_features(patient: PreprocessedPatient, params: FeaturesParams, work_dir: Path) -> FeatureOutcome:
    """Compute one patient's features into its content-keyed folder (reused when it exists)."""
    key = features_key(patient, params)
    folder = features_folder(work_dir, patient.site, patient.case_id, key)
    if (folder / ROW_FILE).is_file():
        return FeatureOutcome(patient.site, patient.case_id, key, folder / ROW_FILE)
    with atomic_directory(folder) as tmp:
        try:
            row = feature_row(patient.case_id, patient.site, patient.images, patient.mask, params)
        except PatientDataError as exc:
            return FeatureOutcome(patient.site, patient.case_id, key, None, (
                QuarantineRecord(patient.site, patient.case_id, "features", exc.reason, exc.message),))
        except RuntimeError as exc:  # ITK / pyradiomics numerical failures
            message = f"{patient.case_id}: feature extraction failed: {str(exc).splitlines()[0][:200]}"
            return FeatureOutcome(patient.site, patient.case_id, key, None, (
                QuarantineRecord(patient.site, patient.case_id, "features", "features_failed", message),))
        write_json({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()},
                   tmp / ROW_FILE)
    return FeatureOutcome(patient.site, patient.case_id, key, folder / ROW_FILE)


def expected_output(work_dir: Path, site: str, case_id: str, key: str) -> list[Path]:
    return [features_folder(work_dir, site, case_id, key) / ROW_FILE]


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

def qc_record(outcome: PreprocessOutcome) -> dict[str, Any]:
    """A flat QC row for one patient (the Prefect QC table and the MLflow QC summary).

    Non-uniformity is the worst sequence's low-frequency coefficient of variation inside the brain
    before and after N4 (empty where the site is bias-corrected); the registration metric is the
    worst (highest) final Mattes MI over the registered sequences (empty where co-registered).
    """
    row: dict[str, Any] = {"site": outcome.site, "case_id": outcome.case_id,
                           "status": "ok" if outcome.patient is not None else outcome.quarantine[0].reason,
                           "brain_volume_ml": None, "wt_volume_before_mm3": None, "wt_volume_after_mm3": None,
                           "tumour_volume_change": None, "nonuniformity_before": None, "nonuniformity_after": None,
                           "bias_field_p95_p5": None, "registration_metric": None}
    if outcome.patient is None:
        return row
    qc = outcome.patient.qc
    volumes = qc["region_volumes_mm3"]
    corrected = [b for b in qc["bias"].values() if b.get("status") == "corrected"]
    registered = [r for r in qc["registration"].values() if r.get("status") == "registered"]
    row.update({
        "brain_volume_ml": qc["brain_volume_ml"],
        "wt_volume_before_mm3": volumes["native"]["wt"],
        "wt_volume_after_mm3": volumes["resampled"]["wt"],
        "tumour_volume_change": qc["tumour_volume_change"],
        "nonuniformity_before": max((b["nonuniformity_before"] for b in corrected), default=None),
        "nonuniformity_after": max((b["nonuniformity_after"] for b in corrected), default=None),
        "bias_field_p95_p5": max((b["field_p95_p5"] for b in corrected), default=None),
        "registration_metric": max((r["metric_after"] for r in registered), default=None),
    })
    return row


def table_key(outcomes: Sequence[FeatureOutcome], pre: Sequence[PreprocessOutcome], cohort_fingerprint: str,
              cohort_key: str) -> str:
    return stable_hash(STAGE, "table", features_code_version(), sorted(o.key for o in outcomes),
                       sorted(p.key for p in pre), cohort_fingerprint, cohort_key)


def imaging_stage_key(preprocess_keys: Sequence[str], params: FeaturesParams, cohort_fingerprint: str,
                      cohort_key: str) -> str:
    """Key of the whole imaging stage (``survival_model.stages``): every patient's preprocessing key
    (which holds its images' digests, the preprocessing params and code version), the feature
    settings and code version, and the cohort the table joins."""
    return stable_hash(
        STAGE,
        "imaging-stage",
        features_code_version(),
        sorted(preprocess_keys),
        params.model_dump(mode="json", exclude={"radiomics": {"params_file"}}),
        radiomics_settings_digest(params.radiomics),
        cohort_fingerprint,
        cohort_key,
    )


def stage_outputs(outcomes: Sequence[FeatureOutcome], pre: Sequence[PreprocessOutcome], work_dir: Path) -> list[Path]:
    """The files a reuse of the imaging stage needs: every patient's preprocessing record and images,
    and feature row."""
    paths: list[Path] = []
    for p in pre:
        paths += preprocess_expected_output(work_dir, p.site, p.case_id, p.key)
        if p.patient is not None:
            paths += [*p.patient.images.values(), p.patient.mask, p.patient.brain_mask]
    paths += [o.row_path for o in outcomes if o.row_path is not None]
    return paths


def load_table(folder: Path) -> FeatureTable | None:
    """The feature table written in ``folder``, or None when it is not (completely) there."""
    if not (folder / "summary.json").is_file():
        return None
    return FeatureTable(folder, folder / "features.parquet", folder / "quarantine.parquet",
                        read_json(folder / "schema.json"), read_json(folder / "summary.json"))


def build_table(
    outcomes: Sequence[FeatureOutcome],
    pre: Sequence[PreprocessOutcome],
    cohort: pd.DataFrame,
    ingest_quarantine: pd.DataFrame,
    cohort_fingerprint: str,
    cohort_key: str,
    work_dir: Path,
) -> FeatureTable:
    """Join every patient's features with the clinical fields; combine the quarantine of all stages."""
    key = table_key(outcomes, pre, cohort_fingerprint, cohort_key)
    folder = work_dir / "features" / "table" / key[:16]
    if not (folder / "summary.json").is_file():
        rows = [o.row() for o in outcomes if o.row_path is not None]
        clinical = cohort.drop(columns=[c for c in cohort.columns if c.startswith(("path_", "qc_"))]
                               + ["images_key", "source_digest"], errors="ignore")
        table = feature_table(rows, clinical)
        records = [q for p in pre for q in p.quarantine] + [q for o in outcomes for q in o.quarantine]
        quarantine = pd.concat([ingest_quarantine, quarantine_frame(records)], ignore_index=True)
        qc = pd.DataFrame([qc_record(p) for p in pre])
        schema = table_schema(table)
        summary = table_summary(table, qc, quarantine)
        with atomic_directory(folder) as tmp:
            write_parquet(table, tmp / "features.parquet")
            write_parquet(quarantine, tmp / "quarantine.parquet")
            write_text(quarantine.to_csv(index=False), tmp / "quarantine.csv")
            write_text(qc.to_csv(index=False), tmp / "qc_table.csv")
            write_json(schema, tmp / "schema.json")
            write_json(summary["qc"], tmp / "qc_summary.json")
            write_json(summary, tmp / "summary.json")
    table_files = load_table(folder)
    if table_files is None:  # pragma: no cover - just written atomically
        raise FileNotFoundError(folder / "summary.json")
    return table_files


def table_summary(table: pd.DataFrame, qc: pd.DataFrame, quarantine: pd.DataFrame) -> dict[str, Any]:
    families = {prefix: sum(c.startswith(prefix) for c in table.columns) for prefix in ("vol_", "int_", "rad_")}
    numeric = qc.select_dtypes("number") if len(qc) else pd.DataFrame()
    qc_stats = {
        column: {"median": float(np.nanmedian(numeric[column])), "min": float(np.nanmin(numeric[column])),
                 "max": float(np.nanmax(numeric[column]))}
        for column in numeric.columns if numeric[column].notna().any()
    }
    by_stage = quarantine.groupby("stage")["case_id"].nunique().to_dict() if len(quarantine) else {}
    by_reason = quarantine.groupby("reason")["case_id"].nunique().to_dict() if len(quarantine) else {}
    return {
        "patients": len(table),
        "columns": len(table.columns),
        "feature_columns": families,
        "sites": {str(k): int(v) for k, v in table["site"].value_counts().sort_index().items()} if len(table) else {},
        "missing_feature_values": int(table.filter(regex=r"^(vol|int|rad)_").isna().sum().sum()),
        "quarantined_by_stage": {str(k): int(v) for k, v in by_stage.items()},
        "quarantined_by_reason": {str(k): int(v) for k, v in by_reason.items()},
        "qc": {"patients_preprocessed": int((qc["status"] == "ok").sum()) if len(qc) else 0, "stats": qc_stats},
        "pyradiomics_version": pyradiomics_version(),
    }
