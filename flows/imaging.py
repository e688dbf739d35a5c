"""The imaging flow: per patient, preprocessing then features, streamed; then the feature table."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.progress import StageProgress, tracked
from survival_model import stages
from survival_model.config import Params
from survival_model.features.stage import FeatureTable, load_table, stage_outputs
from survival_model.ingest.cohort import CohortResult
from survival_model.preprocess.stage import patient_input
from tasks import imaging as t
from tasks.common import configure


@flow(name="imaging", flow_run_name="imaging")
def imaging(params: Params, cohort: CohortResult) -> FeatureTable:
    """Preprocess every cohort patient, extract features as each finishes, assemble the table.

    When neither the cohort nor the preprocessing/feature settings changed since a recorded run, that
    run's table is returned without submitting the per-patient tasks (``survival_model.stages``).
    """
    logger = get_run_logger()
    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    inputs = [(row, patient_input(row, params.institutions[str(row["site"])])) for row in rows]
    # Longest first (sites needing registration, then bias correction, then a skull strip): the last
    # patients to finish are then quick ones, so no core idles at the end waiting for a slow one.
    inputs.sort(key=lambda item: (item[1].acquisition.co_registered, item[1].acquisition.bias_corrected,
                                  item[1].acquisition.skull_stripped))
    stage_key = t.imaging_stage_key(inputs, params, cohort)
    preprocessing = StageProgress("preprocessing", len(inputs), "patients")
    features = StageProgress("features", len(inputs), "patients")
    if params.orchestration.reuse_unchanged_stages:
        reused = stages.reuse(params.work_dir, "imaging", stage_key, load_table)
        if reused is not None:
            preprocessing.finish()
            features.finish()
            logger.info("imaging unchanged (stage key %s, %d patients): reusing %s", stage_key[:12], len(rows),
                        reused.table_path)
            return reused

    preprocess_task = configure(t.preprocess, params, t.preprocess_key)
    features_task = configure(t.features, params, t.features_key)
    table_task = configure(t.feature_table, params, t.table_key)
    pending = [
        preprocess_task.submit(str(row["case_id"]), inp, str(row["images_key"]), params.preprocess, params.work_dir)
        for row, inp in inputs
    ]
    preprocessed, feature_futures = [], []
    for future in tracked(pending, preprocessing):  # patients stream: features start as each preprocessing ends
        outcome = future.result()
        preprocessed.append(outcome)
        if outcome.patient is not None:
            feature_futures.append(
                features_task.submit(outcome.case_id, outcome.patient, params.features, params.work_dir))
        else:  # quarantined: no features to wait for
            features.advance()
    outcomes = [f.result() for f in tracked(feature_futures, features)]
    preprocessed.sort(key=lambda o: o.case_id)
    outcomes.sort(key=lambda o: o.case_id)
    table = table_task(outcomes, preprocessed, cohort, params.work_dir)
    stages.save_stage(params.work_dir, "imaging", stage_key, table.folder,
                      [*stage_outputs(outcomes, preprocessed, params.work_dir), table.table_path,
                       table.quarantine_path, table.folder / "schema.json", table.folder / "summary.json"])
    logger.info("features: %d patients x %d columns -> %s", table.summary["patients"], table.summary["columns"],
                table.table_path)
    return table
