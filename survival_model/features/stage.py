"""The feature stage for one patient and the cohort's feature table: content-keyed and persisted.

One patient's features (volumetric, intensity, radiomics) go to
``<work_dir>/features/<site>/<case id>/<key>/features.json``, keyed by the preprocessed patient's key,
which label map the volumetric and shape features measure (native or resampled), the ``features`` params
section, the radiomics settings (YAML bytes, regions, sequences, pyradiomics version) and this package's
code version. The table joins every patient's row with the canonical
clinical fields into ``<work_dir>/features/table/<key>/features.parquet`` with its schema, a QC summary
and the combined quarantine (ingestion + preprocessing + features).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from survival_model.config import FeaturesParams
from survival_model.errors import PatientDataError
from survival_model.features.radiomics import pyradiomics_version, radiomics_settings_digest
from survival_model.features.table import feature_row, feature_table, table_schema
from survival_model.fingerprint import code_version, stable_hash
from survival_model.imageio import read_json, write_json, write_parquet, write_text
from survival_model.ingest.cohort import CohortResult
from survival_model.patient import Patient, PatientOutcome
from survival_model.preprocess.stage import Preprocess
from survival_model.quarantine import QuarantineRecord, quarantine_frame
from survival_model.stage import Stage, WholeStage

log = logging.getLogger(__name__)

STAGE = "features"
ROW_FILE = "features.json"
QUARANTINE_FILE = "quarantine.json"


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


@dataclass(frozen=True)
class Features(Stage[FeatureOutcome]):
    """One preprocessed patient's feature row in ``<work_dir>/features/<site>/<case id>/<key[:16]>/``."""

    name: ClassVar[str] = STAGE
    patient: Patient
    params: FeaturesParams
    work_dir: Path

    def label(self) -> str:
        return f"features-{self.patient.case_id}"

    def make_key(self) -> str:
        return stable_hash(
            STAGE,
            features_code_version(),
            self.patient.key,
            self.label_source(),
            self.params.model_dump(mode="json", exclude={"radiomics": {"params_file"}}),
            radiomics_settings_digest(self.params.radiomics),
        )

    def label_source(self) -> str:
        """Which label map the volumetric and shape features measure (part of the key): ``native``, or
        ``resampled`` for a patient preprocessed without a native label map."""
        return "native" if self.patient.native_mask is not None else "resampled"

    def place(self) -> tuple[str, ...]:
        return (STAGE, self.patient.site, self.patient.case_id)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / ROW_FILE] if (folder / ROW_FILE).exists() else [folder / QUARANTINE_FILE]

    def compute(self, tmp: Path) -> None:
        p = self.patient
        try:
            row = feature_row(p.case_id, p.site, p.images, p.mask, self.params, p.native_mask)
        except PatientDataError as exc:
            write_json({"reason": exc.reason, "message": exc.message}, tmp / QUARANTINE_FILE)
            return
        except RuntimeError as exc:  # ITK / pyradiomics numerical failures
            message = f"{p.case_id}: feature extraction failed: {str(exc).splitlines()[0][:200]}"
            write_json({"reason": "features_failed", "message": message}, tmp / QUARANTINE_FILE)
            return
        write_json({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()},
                   tmp / ROW_FILE)

    def load(self, folder: Path) -> FeatureOutcome | None:
        p, key = self.patient, self.key()
        if (folder / ROW_FILE).is_file():
            return FeatureOutcome(p.site, p.case_id, key, folder / ROW_FILE)
        if (folder / QUARANTINE_FILE).is_file():
            record = read_json(folder / QUARANTINE_FILE)
            log.warning("quarantined (%s): %s", record["reason"], record["message"])
            return FeatureOutcome(p.site, p.case_id, key, None, (
                QuarantineRecord(p.site, p.case_id, STAGE, record["reason"], record["message"]),))
        return None


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

def qc_record(outcome: PatientOutcome) -> dict[str, Any]:
    """A flat QC row for one patient (the Prefect QC table and the MLflow QC summary).

    Non-uniformity is the worst sequence's low-frequency coefficient of variation inside the brain
    before and after N4 (empty where the site is bias-corrected); the registration metric is the
    worst (highest) final Mattes MI over the registered sequences (empty where co-registered). The
    tumour volume change through resampling comes with the allowance it was held to, and the number of
    lesions that had no voxel on the target grid (restored as one voxel; measured on the native map).
    ``sequences`` names the sequences the patient's images had (``t1c+t2f``): the ones its features and
    network channels came from; ``brain_mask`` where its brain mask came from (``deepbet(t1n)``, ``given``, ...)
    and ``tumour_in_brain`` the share of the tumour that mask held.
    """
    row: dict[str, Any] = {"site": outcome.site, "case_id": outcome.case_id,
                           "status": "ok" if outcome.patient is not None else outcome.quarantine[0].reason,
                           "sequences": None, "brain_mask": None, "tumour_in_brain": None,
                           "brain_volume_ml": None, "wt_volume_before_mm3": None, "wt_volume_after_mm3": None,
                           "tumour_volume_change": None, "tumour_volume_allowance_mm3": None,
                           "lesions_vanished": None, "nonuniformity_before": None, "nonuniformity_after": None,
                           "bias_field_p95_p5": None, "registration_metric": None}
    if outcome.patient is None:
        return row
    qc = outcome.patient.qc
    volumes = qc["region_volumes_mm3"]
    resampling = qc.get("resampling", {})  # absent in the records of older versions
    corrected = [b for b in qc["bias"].values() if b.get("status") == "corrected"]
    registered = [r for r in qc["registration"].values() if r.get("status") == "registered"]
    row.update({
        "sequences": "+".join(qc["sequences"]),
        "brain_mask": qc["brain_mask"]["source"],
        "tumour_in_brain": qc["brain_mask"].get("tumour_inside"),  # absent in the records of older versions
        "brain_volume_ml": qc["brain_volume_ml"],
        "wt_volume_before_mm3": volumes["native"]["wt"],
        "wt_volume_after_mm3": volumes["resampled"]["wt"],
        "tumour_volume_change": qc["tumour_volume_change"],
        "tumour_volume_allowance_mm3": resampling.get("allowance_mm3"),
        "lesions_vanished": len(resampling["lesions_vanished"]) if "lesions_vanished" in resampling else None,
        "nonuniformity_before": max((b["nonuniformity_before"] for b in corrected), default=None),
        "nonuniformity_after": max((b["nonuniformity_after"] for b in corrected), default=None),
        "bias_field_p95_p5": max((b["field_p95_p5"] for b in corrected), default=None),
        "registration_metric": max((r["metric_after"] for r in registered), default=None),
    })
    return row


