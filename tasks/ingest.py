"""Ingestion's one task that is not a stage: discovery per institution.

The content-keyed steps (images per case, clinical per site, the cohort) are library stages
(``survival_model.ingest.images.IngestImages``, ``survival_model.ingest.clinical.HarmoniseClinical``,
``survival_model.ingest.cohort.AssembleCohort``) run through ``tasks.stage.StageTasks``.

The tasks carry no tags: Prefect acquires a tag-concurrency slot through its API for every run of a
tagged task, which measured 0.1-0.5 s per task here (retried 503s from the temporary server) and
dominated warm re-runs. Runs are told apart by their names (``images-<case id>``) and flows.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task

from survival_model.config import Institution
from survival_model.errors import DataSourceError
from survival_model.ingest.discovery import CaseFiles, discover_cases
from survival_model.ingest.images import case_id_for
from survival_model.ingest.privacy import Pseudonymiser, Redactor


@dataclass(frozen=True)
class Discovered:
    """One case found on disk, with its pseudonymous id (the raw files stay inside ingestion)."""

    case_id: str
    files: CaseFiles


@dataclass(frozen=True)
class SiteDiscovery:
    site: str
    cases: list[Discovered]
    error: str | None = None


@task(name="discover-cases", persist_result=False)
def discover(site: str, institution: Institution, pseudonymiser: Pseudonymiser) -> SiteDiscovery:
    """List a site's cases. Not cached and not persisted: it must look at the disk every run, and
    its result holds source identifiers that must not be stored by the orchestrator. Its error message (logged,
    and part of the cohort's summary) names the image folder ``<source>``."""
    redact = Redactor((institution.images.root,))
    try:
        with redact.errors():
            cases = discover_cases(site, institution.images)
    except DataSourceError as exc:
        return SiteDiscovery(site, [], redact(str(exc)))
    found = [Discovered(case_id_for(c, institution, pseudonymiser), c) for c in cases]
    return SiteDiscovery(site, found)
