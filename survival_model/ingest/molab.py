"""The MOLAB brain-metastasis sheets (Sci Data 2023;10:208) harmonised for the real-data baseline check.

The clinical sheet (a legend above a three-row header, one row per lesion) is read by the ingestion
layer like any institution's table, through a declaration (:data:`CLINICAL_SOURCE`: header rows, id
normalisation, rows per patient, code mappings; ``survival_model.ingest.clinical.harmonise_table``),
into canonical, pseudonymous rows (``case_id, age, sex, primary, gpa, n_brain_mets, time_days, event``).
The morphological sheet (one row per lesion and time point; ids without the leading zero; time points as
date-like codes, ``19010618`` = 1901-06-18, counting days from 1900-01-01 = MR1 like the sheet's MRI
dates) gives the tumour burden at the earliest segmented time point (``total_ml``, ``enhancing_ml``,
``necrotic_ml`` summed over lesions, as ``vol_log_*`` = log(1 + ml) for the models, and ``n_lesions``;
the sheet's volumes are in cm3 = ml), joined per patient through the same id normalisation and pseudonym.

**Two time origins.** Death times count from the first MRI (MR1, day 0), where the GPA is assessed.
The first *segmented* MRI is later for most patients (median over 200 days), so a volume measured
there must not predict survival from MR1 (the patient had to survive until the measurement:
immortal-time bias). ``landmark_days`` = death time minus the day of that MRI is the survival from the
volume's own time point, the origin for any model that uses the volume.

MOLAB reports no censoring: every patient with a time died.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from survival_model.config import ClinicalSource, IdStep, IngestParams
from survival_model.errors import DataSourceError
from survival_model.ingest.clinical import harmonise_table
from survival_model.ingest.ids import normalise_id
from survival_model.ingest.privacy import Pseudonymiser

SITE = "molab"
ID_STEPS: list[IdStep] = ["strip", "int_like", "strip_leading_zeros"]
#: The clinical sheet declared like an institution's table (see the module docstring).
CLINICAL_SOURCE: dict[str, Any] = {
    "header_rows": [12, 13, 14],
    "id_column": "Patient ID",
    "id_normalise": ID_STEPS,
    "id_pattern": r"\d+",  # two free-text notes under the table are not patients
    "rows_per_patient": "many",
    "count_rows_as": "n_brain_mets",
    "merge_rules": {"age": "min", "gpa": "min"},  # a few patients carry different GPAs on their lesion rows
    "columns": {"age": "Age at RM1", "sex": "Sex", "gpa": "GPA", "primary": "PRIMARY TUMOR / Type"},
    "values": {"sex": {1: "female", 2: "male"},
               "primary": {1: "breast", 2: "lung", 3: "lung", 4: "melanoma", 5: "renal", 6: "gi",
                           **{code: "other" for code in range(7, 13)}}},
    "survival": {"kind": "duration", "time_column": "Death / Time", "time_unit": "days",
                 "event_column": "Ocurrence"},
}
MORPHOLOGY_COLUMNS = ["PATIENT", "TIME POINT", "LESION", "TOTALVOLUME", "CEVOLUME", "NECVOLUME"]


@dataclass(frozen=True)
class MolabCohort:
    """Harmonised patients, and how many clinical patients were quarantined or had no volume."""

    patients: pd.DataFrame
    quarantined: int
    without_volume: int


def _days(code: object) -> float:
    """``19010618`` -> days since 1900-01-01."""
    text = str(int(float(str(code))))
    return float((dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) - dt.date(1900, 1, 1)).days)


def baseline_volumes(path: Path, pseudonymiser: Pseudonymiser) -> pd.DataFrame:
    """Per patient (pseudonymous case id), the lesions at the earliest segmented time point: summed
    volumes (ml), their logs, the lesion count and that time point's day."""
    sheet = pd.read_excel(path)
    missing = [c for c in MORPHOLOGY_COLUMNS if c not in sheet.columns]
    if missing:
        raise DataSourceError(f"MOLAB morphological sheet {path}: no column(s) {missing}")
    sheet = sheet.dropna(subset=["PATIENT", "TIME POINT"]).copy()
    sheet["case_id"] = [pseudonymiser.case_id(SITE, normalise_id(v, ID_STEPS) or str(v)) for v in sheet["PATIENT"]]
    sheet["day"] = sheet["TIME POINT"].map(_days)
    first = sheet[sheet["day"] == sheet.groupby("case_id")["day"].transform("min")]
    grouped = first.groupby("case_id")
    volumes = pd.DataFrame({"total_ml": grouped["TOTALVOLUME"].sum(), "enhancing_ml": grouped["CEVOLUME"].sum(),
                            "necrotic_ml": grouped["NECVOLUME"].sum(), "n_lesions": grouped["LESION"].nunique(),
                            "segmented_day": grouped["day"].first()})
    for name in ("total", "enhancing", "necrotic"):
        volumes[f"vol_log_{name}"] = np.log1p(volumes[f"{name}_ml"])
    return volumes.reset_index()


def load_molab(clinical: Path, morphological: Path, pseudonymiser: Pseudonymiser) -> MolabCohort:
    """The harmonised cohort: canonical clinical rows joined with the tumour burden per patient."""
    source = ClinicalSource.model_validate({**CLINICAL_SOURCE, "path": str(clinical)})
    patients, quarantine, _ = harmonise_table(SITE, source, IngestParams(), pseudonymiser)
    joined = patients.merge(baseline_volumes(morphological, pseudonymiser), on="case_id", how="left")
    joined["event"] = joined["event"].astype(int)
    joined["landmark_days"] = joined["time_days"] - joined["segmented_day"]
    return MolabCohort(joined.reset_index(drop=True), len({q.case_id for q in quarantine}),
                       int(joined["total_ml"].isna().sum()))
