"""The imaging flow: per patient, preprocessing then features, streamed; then the feature table."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from survival_model.config import Params
from survival_model.features.stage import FeatureTable
from survival_model.ingest.cohort import CohortResult
from survival_model.preprocess.stage import patient_input
from tasks import imaging as t
from tasks.common import configure


@flow(name="imaging", flow_run_name="imaging")
def imaging(params: Params, cohort: CohortResult) -> FeatureTable:
    """Preprocess every cohort patient, extract features as each finishes, assemble the table."""
    logger = get_run_logger()
    preprocess_task = configure(t.preprocess, params, t.preprocess_key)
    features_task = configure(t.features, params, t.features_key)
    table_task = configure(t.feature_table, params, t.table_key)

    rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in cohort.cohort().to_dict("records")]
    pending = [
        preprocess_task.submit(str(row["case_id"]), patient_input(row, params.institutions[str(row["site"])]),
                               str(row["images_key"]), params.preprocess, params.work_dir)
        for row in rows
    ]
    preprocessed, feature_futures = [], []
    for future in as_completed(pending):  # patients stream: features start as each preprocessing ends
        outcome = future.result()
        preprocessed.append(outcome)
        if outcome.patient is not None:
            feature_futures.append(
                features_task.submit(outcome.case_id, outcome.patient, params.features, params.work_dir))
    outcomes = [f.result() for f in feature_futures]
    preprocessed.sort(key=lambda o: o.case_id)
    outcomes.sort(key=lambda o: o.case_id)
    table = table_task(outcomes, preprocessed, cohort, params.work_dir)
    logger.info("features: %d patients x %d columns -> %s", table.summary["patients"], table.summary["columns"],
                table.table_path)
    return table
