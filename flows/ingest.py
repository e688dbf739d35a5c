"""The ingestion flow: every institution's cases and clinical table into the canonical cohort."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.progress import StageProgress, tracked
from survival_model.config import Params
from survival_model.ingest.clinical import HarmoniseClinical
from survival_model.ingest.cohort import AssembleCohort, CohortResult, ingestion_outputs, ingestion_stage
from survival_model.ingest.images import IngestImages
from tasks import privacy
from tasks.ingest import SiteDiscovery, discover
from tasks.stage import StageTasks


@flow(name="ingest", flow_run_name="ingest")
def ingest(params: Params) -> CohortResult:
    """Discover -> images per patient and clinical per site (in parallel) -> cohort + quarantine.

    When nothing the stage reads has changed since a recorded run, that run's cohort is returned
    without submitting the per-case tasks (``survival_model.stage.WholeStage``).
    """
    logger = get_run_logger()
    pseudonymiser = privacy.pseudonymiser(params.privacy)  # secret block, environment or key file
    found: list[SiteDiscovery] = []
    site_errors: dict[str, str] = {}
    for site, institution in params.institutions.items():
        discovery = discover(site, institution, pseudonymiser)
        if discovery.error:
            logger.error("institution %s: %s", site, discovery.error)
            site_errors[site] = discovery.error
        logger.info("institution %s: %d cases found", site, len(discovery.cases))
        found.append(discovery)
    images = [IngestImages(c.case_id, c.files, params.institutions[d.site], params.ingest, params.work_dir,
                           pseudonymiser.memo_key)  # the digest memo keyed by hashes of the paths, never the paths
              for d in found for c in d.cases]
    clinical = [HarmoniseClinical(site, institution, params.ingest, pseudonymiser, params.work_dir)
                for site, institution in params.institutions.items()]
    whole = ingestion_stage(images, clinical, params.ingest, params.work_dir, site_errors)
    progress = StageProgress("ingestion", len(images), "cases")
    if params.orchestration.reuse_unchanged_stages and (reused := whole.load()) is not None:
        progress.finish()
        logger.info("ingestion unchanged (stage key %s, %d cases): reusing %s", whole.key()[:12], len(images),
                    reused.cohort_path)
        return reused

    run = StageTasks(params)
    clinical_futures = [run.submit(s) for s in clinical]
    image_futures = [run.submit(s) for s in images]
    for _ in tracked(image_futures, progress):
        pass
    outcomes = tuple(f.result() for f in image_futures)
    results = tuple(f.result() for f in clinical_futures)
    cohort = run(AssembleCohort(outcomes, results, params.ingest, params.work_dir, site_errors,
                                pseudonymiser.fingerprint))
    whole.save(cohort.folder, ingestion_outputs(images, clinical, cohort))
    logger.info("cohort: %d patients, %d quarantined -> %s", cohort.summary["patients"],
                cohort.summary["quarantined_patients"], cohort.cohort_path)
    return cohort
