"""The ingestion flow: every institution's cases and clinical table into the canonical cohort."""

from __future__ import annotations

from prefect import flow, get_run_logger

from survival_model.config import Params
from survival_model.ingest.cohort import CohortResult
from survival_model.ingest.privacy import Pseudonymiser
from tasks import ingest as t
from tasks.common import configure


@flow(name="ingest", flow_run_name="ingest")
def ingest(params: Params) -> CohortResult:
    """Discover -> images per patient and clinical per site (in parallel) -> cohort + quarantine."""
    logger = get_run_logger()
    pseudonymiser = Pseudonymiser.from_params(params.privacy)
    images_task = configure(t.ingest_images, params, t.images_key)
    clinical_task = configure(t.harmonise_clinical, params, t.clinical_key)
    cohort_task = configure(t.assemble_cohort, params, t.cohort_key)

    image_futures, clinical_futures, site_errors = [], [], {}
    for site, institution in params.institutions.items():
        found = t.discover(site, institution, pseudonymiser)
        if found.error:
            logger.error("institution %s: %s", site, found.error)
            site_errors[site] = found.error
        logger.info("institution %s: %d cases found", site, len(found.cases))
        image_futures += [
            images_task.submit(c.case_id, c.files, institution, params.ingest, pseudonymiser, params.work_dir)
            for c in found.cases
        ]
        clinical_futures.append(
            clinical_task.submit(site, institution, params.ingest, pseudonymiser, params.work_dir)
        )
    outcomes = [f.result() for f in image_futures]
    clinical = [f.result() for f in clinical_futures]
    cohort = cohort_task(outcomes, clinical, site_errors, params.ingest, params.work_dir)
    logger.info("cohort: %d patients, %d quarantined -> %s", cohort.summary["patients"],
                cohort.summary["quarantined_patients"], cohort.cohort_path)
    return cohort