@dataclass(frozen=True)
class BuildTable(Stage[FeatureTable]):
    """Every patient's feature row joined with the clinical fields, in
    ``<work_dir>/features/table/<key[:16]>/features.parquet``, with the quarantine of all stages so far."""

    name: ClassVar[str] = "feature-table"
    outcomes: tuple[FeatureOutcome, ...]
    preprocessed: tuple[PatientOutcome, ...]
    cohort: CohortResult
    work_dir: Path

    def make_key(self) -> str:
        return stable_hash(STAGE, "table", features_code_version(), sorted(o.key for o in self.outcomes),
                           sorted(p.key for p in self.preprocessed), self.cohort.fingerprint, self.cohort.folder.name)

    def place(self) -> tuple[str, ...]:
        return (STAGE, "table")

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / "summary.json"]

    def compute(self, tmp: Path) -> None:
        cohort = self.cohort.cohort()
        rows = [o.row() for o in self.outcomes if o.row_path is not None]
        clinical = cohort.drop(columns=[c for c in cohort.columns if c.startswith(("path_", "qc_"))]
                               + ["images_key", "source_digest"], errors="ignore")
        table = feature_table(rows, clinical)
        records = [q for p in self.preprocessed for q in p.quarantine]
        records += [q for o in self.outcomes for q in o.quarantine]
        quarantine = pd.concat([self.cohort.quarantine(), quarantine_frame(records)], ignore_index=True)
        qc = pd.DataFrame([qc_record(p) for p in self.preprocessed])
        summary = table_summary(table, qc, quarantine)
        write_parquet(table, tmp / "features.parquet")
        write_parquet(quarantine, tmp / "quarantine.parquet")
        write_text(quarantine.to_csv(index=False), tmp / "quarantine.csv")
        write_text(qc.to_csv(index=False), tmp / "qc_table.csv")
        write_json(table_schema(table), tmp / "schema.json")
        write_json(summary["qc"], tmp / "qc_summary.json")
        write_json(summary, tmp / "summary.json")

    def load(self, folder: Path) -> FeatureTable | None:
        return load_table(folder)


def imaging_stage(preprocess: Sequence[Preprocess], params: FeaturesParams, cohort: CohortResult,
                  work_dir: Path) -> WholeStage[FeatureTable]:
    """The whole imaging stage: its key is every patient's preprocessing key (which holds its images'
    digests, the preprocessing params and code version), the feature settings and code version, and the
    cohort the table joins."""
    key = stable_hash(
        STAGE,
        "imaging-stage",
        features_code_version(),
        sorted(p.key() for p in preprocess),
        params.model_dump(mode="json", exclude={"radiomics": {"params_file"}}),
        radiomics_settings_digest(params.radiomics),
        cohort.fingerprint,
        cohort.folder.name,
    )
    return WholeStage("imaging", key, work_dir, load_table)


def imaging_outputs(preprocess: Sequence[Preprocess], outcomes: Sequence[PatientOutcome],
                    features: Sequence[FeatureOutcome], table: FeatureTable) -> list[Path]:
    """The files a reuse of the imaging stage needs: every patient's preprocessing record and images, its
    feature row, and the table's files."""
    paths: list[Path] = [p for stage in preprocess for p in stage.outputs(stage.folder())]
    for o in outcomes:
        if o.patient is not None:
            paths += [*o.patient.images.values(), o.patient.mask]
            paths += [o.patient.native_mask] if o.patient.native_mask is not None else []
            paths += [o.patient.brain_mask] if o.patient.brain_mask is not None else []
    paths += [o.row_path for o in features if o.row_path is not None]
    return [*paths, table.table_path, table.quarantine_path, table.folder / "schema.json",
            table.folder / "summary.json"]


def load_table(folder: Path) -> FeatureTable | None:
    """The feature table written in ``folder``, or None when it is not (completely) there."""
    if not (folder / "summary.json").is_file():
        return None
    return FeatureTable(folder, folder / "features.parquet", folder / "quarantine.parquet",
                        read_json(folder / "schema.json"), read_json(folder / "summary.json"))


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
