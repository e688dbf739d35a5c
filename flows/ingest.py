"""The ingestion flow: every institution's cases and clinical table into the canonical cohort."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.progress import StageProgress, tracked
from survival_model import stages
from survival_model.config import Params
from survival_model.ingest.cohort import CohortResult, load_cohort
from tasks import ingest as t
from tasks import privacy
from tasks.common import configure


@flow(name="ingest", flow_run_name="ingest")
def ingest(params: Params) -> CohortResult:
    """Discover -> images per patient and clinical per site (in parallel) -> cohort + quarantine.

    When nothing the stage reads has changed since a recorded run, that run's cohort is returned
    without submitting the per-case tasks (``survival_model.stages``).
    """
    logger = get_run_logger()
    pseudonymiser = privacy.pseudonymiser(params.privacy)  # secret block, environment or key file
    found, site_errors = [], {}
    for site, institution in params.institutions.items():
        discovery = t.discover(site, institution, pseudonymiser)
        if discovery.error:
            logger.error("institution %s: %s", site, discovery.error)
            site_errors[site] = discovery.error
        logger.info("institution %s: %d cases found", site, len(discovery.cases))
        found.append(discovery)
    stage = t.ingest_stage(params, found, pseudonymiser, site_errors)
    progress = StageProgress("ingestion", sum(len(d.cases) for d in found), "cases")
    if params.orchestration.reuse_unchanged_stages:
        reused = stages.reuse(params.work_dir, "ingest", stage.key, load_cohort)
        if reused is not None:
            progress.finish()
            logger.info("ingestion unchanged (stage key %s, %d cases): reusing %s", stage.key[:12],
                        len(stage.cases), reused.cohort_path)
            return reused

    images_task = configure(t.ingest_images, params, t.images_key)
    clinical_task = configure(t.harmonise_clinical, params, t.clinical_key)
    cohort_task = configure(t.assemble_cohort, params, t.cohort_key)
    clinical_futures = [
        clinical_task.submit(site, institution, params.ingest, pseudonymiser, params.work_dir)
        for site, institution in params.institutions.items()
    ]
    image_futures = [
        images_task.submit(c.case_id, c.files, params.institutions[d.site], params.ingest, pseudonymiser,
                           params.work_dir)
        for d in found for c in d.cases
    ]
    for _ in tracked(image_futures, progress):
        pass
    outcomes = [f.result() for f in image_futures]
    clinical = [f.result() for f in clinical_futures]
    cohort = cohort_task(outcomes, clinical, site_errors, params.ingest, params.work_dir,
                         pseudonymiser.fingerprint)
    stages.save_stage(params.work_dir, "ingest", stage.key, cohort.folder,
                      [*stage.outputs(params.work_dir), cohort.cohort_path, cohort.quarantine_path,
                       *cohort.report_files()])
    logger.info("cohort: %d patients, %d quarantined -> %s", cohort.summary["patients"],
                cohort.summary["quarantined_patients"], cohort.cohort_path)
    return cohort
