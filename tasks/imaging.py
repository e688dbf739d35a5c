"""Imaging tasks: preprocessing and features per patient, and the cohort's feature table.

As in ``tasks.ingest``, each key function mirrors the library's content key, and no task carries tags
(a tagged task run costs a concurrency-slot API call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import SimpleITK as sitk
from prefect import task

from survival_model.config import FeaturesParams, Params, PreprocessParams
from survival_model.features import stage as features_lib
from survival_model.ingest.cohort import CohortResult
from survival_model.preprocess import stage as preprocess_lib
from survival_model.preprocess.patient import PatientInput


def preprocess_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    inp: PatientInput = inputs["inp"]
    key = preprocess_lib.preprocess_key(inp, inputs["images_key"], inputs["params"])
    return key, preprocess_lib.expected_output(inputs["work_dir"], inp.site, inp.case_id, key)


@task(name="preprocess", task_run_name="preprocess-{case_id}")
def preprocess(
    case_id: str, inp: PatientInput, images_key: str, params: PreprocessParams, work_dir: Path
) -> preprocess_lib.PreprocessOutcome:
    # The same ITK thread count for every preprocessing task in this worker: results then do not
    # depend on which task ran beside which (see PreprocessParams.itk_threads).
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(params.itk_threads)
    return preprocess_lib.run_preprocess(inp, images_key, params, work_dir)


def features_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    patient: preprocess_lib.PreprocessedPatient = inputs["patient"]
    key = features_lib.features_key(patient, inputs["params"])
    return key, features_lib.expected_output(inputs["work_dir"], patient.site, patient.case_id, key)


@task(name="features", task_run_name="features-{case_id}")
def features(
    case_id: str, patient: preprocess_lib.PreprocessedPatient, params: FeaturesParams, work_dir: Path
) -> features_lib.FeatureOutcome:
    return features_lib.run_features(patient, params, work_dir)


def imaging_stage_key(inputs: list[tuple[dict[str, Any], PatientInput]], params: Params, cohort: CohortResult) -> str:
    """The imaging stage's key (``survival_model.stages``) from the per-patient preprocessing keys."""
    keys = [preprocess_lib.preprocess_key(inp, str(row["images_key"]), params.preprocess) for row, inp in inputs]
    return features_lib.imaging_stage_key(keys, params.features, cohort.fingerprint, cohort.folder.name)


def table_key(inputs: dict[str, Any]) -> tuple[str, list[Path]]:
    cohort: CohortResult = inputs["cohort"]
    folder_key = features_lib.table_key(inputs["outcomes"], inputs["preprocessed"], cohort.fingerprint,
                                        cohort.folder.name)
    return folder_key, [inputs["work_dir"] / "features" / "table" / folder_key[:16] / "summary.json"]


@task(name="feature-table")
def feature_table(
    outcomes: list[features_lib.FeatureOutcome],
    preprocessed: list[preprocess_lib.PreprocessOutcome],
    cohort: CohortResult,
    work_dir: Path,
) -> features_lib.FeatureTable:
    return features_lib.build_table(outcomes, preprocessed, cohort.cohort(), cohort.quarantine(),
                                    cohort.fingerprint, cohort.folder.name, work_dir)
