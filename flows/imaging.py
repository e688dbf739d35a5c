"""The imaging flow: per patient, preprocessing then features, streamed; then the feature table."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.progress import StageProgress, tracked
from survival_model.config import Params
from survival_model.features.stage import BuildTable, Features, FeatureTable, imaging_outputs, imaging_stage
from survival_model.ingest.cohort import CohortResult
from survival_model.preprocess.stage import Preprocess, ingested_patient, site_imaging
from tasks.stage import StageTasks


@flow(name="imaging", flow_run_name="imaging")
def imaging(params: Params, cohort: CohortResult) -> FeatureTable:
    """Preprocess every cohort patient, extract features as each finishes, assemble the table.

    When neither the cohort nor the preprocessing/feature settings changed since a recorded run, that
    run's table is returned without submitting the per-patient tasks (``survival_model.stage.WholeStage``).
    """
    logger = get_run_logger()
    preprocess = [Preprocess(ingested_patient(row), site_imaging(params.institutions[str(row["site"])]),
                             params.preprocess, params.work_dir)
                  for row in cohort.cohort().to_dict("records")]
    # Longest first (sites needing registration, then bias correction, then a skull strip): the last
    # patients to finish are then quick ones, so no core idles at the end waiting for a slow one.
    preprocess.sort(key=lambda s: (s.site.acquisition.co_registered, s.site.acquisition.bias_corrected,
                                   s.site.acquisition.skull_stripped))
    whole = imaging_stage(preprocess, params.features, cohort, params.work_dir)
    preprocessing = StageProgress("preprocessing", len(preprocess), "patients")
    features = StageProgress("features", len(preprocess), "patients")
    if params.orchestration.reuse_unchanged_stages and (reused := whole.load()) is not None:
        preprocessing.finish()
        features.finish()
        logger.info("imaging unchanged (stage key %s, %d patients): reusing %s", whole.key()[:12],
                    len(preprocess), reused.table_path)
        return reused

    run = StageTasks(params)
    preprocessed, feature_futures = [], []
    for future in tracked([run.submit(s) for s in preprocess], preprocessing):
        outcome = future.result()  # patients stream: features start as each preprocessing ends
        preprocessed.append(outcome)
        if outcome.patient is not None:
            feature_futures.append(run.submit(Features(outcome.patient, params.features, params.work_dir)))
        else:  # quarantined: no features to wait for
            features.advance()
    outcomes = [f.result() for f in tracked(feature_futures, features)]
    preprocessed.sort(key=lambda o: o.case_id)
    outcomes.sort(key=lambda o: o.case_id)
    table = run(BuildTable(tuple(outcomes), tuple(preprocessed), cohort, params.work_dir))
    whole.save(table.folder, imaging_outputs(preprocess, preprocessed, outcomes, table))
    logger.info("features: %d patients x %d columns -> %s", table.summary["patients"], table.summary["columns"],
                table.table_path)
    return table
